#!/usr/bin/env bash
# Learned-optimizer ablation (README "Ablation"): meta-train each variant with configs/meta/default.yaml plus
# one change, then compare it with LR-tuned Adam on the held-out codec task of configs/compare/default.yaml.
# Tuned Adam is run once (compare-default) and reused by every variant: the same task, LR grid and seeds,
# so only the learned optimizer differs. Prints a markdown table at the end.
#   bash experiments/ablation.sh     # env: PY=.venv/bin/python SEEDS=5 OUT=runs/ablation ORDER="<variants>"
#                                    #      COMPARE_ARGS="--threads 1" (extra metaopt.compare flags)
# Two variants can run side by side (ORDER=... in two shells) once compare-default exists.
set -euo pipefail
PY=${PY:-.venv/bin/python}
SEEDS=${SEEDS:-5}
OUT=${OUT:-runs/ablation}

declare -A VARIANTS=(
  [default]=""
  [direct-output]="--output direct"
  [no-momenta]="--features grad_logsign,adam_grad"
  [no-loss-scaling]="--loss-scale 1"
  [tensor]="--arch tensor"
)
ORDER=${ORDER:-"default direct-output no-momenta no-loss-scaling tensor"}

for name in $ORDER; do
  meta="$OUT/meta-$name"
  if [ ! -f "$meta/.done" ]; then  # resumable: an interrupted meta-training continues, a finished one is kept
    resume=""; [ -f "$meta/checkpoint.pt" ] && resume="--resume"
    # shellcheck disable=SC2086
    $PY -m metaopt.meta_train --run-dir "$meta" ${VARIANTS[$name]} $resume && touch "$meta/.done"
  fi
  cmp="$OUT/compare-$name"
  if [ "$name" != default ] && [ ! -d "$cmp" ]; then  # reuse the tuned-Adam runs of the default variant
    mkdir -p "$cmp/runs" && cp -r "$OUT/compare-default/tune" "$cmp/" && cp -r "$OUT"/compare-default/runs/adam-* "$cmp/runs/"
  fi
  # shellcheck disable=SC2086
  $PY -m metaopt.compare --lopt "$meta/lopt.pt" --seeds "$SEEDS" --run-dir "$cmp" --resume ${COMPARE_ARGS:-}
done

$PY - "$OUT" $ORDER <<'PY'
import json, sys
out, names = sys.argv[1], sys.argv[2:]
print("| variant | steps-to-target ratio (median) | loss ratio at 1x / 5x / 10x horizon | LSTM divergences "
      "| tuned-Adam divergences |")
print("|---|---|---|---|---|")
for name in names:
    s = json.load(open(f"{out}/compare-{name}/summary.json"))
    r, lstm = s["ratios_vs_adam"]["lstm"], s["optimizers"]["lstm"]
    ratio = r["steps_to_target_ratio"]
    at = " / ".join("—" if v is None else f"{v:.3f}" for v in r["loss_ratio_at"].values())
    print(f"| {name} | {'never reached' if ratio is None or ratio == float('inf') else f'{ratio:.2f}'} | {at} "
          f"| {lstm['divergences']}/{len(lstm['seeds'])} | {s['optimizers']['adam']['divergences']}/{len(lstm['seeds'])} |")
PY
