"""One line per 100x-horizon run (experiments/long_runs.sh, gpu_generalization.sh), from its metrics.jsonl:

    python experiments/summarize_long_runs.py runs/ablation/long100x-NAME-guard10-s 0 1 2 3 4

reads PREFIX + SEED + /metrics.jsonl for each seed. Prints the last logged step, the final and worst logged loss,
the worst ratio of a logged window to the one before after step 200 (the early transients are the guard's and the
warmup's business; a late one is a blow-up starting), rollbacks, wall time, and whether the guard gave up.
"""
import json
import math
import sys


def summarize(metrics_path: str) -> str:
    rows = [json.loads(line) for line in open(metrics_path)]
    loss = [r["loss"] if isinstance(r["loss"], (int, float)) else math.inf for r in rows if "loss" in r]
    late = [b / a for a, b in zip(loss[3:], loss[4:]) if a > 0]  # windows logged every 50 steps: after step 200
    last = rows[-1]
    stopped = ", STOPPED AS DIVERGED" if any(r.get("stopped_diverged") for r in rows) else ""
    return (f"step {last['step']}, final loss {loss[-1]:.3f}, worst {max(loss):.3g}, worst window ratio after step "
            f"200 {max(late, default=math.nan):.2f}, rollbacks {last.get('rollbacks', 0)}, "
            f"{last.get('wall_time', math.nan):.0f} s{stopped}")


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        sys.exit("usage: python experiments/summarize_long_runs.py RUN_DIR_PREFIX SEED [SEED ...]")
    prefix, seeds = argv[0], argv[1:]
    for seed in seeds:
        try:
            line = summarize(f"{prefix}{seed}/metrics.jsonl")
        except (OSError, ValueError, KeyError, IndexError) as e:
            line = f"no usable metrics ({type(e).__name__}: {e})"
        print(f"{prefix}{seed}: {line}")


if __name__ == "__main__":
    main(sys.argv[1:])
