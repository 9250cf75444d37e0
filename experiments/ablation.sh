#!/usr/bin/env bash
# Learned-optimizer ablation (docs/ablation.md): meta-train each variant with configs/meta/default.yaml plus
# its flags, then compare it with LR-tuned Adam on the held-out codec task of configs/compare/default.yaml.
# Tuned Adam is run once, by the first variant of ORDER, and reused by every other: the same task, LR grid and
# seeds, so only the learned optimizer differs. Prints a markdown table at the end.
#   bash experiments/ablation.sh     # env: PY=.venv/bin/python SEEDS=5 OUT=runs/ablation ORDER="<variants>"
#                                    #      COMPARE_ARGS="--threads 1" (extra studies.compare flags)
#                                    #      META_OUT=DIR: take the meta-trained variants from DIR (default OUT)
# The guarded rows of docs/ablation.md: the same optimizers, every run (Adam's tuning included) guarded:
#   OUT=runs/ablation-guard10 META_OUT=runs/ablation COMPARE_ARGS="--spike-guard 10 --threads 1" FIRST=tensor \
#     ORDER="tensor direct-output coordinate" bash experiments/ablation.sh
# Two variants can run side by side (ORDER=... in two shells) once the first variant's compare exists.
set -euo pipefail
PY=${PY:-.venv/bin/python}
SEEDS=${SEEDS:-5}
OUT=${OUT:-runs/ablation}
META_OUT=${META_OUT:-$OUT}

# Every variant names its arch, output and step, so the table keeps its meaning whichever is the default
# (configs/meta/default.yaml); all features and loss scaling are the defaults.
B="--output adam_correction --no-odd --lr 5e-4"  # the bounded output (the default before the odd direct output)
D="--arch coordinate --output direct"  # the Andrychowicz output
O="$D --odd --lr 5e-4"  # made odd: the meta-training default until docs/ablation.md finding (13)
declare -A VARIANTS=(
  [coordinate]="--arch coordinate $B"
  [direct-output]="$D --no-odd --lr 5e-4"
  [no-momenta]="--arch coordinate $B --features grad_logsign,adam_grad"
  [no-loss-scaling]="--arch coordinate $B --loss-scale 1"
  [tensor]="--arch tensor $B"
  [tensor-alpha0.5]="--arch tensor $B --alpha 0.5"
  [tensor-h300]="--arch tensor $B --horizon-max 300 --val-steps 900"  # docs/ablation.md: stopped at meta-step 500, not in ORDER
  [tensor-beta1]="--arch tensor $B --beta 1.0"  # the bounded direct term as large as the nominal step
  [tensor-unroll20]="--arch tensor $B --unroll 20 --meta-steps 400 --curriculum-steps 200"  # less greedy truncations
  [tensor-direct]="--arch tensor --output direct --no-odd --lr 5e-4"
  [tensor-param-scale]="--arch tensor $B --features grad_logsign,adam_grad,momenta,param_scale"
  [tensor-beta1-odd]="--arch tensor --output adam_correction --beta 1.0 --odd --lr 5e-4"  # tensor-beta1, no drift
  [direct-output-odd-trained]="$O"  # the meta-training default until (13)
  [progress]="$O --features grad_logsign,adam_grad,momenta,progress"  # + t/T
  [pes]="$O --meta-gradient pes"  # with PES meta-gradients
  [lr1e-3]="$D --odd --lr 1e-3"  # the meta-training default now; its second run is the shipped lopt.pt
  [lr2e-3]="$D --odd --lr 2e-3"  # above the 1.4e-3 that 10x tuning picks for lr1e-3
  [lr1e-3-h16]="$D --odd --lr 1e-3 --hidden 16"  # lr1e-3 with 2x the LSTM's width
)
ORDER=${ORDER:-"coordinate direct-output no-momenta no-loss-scaling tensor tensor-alpha0.5"}
FIRST=${FIRST:-coordinate}  # the variant whose compare holds the tuned-Adam runs

for name in $ORDER; do
  meta="$META_OUT/meta-$name"
  if [ ! -f "$meta/.done" ]; then  # resumable: an interrupted meta-training continues, a finished one is kept
    resume=""; [ -f "$meta/checkpoint.pt" ] && resume="--resume"
    # shellcheck disable=SC2086
    $PY -m metaopt.meta_train --run-dir "$meta" ${VARIANTS[$name]} $resume && touch "$meta/.done"
  fi
  cmp="$OUT/compare-$name"
  if [ "$name" != "$FIRST" ] && [ ! -d "$cmp" ]; then  # reuse the tuned-Adam runs of the first variant
    mkdir -p "$cmp/runs" && cp -r "$OUT/compare-$FIRST/tune" "$cmp/" && cp -r "$OUT/compare-$FIRST"/runs/adam-* "$cmp/runs/"
  fi
  # shellcheck disable=SC2086
  $PY -m studies.compare --lopt "$meta/lopt.pt" --seeds "$SEEDS" --run-dir "$cmp" --resume ${COMPARE_ARGS:-}
done

$PY - "$OUT" $ORDER <<'PY'
import json, math, statistics, sys
out, names = sys.argv[1], sys.argv[2:]

def median_steps(seeds, skip_diverged=False):
    steps = [math.inf if r["steps_to_target"] is None else r["steps_to_target"]
             for r in seeds.values() if not (skip_diverged and r["diverged"])]
    return statistics.median(steps) if steps else math.inf

fmt = lambda x: "never reached" if x is None or x == math.inf else f"{x:.2f}"  # noqa: E731
print("| variant | steps-to-target ratio (median; a diverged Adam seed counts as never reaching) | same, Adam's "
      "non-diverged seeds only | loss ratio at 1x / 5x / 10x horizon | LSTM divergences | tuned-Adam divergences |")
print("|---|---|---|---|---|---|")
for name in names:
    s = json.load(open(f"{out}/compare-{name}/summary.json"))
    r, lstm, adam = s["ratios_vs_adam"]["lstm"], s["optimizers"]["lstm"], s["optimizers"]["adam"]
    own = median_steps(lstm["seeds"]) / median_steps(adam["seeds"], skip_diverged=True)
    at = " / ".join("—" if v is None else f"{v:.3f}" for v in r["loss_ratio_at"].values())
    print(f"| {name} | {fmt(r['steps_to_target_ratio'])} | {fmt(own)} | {at} "
          f"| {lstm['divergences']}/{len(lstm['seeds'])} | {adam['divergences']}/{len(adam['seeds'])} |")
PY
