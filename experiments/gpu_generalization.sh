#!/usr/bin/env bash
# The two slow columns of docs/ablation.md on one GPU, side by side (~8.5 min on an H200: each long
# run made ~21 steps/s beside the compare, ~10 steps/s with two of these scripts sharing it): the 100x-horizon runs
# (long_runs.sh's codec.train on compare's held-out task, 10 000 steps, every seed at once, guarded) and the
# larger-codec compare (hyperprior-deep N=128 M=192, 500 steps, Adam tuned on its grid,
# the LSTM's step tuned the same way on LARGE_LSTM_LRS).
#   LOPT=runs/ablation/meta-X/lopt.pt LR=1e-3 OUT=runs/gpu-gen bash experiments/gpu_generalization.sh
#   env: SEEDS="0 1 2 3 4" (" ": no long runs) STEPS=10000 LIMIT=520 (seconds for each part)
#        LARGE_LSTM_LRS=1e-4,3e-4,1e-3 WORKERS=3 (the compare's runs at once) DEVICE=cuda PY=python3
# What comes back from a remote machine is $OUT/results.tgz (every run's metrics.jsonl, the compare's report and
# summary) and $OUT/gpu_generalization.log; checkpoints stay behind (one per long run would be ~190 MB, too much
# to bring back, and a fresh device machine could not resume from it anyway).
set -u
: "${LOPT:?set LOPT (a lopt.pt)}" "${OUT:?set OUT}"
SEEDS=${SEEDS:-"0 1 2 3 4"}
STEPS=${STEPS:-10000}
LIMIT=${LIMIT:-520}
WORK=${WORK:-/tmp/gpu-generalization}
DEVICE=${DEVICE:-cuda}  # cpu: a smoke test of this script
PY=${PY:-python3}
export WANDB_MODE=disabled PYTHONUNBUFFERED=1
mkdir -p "$OUT" "$WORK"
LOG="$OUT/gpu_generalization.log"
lr_args=(); [ -n "${LR:-}" ] && lr_args=(--lr "$LR")
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader >"$LOG" 2>&1

for seed in $SEEDS; do
  timeout "$LIMIT" "$PY" -m codec.train --device "$DEVICE" --optimizer lstm --lopt "$LOPT" "${lr_args[@]}" \
    --steps "$STEPS" --seed "$seed" --log-every 50 --val-every "$STEPS" --eval-at-end false --threads 1 \
    --spike-guard 10 --lopt-compile false --checkpoint-every 1000000 --run-dir "$WORK/long-s$seed" \
    >"$WORK/long-s$seed.log" 2>&1 &
done
timeout "$LIMIT" "$PY" -m studies.compare --device "$DEVICE" --N 128 --M 192 --steps 500 --batch-size 4 \
  --adam-lrs 3e-5,1e-4,3e-4,1e-3,3e-3 --lstm-lrs "${LARGE_LSTM_LRS:-1e-4,3e-4,1e-3}" --tune-seeds 1000 --seeds 3 \
  --spike-guard 0 --threads 1 --workers "${WORKERS:-3}" --lopt "$LOPT" --lopt-compile false \
  --run-dir "$WORK/large-codec" \
  >"$WORK/large-codec.log" 2>&1 &
wait

[ -n "${SEEDS// /}" ] && "$PY" experiments/summarize_long_runs.py "$WORK/long-s" $SEEDS >>"$LOG" 2>&1
for f in "$WORK"/*.log; do echo "== $f: $(tail -c 300 "$f" | tr "\r" "\n" | tail -n 2)"; done >>"$LOG" 2>&1
(cd "$WORK" && tar czf - --exclude='*.pt' --exclude=wandb -- */metrics.jsonl */config.yaml large-codec/report.md \
  large-codec/summary.json large-codec/*/*/metrics.jsonl *.log 2>/dev/null) >"$OUT/results.tgz"
cat "$LOG"
