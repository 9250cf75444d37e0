"""Regenerate docs/results.md from the raw results committed under docs/results/.

    python -m studies.tables           # rewrite docs/results.md
    python -m studies.tables --check   # exit 1 if docs/results.md differs from what would be generated

Every number in docs/results.md is computed here from a committed file (metrics.jsonl, bench and codec.eval
JSON, compare summary.json), never typed by hand, so the page cannot drift from the data behind it.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from pathlib import Path

import numpy as np
import yaml

from codec.rd import bd_rate

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "results"
OUT = ROOT / "docs" / "results.md"
LONG_RUNS = [  # (folder under docs/results, what ran there; the numbers come from its s<seed>.jsonl files)
    ("ablation/long100x_lr1e-3-b_lr2e-3",
     "v1 (`lopt-v1.pt`) at its stored step 2e-3, 2-core CPU, compiled step, runs sharing the cores"),
    ("ablation/gpu/long100x_lr1e-3-b", "v1's weights at step 1.4e-3 (stored then), one H200 shared by all runs"),
    ("lopt-v5/long100x-rmse-v1", "v1 at 2e-3 on the RMSE compare task (photos 037–045), compiled step, 2-core "
                                 "CPU, beside the Adam run below"),
    ("lopt-v5/long100x-rmse-adam", "Adam at 2e-4 (tuned at T = 1000) on the same task, beside the run above"),
    ("lopt-v6/long100x-rmse-v6", "`lopt-v6.pt` at 2e-3 on the same task and seed, compiled step, 2-core CPU, sharing "
                                 "it with the test suite for a while (its seconds are not comparable)"),
    ("lopt-v7/long100x-rmse-v6", "`lopt-v6.pt` at 2e-3 on the same task, seed 139, compiled step, 2-core CPU, beside "
                                 "the Adam run below"),
    ("lopt-v7/long100x-rmse-adam", "Adam at 2e-4 on the same task and seed, beside the run above"),
    ("lopt-v8/long100x-rmse-v8", "`lopt-v8.pt` at 2e-3 (on this codec v6, update for update) on the same task, seeds "
                                 "143–145, compiled step, 2-core CPU, each beside the Adam run of its seed below"),
    ("lopt-v8/long100x-rmse-adam", "Adam at 2e-4 on the same task and seeds, beside the runs above"),
    ("lopt-v9/long100x-rmse-v9", "`lopt-v9.pt` at its stored 4e-3 (Shampoo basis) on the same task, seeds 130, 139, "
                                 "143–145, compiled step, 2-core CPU, two at a time and for a while beside the test "
                                 "suite (compare its losses with the Adam runs of the same seeds above, not its "
                                 "seconds)"),
    ("lopt-v9/long100x-rmse-v9-noguard", "the same, seeds 144 and 145, without the spike guard, the two at a time, "
                                         "alone on the CPU"),
]
LATE_FROM_WINDOW = 3  # logged every 50 steps: ratios of window i+1 to i from step 200 on, past the warm-up transients


def _fmt(x, digits: int = 3) -> str:
    """Integers as they are, floats to `digits` significant digits (whole numbers from 1000 on), text as is."""
    if isinstance(x, str):
        return x
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    if isinstance(x, int) or abs(x) >= 1000:
        return f"{x:.0f}"
    return f"{x:#.{digits}g}".rstrip(".")


def _lr(x) -> str:
    """A learning rate as 7e-4 / 1.4e-3."""
    if x is None:
        return "—"
    return f"{float(x):.1e}".replace(".0e", "e").replace("e-0", "e-")


def _table(header: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows)]


def _seeds(seeds: list[int]) -> str:
    contiguous = len(seeds) > 2 and seeds == list(range(seeds[0], seeds[-1] + 1))
    return f"{seeds[0]}–{seeds[-1]}" if contiguous else ", ".join(map(str, seeds))


# -- 100x-horizon runs (codec.train metrics.jsonl) -------------------------------------------------------------

def long_run_row(rows: list[dict]) -> dict:
    """Last step, final loss, worst late window-to-window loss ratio, rollbacks, seconds, divergence of one run."""
    loss = [r["loss"] if isinstance(r["loss"], (int, float)) else math.inf for r in rows if "loss" in r]
    late = [b / a for a, b in zip(loss[LATE_FROM_WINDOW:], loss[LATE_FROM_WINDOW + 1:]) if a > 0]
    last = rows[-1]
    return {"step": last["step"], "final_loss": loss[-1], "worst_late_ratio": max(late, default=math.nan),
            "rollbacks": last.get("rollbacks", 0), "wall_time": last.get("wall_time"),
            "diverged": not math.isfinite(loss[-1]) or any(r.get("stopped_diverged") for r in rows)}


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def long_runs_section(results: Path) -> list[str]:
    out = ["## 100× the meta-training horizon", "",
           "`codec.train` on compare's held-out task for 10 000 steps with `--spike-guard 10`, one run per seed. "
           "Worst late ratio: the largest loss ratio of a logged 50-step window to the one before, after step 200 "
           "(a blow-up starting shows here first).", ""]
    for folder, what in LONG_RUNS:
        runs = sorted((results / folder).glob("s*.jsonl"), key=lambda p: int(p.stem[1:]))
        stats = {int(p.stem[1:]): long_run_row(_read_jsonl(p)) for p in runs}
        out += [f"**{what}** ([metrics](results/{folder}/)): {sum(s['diverged'] for s in stats.values())} of "
                f"{len(stats)} diverged, {sum(s['rollbacks'] for s in stats.values())} rollbacks.", ""]
        out += _table(["seed", "steps", "final loss", "worst late ratio", "rollbacks", "wall time (s)"],
                      [[seed, s["step"], s["final_loss"], s["worst_late_ratio"], s["rollbacks"],
                        round(s["wall_time"])] for seed, s in stats.items()]) + [""]
    return out


# -- speed (metaopt.bench JSON) ---------------------------------------------------------------------------------

def bench_section(results: Path) -> list[str]:
    out = ["## Step time and memory (`python -m metaopt.bench`)", "",
           "Median of the bench's repeats; × Adam is the ratio to Adam's in the same run.", ""]
    for path in sorted(results.glob("bench_*.json")) + sorted(results.glob("*/bench_*.json")):
        bench = json.loads(path.read_text())
        m = bench["machine"]
        out += [f"### [{path.relative_to(results)}](results/{path.relative_to(results)})", "",
                f"{m['device_name']}, torch {m['torch']}, torch threads: {m['threads']}, load average "
                f"{_fmt(m['load_avg_1min_start'], 2)} → {_fmt(m['load_avg_1min_end'], 2)}. "
                + f"Medians over {bench['settings']['repeats']} timed repeats; "
                + (f"each times {rounds} steps in a row (a whole refresh period of the basis)."
                   if (rounds := bench["settings"].get("steps_per_round", 1)) > 1
                   else "each times one step."), ""]
        rows = []
        for scale, c in bench["codec"].items():
            for i, (opt, step) in enumerate(c["step_time_s"].items()):
                label = f"{scale}: {c['model']} N={c['N']} M={c['M']}, {c['batch_size']}×{c['crop']}²"
                rows.append([label if i == 0 else "", opt, step, c["step_time_ratio_over_adam"].get(opt),
                             c.get("optimizer_in_step_s", {}).get(opt), c.get("rest_of_step_s", {}).get(opt),
                             c["update_time_s"][opt], c["peak_mem_mb"][opt], c["peak_mem_ratio_over_adam"].get(opt)])
        out += _table(["codec step", "optimizer", "step (s)", "× Adam", "its optimizer (s)", "the rest (s)",
                       "update alone (s)", "peak MiB", "× Adam"], rows) + [""]
        out += [f"- `{opt}`: {label}" for opt, label in bench["settings"]["learned_optimizers"].items()] + [""]
        if "meta_training" in bench:
            meta = bench["meta_training"]
            out += [f"Meta-training ({meta['task']}):", ""]
            out += _table(["unroll K", "horizon (steps)", "s per meta-step", "peak MiB", "graph nodes"],
                          [[r["unroll"], r["horizon_steps"], r["meta_step_s"], r["peak_mem_mb"], r["graph_nodes"]]
                           for r in meta["vs_unroll"] + meta["vs_horizon"][1:]]) + [""]
        out += [f"Goal `{name}` ({g['goal']}): {_fmt(g['value'])}, {'met' if g['met'] else 'not met'}."
                for name, g in bench.get("goals", {}).items()] + [""]
    return out


# -- rate-distortion (codec.eval JSON) --------------------------------------------------------------------------

def psnr_at_rate(curve: dict, bpp: float) -> float | None:
    """A baseline's PSNR at `bpp`, interpolated linearly in log rate; None outside its measured range."""
    pairs = sorted(zip(curve["results"]["bpp"], curve["results"]["psnr-rgb"]))
    rates = np.log([p[0] for p in pairs])
    if not rates[0] <= math.log(bpp) <= rates[-1]:
        return None
    return float(np.interp(math.log(bpp), rates, [p[1] for p in pairs]))


