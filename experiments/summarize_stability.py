"""The stability screen's table (experiments/stability_screen.sh), from each run's metrics.jsonl:

    python experiments/summarize_stability.py runs/v10/screen

reads DIR/DIST-VARIANT-sSEED/metrics.jsonl. Per distortion and variant: the runs that finished, the loss-spike
rollbacks (per seed and in all), the geometric mean over seeds of the final loss (the mean of the last 5 logged
windows, as the compares smooth it), and how many runs ended with a non-finite or exploded loss (above 100x
the first logged window's: what a user without the guard would be left with).
"""
import json
import math
import re
import sys
from collections import defaultdict
from pathlib import Path

NAME = re.compile(r"(mse|rmse)-(.+)-s(\d+)$")


def run_summary(metrics: Path) -> dict | None:
    rows = [json.loads(line) for line in metrics.open()]
    losses = [r["loss"] if isinstance(r["loss"], (int, float)) else math.inf for r in rows if "loss" in r]
    if not losses:  # just started
        return None
    final = sum(losses[-5:]) / len(losses[-5:])
    return {"step": rows[-1]["step"], "final": final, "rollbacks": max(r.get("rollbacks", 0) for r in rows),
            "exploded": not math.isfinite(final) or final > 100 * losses[0]}


def main(argv: list[str]) -> None:
    if len(argv) != 1:
        sys.exit("usage: python experiments/summarize_stability.py SCREEN_DIR")
    groups = defaultdict(dict)
    for metrics in sorted(Path(argv[0]).glob("*/metrics.jsonl")):
        match = NAME.match(metrics.parent.name)
        if match:
            dist, variant, seed = match.groups()
            summary = run_summary(metrics)
            if summary is not None:
                groups[(dist, variant)][int(seed)] = summary
    print("| cost | variant | runs (last step) | rollbacks per seed | rollbacks | geomean final loss | exploded |")
    print("|---|---|---|---|---|---|---|")
    for (dist, variant), runs in sorted(groups.items()):
        finals = [r["final"] for r in runs.values()]
        geomean = math.exp(sum(map(math.log, finals)) / len(finals)) if all(f > 0 and math.isfinite(f)
                                                                         for f in finals) else math.inf
        print(f"| {dist} | {variant} | {len(runs)} ({min(r['step'] for r in runs.values())}) | "
              f"{' '.join(str(r['rollbacks']) for r in runs.values())} | {sum(r['rollbacks'] for r in runs.values())} | "
              f"{geomean:.3f} | {sum(r['exploded'] for r in runs.values())} |")


if __name__ == "__main__":
    main(sys.argv[1:])
