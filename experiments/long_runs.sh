#!/usr/bin/env bash
# The "100x" column of docs/ablation.md: codec.train on compare's held-out task for 10 000 steps, one run
# per seed, PARALLEL at a time (one torch thread each), resumable (a killed run continues from its checkpoint).
#   NAME=tensor-beta1 LOPT=runs/ablation/meta-tensor-beta1/lopt.pt bash experiments/long_runs.sh
#   env: PY=.venv/bin/python SEEDS="0 1 2 3 4" PARALLEL=2 STEPS=10000 OUT=runs/ablation GUARD=10 (0 = unguarded)
#        LR=<nominal step> (default: the one in LOPT) COMPILE=true (the compiled step, metaopt/fused.py)
# Prints one summary line per run (experiments/summarize_long_runs.py).
set -euo pipefail
PY=${PY:-.venv/bin/python}
SEEDS=${SEEDS:-"0 1 2 3 4"}
PARALLEL=${PARALLEL:-2}
STEPS=${STEPS:-10000}
OUT=${OUT:-runs/ablation}
GUARD=${GUARD:-10}
: "${NAME:?set NAME (the runs are OUT/long100x-NAME[-guardG]-sSEED)}" "${LOPT:?set LOPT (a lopt.pt)}"
tag="long100x-$NAME"; [ "$GUARD" != 0 ] && tag="$tag-guard$GUARD"
lr_args=(); [ -n "${LR:-}" ] && lr_args=(--lr "$LR")
COMPILE=${COMPILE:-false}

run_seed() {
  local dir="$OUT/$tag-s$1" resume=""
  [ -f "$dir/done" ] && return
  [ -f "$dir/checkpoint.pt" ] && resume="--resume"
  $PY -m codec.train --optimizer lstm --lopt "$LOPT" "${lr_args[@]}" --steps "$STEPS" --seed "$1" --log-every 50 \
    --val-every "$STEPS" --eval-at-end false --threads 1 --spike-guard "$GUARD" --lopt-compile "$COMPILE" \
    --run-dir "$dir" $resume \
    > "$dir.log" 2>&1 && touch "$dir/done"
}

for seed in $SEEDS; do
  while [ "$(jobs -rp | wc -l)" -ge "$PARALLEL" ]; do wait -n || true; done
  run_seed "$seed" &
done
wait

$PY experiments/summarize_long_runs.py "$OUT/$tag-s" $SEEDS