def _bd_rate_text(anchor: dict, ours: dict, metric: str) -> str:
    try:
        a, o = anchor["results"], ours["results"]
        return f"{bd_rate(a['bpp'], a[metric], o['bpp'], o[metric]):+.1f} %"
    except (ValueError, KeyError) as e:
        return f"not computable: {str(e).split(' (')[0]}"


def rd_lines(report: dict) -> list[str]:
    """Our points with JPEG's PSNR at the same rate, the baselines' ranges, BD-rates: one codec.eval JSON."""
    ours, baselines = report["results"], report.get("baselines", {})
    jpeg = baselines.get("jpeg")
    rows = []
    for i, bpp in enumerate(ours["bpp"]):
        at_jpeg = psnr_at_rate(jpeg, bpp) if jpeg else None
        rows.append([bpp, ours.get("bpp-likelihood", [None] * len(ours["bpp"]))[i], ours["psnr-rgb"][i],
                     ours["ms-ssim-rgb"][i], at_jpeg, None if at_jpeg is None else ours["psnr-rgb"][i] - at_jpeg])
    out = [f"{report['name']}; {report['description']}.", ""]
    out += _table(["bpp (file)", "bpp (likelihood)", "PSNR (dB)", "MS-SSIM", "JPEG's PSNR at this bpp",
                   "difference (dB)"], rows) + [""]
    if baselines:
        out += _table(["baseline", "bpp", "PSNR (dB)", "BD-rate vs it, PSNR", "BD-rate vs it, MS-SSIM (dB)"],
                      [[c["name"], f"{_fmt(min(c['results']['bpp']))}–{_fmt(max(c['results']['bpp']))}",
                        f"{_fmt(min(c['results']['psnr-rgb']))}–{_fmt(max(c['results']['psnr-rgb']))}",
                        _bd_rate_text(c, report, "psnr-rgb"), _bd_rate_text(c, report, "ms-ssim-rgb-db")]
                       for c in baselines.values()]) + [""]
    return out


