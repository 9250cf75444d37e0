#!/bin/bash
# The stability screen of the default learned optimizer (v9) on the N=32 compare task: loss-spike rollbacks and final
# loss of setting variants, tuning seeds only, two runs at a time, one thread each (~35 min on 2 cores):
#
#   bash experiments/stability_screen.sh                       # OUT=runs/v10/screen
#   python experiments/summarize_stability.py runs/v10/screen  # the table
#
# Needs the photo links of docs/results/lopt-v2/README.md (runs/data/photos-compare). Each run is
# OUT/DIST-VARIANT-sSEED; finished runs are skipped. Variants: the stored setting (4e-3, no warm-up), a smaller step,
# a 100-step warm-up, Adam's second-moment decay at SOAP's 0.95 (a rewritten file), and the stored setting without
# the spike guard.
set -e
OUT=${OUT:-runs/v10/screen}
SEEDS=${SEEDS:-"1000 1001 1002 1003"}
PY=${PY:-.venv/bin/python}
LOPT=metaopt/pretrained/lopt-v9.pt
mkdir -p "$OUT"
$PY - "$LOPT" "$OUT/lopt-v9-b2-095.pt" <<'PYEOF'
import sys
from metaopt.optim import load_lopt, save_lopt
net, blob = load_lopt(sys.argv[1])
net.cfg.adam_beta2 = 0.95
save_lopt(net, sys.argv[2], blob["lr"], {**blob["meta"], "note": "v9 with adam_beta2 0.95 (stability screen)"},
          blob["max_fan_in"], "shampoo")
PYEOF
declare -A VARIANTS=(
  [lr4e-3-wu0]="--lopt $LOPT --lr 4e-3 --warmup-steps 0 --spike-guard 10"
  [lr2e-3-wu0]="--lopt $LOPT --lr 2e-3 --warmup-steps 0 --spike-guard 10"
  [lr4e-3-wu100]="--lopt $LOPT --lr 4e-3 --warmup-steps 100 --spike-guard 10"
  [b2095]="--lopt $OUT/lopt-v9-b2-095.pt --spike-guard 10"
  [noguard]="--lopt $LOPT --spike-guard 0"
)
for dist in mse rmse; do for variant in "${!VARIANTS[@]}"; do for seed in $SEEDS; do
  run=$OUT/$dist-$variant-s$seed
  [ -f "$run/done.json" ] && continue
  echo "$run $PY -m codec.train --data runs/data/photos-compare --distortion $dist --optimizer lstm \
${VARIANTS[$variant]} --steps 1000 --threads 1 --seed $seed --run-dir $run --eval-at-end false"
done; done; done | xargs -P 2 -L 1 bash -c '"${@}" > "$0.log" 2>&1 && tail -1 "$0/metrics.jsonl" > "$0/done.json"'
