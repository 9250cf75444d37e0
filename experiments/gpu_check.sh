#!/usr/bin/env bash
# The CUDA path end to end, on one GPU, in one go (~5 min on an H200): the CUDA tests, the speed and memory
# benchmark at paper scale, and a short paper-scale codec.train with Adam and with the shipped LSTM optimizer
# (compiled step), each ending in a real entropy-coded evaluation.
#   OUT=runs/gpu-check bash experiments/gpu_check.sh
# Each part has its own time limit and a failure does not stop the next; the summary lines at the end say which
# part passed. Logs and JSON go to $OUT (at most 8 files, so they can be fetched from a remote machine).
set -u
OUT=${OUT:-runs/gpu-check}
STEPS=${STEPS:-200}
mkdir -p "$OUT"
export WANDB_MODE=disabled PYTHONUNBUFFERED=1
LOG="$OUT/check.log"
: >"$LOG"
summary=()

part() {  # part NAME SECONDS COMMAND...: run with a time limit, log everything, keep a one-line result
    local name=$1 limit=$2 start rc
    shift 2
    start=$(date +%s)
    echo "===== $name: $*" | tee -a "$LOG"
    timeout "$limit" "$@" >>"$LOG" 2>&1
    rc=$?
    summary+=("$name: rc=$rc, $(($(date +%s) - start)) s")
    echo "===== $name: rc=$rc" | tee -a "$LOG"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$LOG"
python3 -c "import torch, compressai, higher, numpy; print('torch', torch.__version__, 'cuda', torch.version.cuda,
      'compressai', compressai.__version__, 'numpy', numpy.__version__, torch.cuda.get_device_name())" | tee -a "$LOG"

part tests 150 python3 -m pytest -q -rs -p no:cacheprovider tests/codec/test_cuda.py tests/metaopt/test_cuda.py
for opt in adam lstm; do
    part "train-$opt" 100 python3 -m codec.train --config configs/codec/paper.yaml --device cuda --optimizer "$opt" \
        --steps "$STEPS" --val-every 100 --log-every 50 --checkpoint-every 100 --val-crop 256 \
        --run-dir "$OUT/train-$opt"
    cp "$OUT/train-$opt/metrics.jsonl" "$OUT/train-$opt.jsonl" 2>/dev/null
done
rm -rf "$OUT"/train-adam "$OUT"/train-lstm  # checkpoints stay behind: only logs and metrics come back
# shellcheck disable=SC2086  # BENCH_ARGS is a list of flags, e.g. "--meta false"
part bench 150 python3 -m studies.bench --device cuda --out "$OUT/bench_cuda.json" ${BENCH_ARGS:-}

printf '%s\n' "${summary[@]}" | tee -a "$LOG"