def rd_section(results: Path) -> list[str]:
    return (["## Rate–distortion of the CPU-default codec (`python -m codec.eval`)", "",
             "JPEG's PSNR at our rate is interpolated linearly in log bpp between its two nearest quality "
             "settings; BD-rate is negative where our codec needs fewer bits for the same quality.", ""]
            + rd_lines(json.loads((results / "rd_cpu_default.json").read_text()))
            + ["![RD, CPU default](results/rd_cpu_default.png)", ""])


def photos_section(results: Path) -> list[str]:
    """Rendered only once docs/results/photos/ exists: its codec.train runs (train/<run>/ holds each run's
    config.yaml and metrics.jsonl) and codec.eval curves (rd_<name>.json) on the held-out real photos."""
    folder = results / "photos"
    if not folder.is_dir():
        return []
    out = ["## Real photos", "", "Commands: [photos/README.md](results/photos/README.md).", ""]
    runs = sorted((folder / "train").glob("*/metrics.jsonl"))
    if runs:
        rows = []
        for path in runs:
            cfg = yaml.safe_load((path.parent / "config.yaml").read_text())
            metrics = _read_jsonl(path)
            last = next(r for r in reversed(metrics) if "wall_time" in r)
            validated = [r for r in metrics if "val_psnr" in r]
            start = Path(cfg["init_from"]).parent.name if cfg.get("init_from") else "scratch"
            rows.append([path.parent.name, cfg["model"], cfg["distortion"], cfg["lmbda"], start, last["step"],
                         _lr(cfg["lr"]), last["wall_time"] / 60, validated[-1]["val_bpp"] if validated else None,
                         validated[-1]["val_psnr"] if validated else None])
        out += ["Training runs ([train/](results/photos/train/)): minutes are this run's own, not counting the run "
                "it started from; validation on 512² crops of the held-out photos, rate from the likelihoods.", ""]
        out += _table(["run", "model", "distortion", "λ", "started from", "steps", "lr", "minutes",
                       "validation bpp", "validation PSNR (dB)"], rows) + [""]
    curves = {path.stem.removeprefix("rd_"): json.loads(path.read_text()) for path in sorted(folder.glob("rd_*.json"))}
    for curve in curves.values():
        out += rd_lines(curve)
    if {"deep_rmse", "plain_mse"} <= set(curves):
        deep, plain = curves["deep_rmse"], curves["plain_mse"]
        gaps = [(bpp, psnr - at) for bpp, psnr in zip(deep["results"]["bpp"], deep["results"]["psnr-rgb"])
                if (at := psnr_at_rate(plain, bpp)) is not None]
        out += [f"**Deepened + RMSE against plain hyperprior + MSE** (the same recipe and data; negative BD-rate: "
                f"the deepened RMSE codec needs fewer bits): BD-rate in PSNR {_bd_rate_text(plain, deep, 'psnr-rgb')}; "
                f"in MS-SSIM {_bd_rate_text(plain, deep, 'ms-ssim-rgb-db')}; PSNR difference at equal rate "
                f"(the plain curve interpolated in log rate): "
                + (", ".join(f"{_fmt(d)} dB at {_fmt(b)} bpp" for b, d in gaps) or "none in its range") + ".", ""]
    for image, caption in (("rd.png", "RD, real photos"), ("grid.png", "original / ours / JPEG / WebP")):
        if (folder / image).is_file():
            out += [f"![{caption}](results/photos/{image})", ""]
    return out


# -- races (studies.race summary.json) -------------------------------------------------------------------------

def race_section(results: Path) -> list[str]:
    out = []
    for path in sorted(results.rglob("summary.json")):
        summary, link = json.loads(path.read_text()), path.parent.relative_to(results)
        if "best_hand_designed" not in summary:  # a compare's
            continue
        anchor, last = summary["anchor"]["name"], len(summary["marks"]) - 1
        out += [f"### [{link}](results/{link}/)", "",
                f"{_fmt(summary['seconds'])} s of training per run, seeds {_seeds(summary['seeds'])}, LRs tuned on "
                f"{summary['lrs']} with tuning seeds {summary['tune_seeds']}. Target: {_fmt(summary['target_rd_loss'])}"
                f", the {summary['target_definition']}. Held-out values are medians over the seeds at the last mark "
                f"({_fmt(summary['marks'][-1])} s).", ""]
        rows = []
        for name, e in summary["contenders"].items():
            final = e["per_mark"][last]
            seconds = e["median_seconds_to_target"]
            rows.append([name, _lr(e["tuned_lr"]), "never" if seconds is None else seconds,
                         e["seconds_ratio_vs_best"], e["median_final_rd_loss"], final["bpp"], final["psnr"],
                         final[f"psnr_gain_vs_{anchor}"]])
        out += _table(["contender", "tuned lr", "median seconds to target", f"× {summary['best_hand_designed']}",
                       "held-out RD loss", "bpp", "PSNR (dB)", f"PSNR over {anchor} at that bpp (dB)"], rows) + [""]
    if out:
        out = ["## Races: time to a held-out RD quality (`python -m studies.race`)", "",
               "Every contender's LR tuned on the same grid and budget on tuning seeds and tuning images; then each "
               "reported seed trained for the same seconds, two runs at a time with one thread each; the held-out "
               "photos entropy-coded at fixed marks of training time.", ""] + out
    return out


# -- the learned optimizer generations, each against tuned Adam (studies.compare summary.json) -------------------
LOPT_GOALS = {"steps": 0.5, "seconds": 0.6}  # the median ratios to tuned Adam a new learned optimizer must reach


def learned_optimizers_section(results: Path) -> list[str]:
    """One row per compare in results/lopt-v*/ (each learned optimizer generation's study)."""
    rows = []
    for path in sorted(results.glob("lopt-v*/compare-*/summary.json")):
        summary = json.loads(path.read_text())
        task, lopt = summary["task"], summary["learned_optimizer"]
        row, *others = sorted(compare_rows_from_summary(summary), key=lambda r: r["optimizer"] != "lstm")
        folder = path.parent.relative_to(results).as_posix()
        rows.append([f"[{folder}](results/{folder}/)", task["distortion"],
                     f"{task['N']}/{task['M']}", f"`{Path(lopt['lopt']).name}` {lopt['lopt_sha256'][:8]}",
                     _lr(lopt["lr"]) + (" tuned" if row["lstm_lr"] is not None else "")
                     + (f", fan-in rule ≤ {lopt['lopt_max_fan_in']}" if lopt.get("lopt_max_fan_in") else "")
                     + (f", {lopt['lopt_basis']} basis" if lopt.get("lopt_basis") not in (None, "coordinate") else ""),
                     _lr(row["adam_lr"]), _seeds(row["seeds"]), row["steps_ratio"],
                     row["seconds_ratio"], row["loss_ratio_at_T"],
                     f"{summary['optimizers']['lstm']['divergences']} / {len(row['seeds'])}"])
        # hand-designed optimizers that ran beside it, on the same seeds (at their package's default step)
        rows += [[f"[{folder}](results/{folder}/)", task["distortion"], f"{task['N']}/{task['M']}",
                  f"{other['optimizer']} (hand-designed)", "its default", _lr(other["adam_lr"]),
                  _seeds(other["seeds"]), other["steps_ratio"], other["seconds_ratio"], other["loss_ratio_at_T"],
                  f"{summary['optimizers'][other['optimizer']]['divergences']} / {len(other['seeds'])}"]
                 for other in others]
    if not rows:
        return []
    return ["## Learned optimizers since v1, each against tuned Adam (`python -m studies.compare`)", "",
            f"Median ratios to tuned Adam (goal: steps ≤ {LOPT_GOALS['steps']}, seconds ≤ "
            f"{LOPT_GOALS['seconds']}, no divergence); each learned optimizer at the step stored in its file, or where "
            f"marked *tuned* at the step its grid's tuning runs chose by Adam's rule; *fan-in rule ≤ F*: a tensor "
            f"of fan-in above F moved by F / its fan-in of the update (metaopt.optim); *shampoo basis*: the network "
            f"ran in each tensor's Shampoo eigenbasis, SOAP's (metaopt.basis). Files are named as they were run: "
            f"`lopt.pt` f820ea9c is v1, now `lopt-v1.pt`; the default `lopt.pt` has been v9 (ce5771bb, `lopt-v9.pt`) "
            f"since. How the runs were made and which seeds were looked at: the README in each results folder.", "",
            *_table(["compare", "distortion", "N/M", "learned optimizer (sha256)", "its step", "Adam lr", "seeds",
                     "steps ×", "seconds ×", "loss × at T", "diverged"], rows), ""]


# -- compares (metaopt.compare summary.json; report.md where no summary.json was committed) ---------------------

def _md_table(text: str, heading: str) -> list[dict]:
    """The first table after `heading` in a report.md, as one dict per row."""
    lines = text.split(heading, 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    table = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        table.append([c.strip() for c in line.strip("|").split("|")])
    return [dict(zip(table[0], row)) for row in table[2:]]


def _number(cell: str):
    """A report.md cell as int or float where it is one ("never", "—" stay text)."""
    for kind in (int, float):
        try:
            return kind(cell)
        except ValueError:
            pass
    return cell


def _best(rows: list[dict]) -> str:
    return next(r["lr"].replace("**(best)**", "").strip() for r in rows if "(best)" in r["lr"])


def compare_rows_from_report(text: str) -> list[dict]:
    """What a historical report.md says (they were committed without their summary.json)."""
    steps, seeds = re.search(r"T = (\d+) steps, seeds \[([\d, ]+)\]", text).groups()
    lstm_lr = _best(_md_table(text, "LSTM nominal step")) if "LSTM nominal step" in text else None
    divergences = {r["optimizer"]: r["divergences"] for r in _md_table(text, "## Steps to target")}
    out = []
    for r in _md_table(text, "## Ratios vs tuned Adam"):
        loss_at_T = [v for k, v in r.items() if k.startswith("loss @")][-1]
        out.append({"optimizer": r["optimizer"], "steps": int(steps), "seeds": [int(s) for s in seeds.split(",")],
                    "adam_lr": _best(_md_table(text, "## Adam LR tuning")), "lstm_lr": lstm_lr,
                    "steps_ratio": _number(r["steps-to-target"]), "seconds_ratio": _number(r["wall-time-to-target"]),
                    "loss_ratio_at_T": _number(loss_at_T),
                    "divergences": f"{divergences[r['optimizer']]} / {divergences['adam']}"})
    return out


def _never(ratio):
    """A ratio to Adam's time to its target is infinite when the learned optimizer never reached it."""
    return "never" if isinstance(ratio, float) and math.isinf(ratio) else ratio


def compare_rows_from_summary(summary: dict) -> list[dict]:
    divergences = {opt: e["divergences"] for opt, e in summary["optimizers"].items()}
    return [{"optimizer": opt, "steps": summary["steps"], "seeds": summary["seeds"],
             "adam_lr": summary["tuned_adam_lr"], "lstm_lr": summary.get(f"tuned_{opt}_lr"),
             "steps_ratio": _never(r["steps_to_target_ratio"]),
             "seconds_ratio": _never(r["wall_time_to_target_ratio"]),
             "loss_ratio_at_T": list(r["loss_ratio_at"].values())[-1],
             "divergences": f"{divergences[opt]} / {divergences['adam']}"}
            for opt, r in summary["ratios_vs_adam"].items()]


def compares_section(results: Path) -> list[str]:
    rows = []
    for path in sorted(results.rglob("summary.json")):
        summary, link = json.loads(path.read_text()), path.parent.relative_to(results)
        if "ratios_vs_adam" in summary:  # a compare's (other tools may write a summary.json too)
            rows += [[f"[{link}](results/{link}/)", "summary.json", r] for r in compare_rows_from_summary(summary)]
    for path in sorted(results.rglob("*report.md")):
        outcome = any((path.parent / name).is_file() for name in ("summary.json", "tuning.json"))
        if outcome and path.name == "report.md":
            continue  # read from its summary.json above, or a tuning stage only (no compare to report)
        link = path.relative_to(results)
        rows += [[f"[{link.stem.removesuffix('_report')}](results/{link})", "report.md", r]
                 for r in compare_rows_from_report(path.read_text())]
    out = ["## Compares: learned optimizer vs tuned Adam (`python -m metaopt.compare`)", "",
           "Ratios are the learned optimizer's over tuned Adam's: median steps and seconds to tuned Adam's final "
           "loss, and the loss at T. The historical compares under results/ablation/ were committed with their "
           "report.md but without summary.json, so their rows are read from the report; every compare committed "
           "from now on ships its summary.json, which is read instead. [ablation.md](ablation.md) says what each "
           "one tested. Seconds of runs that shared a CPU are noisy.", ""]
    out += _table(["compare", "source", "T", "seeds", "Adam lr", "LSTM lr (tuned)", "steps ×", "seconds ×",
                   "loss × at T", "divergences (LSTM / Adam)"],
                  [[name if r["optimizer"] == "lstm" else f"{name}: {r['optimizer']}", source, r["steps"],
                    _seeds(r["seeds"]), _lr(r["adam_lr"]), _lr(r["lstm_lr"]), r["steps_ratio"],
                    r["seconds_ratio"], r["loss_ratio_at_T"], r["divergences"]] for name, source, r in rows])
    return out + [""]


def screens_section(results: Path) -> list[str]:
    """Short codec.train runs that check a setting runs at all, e.g. a stored step on a size it was not compared on
    (<study>/screen-<name>/<run>/ holds each run's config.yaml and metrics.jsonl): single runs, not comparisons."""
    out = []
    for folder in sorted(results.glob("*/screen-*")):
        rows = []
        for path in sorted(folder.glob("*/metrics.jsonl")):
            cfg = yaml.safe_load((path.parent / "config.yaml").read_text())
            metrics = _read_jsonl(path)
            trained = [r for r in metrics if "loss" in r]
            validated = [r for r in metrics if "val_loss" in r]
            last = trained[-1]
            lr = _lr(cfg["lr"]) if cfg["lr"] is not None else "stored" if cfg["optimizer"] == "lstm" else "default"
            rows.append([path.parent.name, f"{cfg['model']} N={cfg['N']} M={cfg['M']}",
                         f"{cfg['batch_size']}×{cfg['crop']}²", cfg["distortion"], cfg["seed"], cfg["optimizer"], lr,
                         last["step"], sum(r["loss"] for r in trained[-5:]) / len(trained[-5:]),
                         validated[-1]["val_loss"] if validated else None, last.get("skipped_steps", 0),
                         last["wall_time"]])
        if rows:
            out += [f"### Screen: [{folder.relative_to(results)}](results/{folder.relative_to(results)}/)", ""]
            out += _table(["run", "model", "crops", "distortion", "seed", "optimizer", "lr", "steps",
                           "train loss, last 5 logs", "validation loss, last", "skipped steps", "seconds"], rows)
            out += [""]
    return (["## Screens", "", "Single codec.train runs that check a setting runs (no divergence), not comparisons.",
             ""] + out) if out else []


def render(results: Path = RESULTS) -> str:
    lines = ["# Results", "",
             "Generated by `python -m studies.tables` from the raw results committed under "
             "[docs/results/](results/); do not edit by hand. The story behind them: [ablation](ablation.md), "
             "[speed](speed.md), [GPU](gpu.md).", ""]
    for section in (learned_optimizers_section, photos_section, race_section, long_runs_section, compares_section,
                    screens_section, bench_section, rd_section):
        lines += section(results)
    return "\n".join(lines).rstrip() + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m studies.tables", allow_abbrev=False,
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/results.md is out of date")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not OUT.is_file() or OUT.read_text() != text:
            print(f"{os.path.relpath(OUT, ROOT)} is out of date: run python -m studies.tables", file=sys.stderr)
            raise SystemExit(1)
        return
    OUT.write_text(text)
    print(f"wrote {os.path.relpath(OUT, ROOT)}")


if __name__ == "__main__":
    main()
