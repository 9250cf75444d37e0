"""Time to quality: the learned optimizer against the best hand-designed ones, in wall-clock seconds.

1. Tune: every contender (an optimizer, with its LR schedule: `adam-plateau`, `adam-cosine`, `schedulefree`,
   `soap-cosine`, `lstm`, ...) trains one run per LR of the shared grid and tuning seed, all on the same budget
   (`tune_seconds` / `tune_steps`), on the training images less a held-back tenth (the tuning images) and judged
   by the RD loss on those tuning images at the end of the budget; an LR that diverged on any tuning seed is out
   (the rule of studies.compare). The held-out photos decide nothing.
2. Race: every contender at its tuned LR, for each reported seed, `seconds` of training each, the same resources
   for all (`workers` runs at once, one thread each). Every `mark_seconds` of a run's training time the run's
   current weights entropy-code the held-out images, and (seconds, bpp, PSNR, MS-SSIM, RD loss) are recorded.
3. Summary: the target is the best hand-designed contender's final held-out RD loss; per contender and seed, the
   seconds to reach it; the learned optimizer's median seconds over the best hand-designed one's; and per mark
   the rate difference against JPEG at equal PSNR. Outputs summary.json, report.md, race.png, logged to W&B as a
   "race-report" run (each run logs its own marks).

Resumable (`--resume`): finished runs are skipped, interrupted ones resume from their checkpoint. `workers: K`
trains K runs at once, each in its own process with one thread.
"""
from __future__ import annotations

import contextlib
import json
import math
import statistics
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy.interpolate import PchipInterpolator  # noqa: E402

from codec.data import list_images, load_image  # noqa: E402
from codec.train import check_config as check_codec_config  # noqa: E402
from codec.train import config_from_argv  # noqa: E402
from metaopt.config import parse_config  # noqa: E402
from metaopt.errors import UserError, cli_entry  # noqa: E402
from metaopt.optimizers import LR_SCHEDULES, check_optimizer_config  # noqa: E402
from metaopt.tracking import Run, read_metrics  # noqa: E402
from studies.compare import (_finite, _fmt, lr_tag, parse_seeds, run_all, run_one, tune_lr,  # noqa: E402
                             worker_pool)
from studies.sweeps import run_study  # noqa: E402

LEARNED = "lstm"
MARK_KEYS = ("rd_bpp", "rd_psnr_rgb", "rd_ms_ssim_rgb", "rd_loss")  # what codec.train logs at each mark


# -- the plan ------------------------------------------------------------------------------------------
def parse_contender(name: str) -> tuple[str, str]:
    """`adam-plateau` -> ("adam", "plateau"); `soap` -> ("soap", "constant")."""
    optimizer, _, schedule = name.rpartition("-")
    return (optimizer, schedule) if optimizer and schedule in LR_SCHEDULES else (name, "constant")


def check_config(cfg: dict) -> dict:
    """Validate everything before the first run starts; returns the plan: seeds and tuning seeds."""
    contenders = cfg["contenders"]
    if not contenders or len(set(contenders)) != len(contenders):
        raise UserError(f"contenders must be a non-empty list of distinct names, got {contenders!r}")
    if all(parse_contender(c)[0] == LEARNED for c in contenders):
        raise UserError("contenders need at least one hand-designed optimizer: it sets the target")
    for key in ("seconds", "tune_seconds", "mark_seconds", "steps", "tune_steps"):
        if key == "steps" and cfg[key] is None:  # planned from the tuning runs' speed
            continue
        if isinstance(cfg[key], bool) or not isinstance(cfg[key], (int, float)) or not cfg[key] > 0:
            raise UserError(f"{key} must be positive, got {cfg[key]!r}")
    if cfg["mark_seconds"] > cfg["seconds"]:
        raise UserError(f"mark_seconds ({cfg['mark_seconds']}) exceeds seconds ({cfg['seconds']}): no mark at all")
    if not cfg["lrs"]:
        raise UserError("lrs is empty: every contender is tuned over this grid")
    for lr in cfg["lrs"]:
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
            raise UserError(f"lrs must be positive numbers, got {lr!r}")
    if not 0 < cfg["tune_images"] < 1:
        raise UserError(f"tune_images is the fraction of training images held back for tuning, got {cfg['tune_images']}")
    for contender in contenders:
        optimizer, schedule = parse_contender(contender)
        try:
            for steps in (cfg["steps"] or cfg["tune_steps"], cfg["tune_steps"]):
                check_optimizer_config(optimizer, {"lr": cfg["lrs"][0], "lr_schedule": schedule, "steps": steps,
                                                   "lopt": cfg["lopt"]})
        except UserError as e:
            raise UserError(f"contender {contender!r} (OPTIMIZER or OPTIMIZER-SCHEDULE): {e}") from None
    seeds, tune_seeds = parse_seeds(cfg["seeds"]), parse_seeds(cfg["tune_seeds"])
    if set(seeds) & set(tune_seeds):
        raise UserError(f"tune_seeds {sorted(set(seeds) & set(tune_seeds))} are also reported seeds; pick others")
    task_config(cfg)  # the codec file and its overrides
    return {"seeds": seeds, "tune_seeds": tune_seeds}


def tuning_split(train_images: list[Path], fraction: float) -> tuple[list[Path], list[Path]]:
    """(images the tuning runs train on, the tuning images that judge them): the last `fraction` of the sorted
    training images, at least one, are held back."""
    if len(train_images) < 2:
        raise UserError(f"tuning needs at least 2 training images (one to train on, one to judge), got "
                        f"{len(train_images)}")
    held = min(len(train_images) - 1, max(1, round(len(train_images) * fraction)))
    return train_images[:-held], train_images[-held:]


def image_folders(data: str | None, run_dir: Path, fraction: float) -> dict[str, Path]:
    """Two ImageFolder layouts of links to the original images, so that every run is a plain codec.train run:
    "tune" (train: the training images less the tuning images; test: the tuning images) and "race" (train: all
    training images; test: the tuning images, which drive the plateau schedule and best.pt). The held-out
    images are only coded at the marks."""
    train = list_images(data, "train")
    tune_train, tune_val = tuning_split(train, fraction)
    layouts = {"tune": (tune_train, tune_val), "race": (train, tune_val)}
    folders = {}
    for name, splits in layouts.items():
        root = run_dir / "data" / name
        for split, images in zip(("train", "test"), splits):
            (root / split).mkdir(parents=True, exist_ok=True)
            for i, image in enumerate(images):  # numbered: two folders may hold files of the same name
                link = root / split / f"{i:04d}-{image.name}"
                if not link.is_symlink():
                    with contextlib.suppress(FileExistsError):  # sweep agents on other machines make them too
                        link.symlink_to(Path(image).resolve())
        folders[name] = root
    return folders


def run_config(base: dict, cfg: dict, contender: str, lr: float, seed: int, data: Path, tuning: bool,
               steps: int | None = None) -> dict:
    """The codec.train config of one run: `base` (the task) with the contender, its budget and, in the race, its
    marks."""
    optimizer, schedule = parse_contender(contender)
    return {**base, "optimizer": optimizer, "lr_schedule": schedule, "lr": lr, "seed": seed, "data": str(data),
            "lopt": cfg["lopt"], "steps": cfg["tune_steps"] if tuning else steps or cfg["steps"] or cfg["tune_steps"],
            "max_seconds": cfg["tune_seconds" if tuning else "seconds"],
            "eval_every_seconds": 0 if tuning else cfg["mark_seconds"], "mark_data": None if tuning else cfg["data"],
            "eval_at_end": False, "threads": 1, "workers": 0, "device": cfg["device"], "group": cfg["group"]}


def tuning_runs(base: dict, cfg: dict, plan: dict, run_dir: Path, data: Path) -> list[tuple[Path, dict]]:
    """Every contender x LR of the grid x tuning seed: the same number of runs on the same budget for each."""
    return [(run_dir / "tune" / f"{contender}-lr{lr_tag(lr)}-s{seed}",
             run_config(base, cfg, contender, lr, seed, data, tuning=True))
            for contender in cfg["contenders"] for lr in cfg["lrs"] for seed in plan["tune_seeds"]]


def race_runs(base: dict, cfg: dict, plan: dict, run_dir: Path, data: Path, tuned: dict[str, float],
              steps: dict[str, int] | None = None) -> dict[str, dict[int, tuple[Path, dict]]]:
    """contender -> seed -> (run directory, config) at the contender's tuned LR (and `steps`: its planned steps,
    when the config leaves them to the tuning runs' speed)."""
    return {contender: {seed: (run_dir / "runs" / f"{contender}-lr{lr_tag(tuned[contender])}-s{seed}",
                               run_config(base, cfg, contender, tuned[contender], seed, data, tuning=False,
                                          steps=(steps or {}).get(contender)))
                        for seed in plan["seeds"]} for contender in cfg["contenders"]}


# Planned steps from the tuning runs' speed are this much more than fit in `seconds`: a schedule that decays to
# zero at its last step then ends just after the time does, whereas a run that ran out of steps early would miss
# its last marks.
STEPS_MARGIN = 1.1


def planned_steps(cfg: dict, run_dir: Path, tuning_rows: dict[Path, dict]) -> dict[str, int] | None:
    """`steps: null`: each contender's reported runs plan `seconds` x its steps per second in its tuning runs
    (x STEPS_MARGIN), so a cosine schedule decays over the time budget whatever the optimizer's step costs."""
    if cfg["steps"] is not None:
        return None
    steps = {}
    for contender in cfg["contenders"]:
        rows = [read_metrics(path / "metrics.jsonl")[-1] for path in tuning_rows
                if path.name.startswith(f"{contender}-lr")]
        per_second = sum(r["step"] for r in rows) / sum(r["wall_time"] for r in rows)
        steps[contender] = math.ceil(cfg["seconds"] * per_second * STEPS_MARGIN)
    return steps


# -- the marks -----------------------------------------------------------------------------------------
def read_marks(run_dir: Path) -> list[dict]:
    """The run's mark rows, in order: {"mark" (nominal seconds), "seconds" (training seconds when coded), "bpp",
    "psnr", "ms_ssim", "rd_loss"}; a missing or non-finite value is None (rd_loss: inf, so it never reaches a
    target)."""
    marks = []
    for row in read_metrics(run_dir / "metrics.jsonl"):
        if "mark" not in row:
            continue
        values = {name: row.get(key) if _finite(row.get(key)) else None
                  for name, key in zip(("bpp", "psnr", "ms_ssim", "rd_loss"), MARK_KEYS)}
        if values["rd_loss"] is None:
            values["rd_loss"] = math.inf
        marks.append({"mark": row["mark"], "seconds": row["wall_time"], **values})
    return marks


def versus_anchor(anchor_bpp, anchor_psnr, bpp: float | None, psnr: float | None) -> dict:
    """One RD point against a classical codec's curve (the anchor, e.g. JPEG over its qualities):
    "bd_rate" = the rate difference at equal PSNR in percent (negative = fewer bits than the anchor) and
    "psnr_gain" = the PSNR difference at equal rate in dB. The anchor's log-rate is interpolated as in
    codec.rd.bd_rate (piecewise-cubic Hermite): this is its BD-rate shrunk to the one quality the point has.
    None outside the anchor's range (no extrapolation)."""
    out = {"bd_rate": None, "psnr_gain": None}
    points = [(r, q) for r, q in zip(anchor_bpp, anchor_psnr) if r is not None and q is not None and r > 0]
    if len(points) < 2:
        raise ValueError(f"the anchor curve needs at least 2 RD points, got {len(points)}")
    if bpp is None or psnr is None or not bpp > 0:
        return out
    by_quality = sorted(points, key=lambda p: p[1])
    quality = np.array([q for _, q in by_quality])
    if np.all(np.diff(quality) > 0) and quality[0] <= psnr <= quality[-1]:
        log_rate = np.log([r for r, _ in by_quality])
        out["bd_rate"] = (bpp / math.exp(float(PchipInterpolator(quality, log_rate)(psnr))) - 1) * 100
    by_rate = sorted(points)
    log_rate = np.log([r for r, _ in by_rate])
    if np.all(np.diff(log_rate) > 0) and log_rate[0] <= math.log(bpp) <= log_rate[-1]:
        out["psnr_gain"] = psnr - float(PchipInterpolator(log_rate, [q for _, q in by_rate])(math.log(bpp)))
    return out


def carried_marks(run_dir: Path, nominal: list[float]) -> list[dict]:
    """The run's marks; a run that finished its planned steps before the time budget keeps its last mark's values
    at the later marks ("carried": its weights no longer change; the steps after that mark are not credited),
    whereas a run stopped for diverging gets none."""
    marks = read_marks(run_dir)
    if not marks or any(row.get("stopped_diverged") for row in read_metrics(run_dir / "metrics.jsonl")):
        return marks
    return marks + [{**marks[-1], "mark": mark, "carried": True} for mark in nominal if mark > marks[-1]["mark"]]


# -- the summary ---------------------------------------------------------------------------------------
def first_reach(marks: list[dict], target: float) -> float | None:
    """Training seconds of the first mark at or below `target` (None: never, or no finite target)."""
    return next((m["seconds"] for m in marks if m["rd_loss"] <= target < math.inf), None)


def _median(values) -> float | None:
    """Median with None as never (inf); None if it is inf."""
    value = statistics.median([math.inf if v is None else v for v in values]) if values else math.inf
    return None if math.isinf(value) else value


def summarize(cfg: dict, runs: dict[str, dict[int, Path]], tuning: dict[str, tuple[dict, float]],
              anchor: dict) -> dict:
    """`runs`: contender -> seed -> run directory; `tuning`: contender -> (LR-grid results, tuned LR) as
    studies.compare's `tune_lr` returns them; `anchor`: {"name", "bpp": [...], "psnr": [...]} (JPEG)."""
    nominal = [cfg["mark_seconds"] * k for k in range(1, int(cfg["seconds"] // cfg["mark_seconds"]) + 1)]
    marks = {c: {seed: carried_marks(path, nominal) for seed, path in by_seed.items()} for c, by_seed in runs.items()}

    def at(run_marks: list[dict], mark: float) -> dict | None:
        return next((m for m in run_marks if m["mark"] == mark), None)

    def final(run_marks: list[dict]) -> float:  # a run that stopped early (diverged) never got its last mark
        last = at(run_marks, nominal[-1])
        return last["rd_loss"] if last else math.inf

    finals = {c: [final(m) for m in by_seed.values()] for c, by_seed in marks.items()}
    hand = [c for c in runs if parse_contender(c)[0] != LEARNED]
    best = min(hand, key=lambda c: statistics.median(finals[c]))
    # The upper median: with it at least half of the best contender's own seeds reach the target, so its median
    # seconds to target is finite (with the mean, 2 seeds of 3 above it would make it "never").
    target = statistics.median_high(finals[best])

    contenders = {}
    for contender, by_seed in marks.items():
        seeds = {}
        for seed, run_marks in by_seed.items():
            for m in run_marks:
                m.update({f"{k}_vs_{anchor['name']}": v for k, v in
                          versus_anchor(anchor["bpp"], anchor["psnr"], m["bpp"], m["psnr"]).items()})
            seeds[str(seed)] = {"seconds_to_target": first_reach(run_marks, target),
                                "final_rd_loss": final(run_marks), "marks": run_marks}
        per_mark = []
        for mark in nominal:
            rows = [at(m, mark) for m in by_seed.values()]
            per_mark.append({"mark": mark, **{key: _median([r[key] if r else None for r in rows]) for key in
                                              ("rd_loss", "bpp", "psnr", "ms_ssim", f"bd_rate_vs_{anchor['name']}",
                                               f"psnr_gain_vs_{anchor['name']}")}})
        grid, lr = tuning[contender]
        contenders[contender] = {
            "optimizer": parse_contender(contender)[0], "lr_schedule": parse_contender(contender)[1],
            "tuned_lr": lr, "lr_grid": grid,
            "median_seconds_to_target": _median([s["seconds_to_target"] for s in seeds.values()]),
            "median_final_rd_loss": _median(finals[contender]), "per_mark": per_mark, "seeds": seeds}
    best_seconds = contenders[best]["median_seconds_to_target"]
    for entry in contenders.values():
        seconds = entry["median_seconds_to_target"]
        entry["seconds_ratio_vs_best"] = seconds / best_seconds if seconds is not None and best_seconds else None
    learned = [c for c in runs if parse_contender(c)[0] == LEARNED]
    return {"seconds": cfg["seconds"], "mark_seconds": cfg["mark_seconds"], "marks": nominal,
            "seeds": sorted(int(s) for s in next(iter(runs.values()))), "tune_seeds": parse_seeds(cfg["tune_seeds"]),
            "lrs": cfg["lrs"], "best_hand_designed": best, "target_rd_loss": target,
            "target_definition": f"upper median over the seeds of {best}'s held-out RD loss at the last mark "
                                 f"({nominal[-1]:g} s), {best} being the hand-designed contender with the lowest "
                                 "median there",
            "learned_vs_best_seconds_ratio": {c: contenders[c]["seconds_ratio_vs_best"] for c in learned},
            "anchor": anchor, "contenders": contenders}


# -- outputs -------------------------------------------------------------------------------------------
def report_markdown(summary: dict) -> str:
    anchor = summary["anchor"]["name"]
    best = summary["best_hand_designed"]
    seeds = summary["seeds"]
    lines = ["# Race: time to a held-out RD quality", "",
             f"{summary['seconds']:g} s of training per run, held-out images entropy-coded every "
             f"{summary['mark_seconds']:g} s; seeds {seeds}; each contender's LR tuned on the grid {summary['lrs']} "
             f"with tuning seeds {summary['tune_seeds']} on the tuning images.", "",
             f"Target: **{_fmt(summary['target_rd_loss'])}**, the {summary['target_definition']}.", "",
             "## Seconds to the target", "",
             "| contender | tuned lr | " + " | ".join(f"seed {s}" for s in seeds)
             + f" | median seconds | vs {best} | median final RD loss |",
             "|---|---|" + "---|" * (len(seeds) + 3)]
    for name, e in summary["contenders"].items():
        cells = [_fmt(e["seeds"][str(s)]["seconds_to_target"], 4) for s in seeds]
        lines.append(f"| {name} | {lr_tag(e['tuned_lr'])} | " + " | ".join(cells)
                     + f" | {_fmt(e['median_seconds_to_target'], 4)} | {_fmt(e['seconds_ratio_vs_best'], 3)} | "
                     f"{_fmt(e['median_final_rd_loss'])} |")
    lines += ["", "— = never reached within the budget.", "",
              f"## Held-out RD at each mark (medians over seeds; vs {anchor} at equal PSNR / equal rate)", "",
              "| seconds | contender | RD loss | bpp | PSNR (dB) | MS-SSIM | BD-rate vs " + anchor
              + " (%) | PSNR gain (dB) |", "|---|---|---|---|---|---|---|---|"]
    for i, mark in enumerate(summary["marks"]):
        for name, e in summary["contenders"].items():
            m = e["per_mark"][i]
            lines.append(f"| {mark:g} | {name} | {_fmt(m['rd_loss'])} | {_fmt(m['bpp'])} | {_fmt(m['psnr'])} | "
                         f"{_fmt(m['ms_ssim'])} | {_fmt(m[f'bd_rate_vs_{anchor}'], 3)} | "
                         f"{_fmt(m[f'psnr_gain_vs_{anchor}'], 3)} |")
    lines += ["", "## LR tuning (RD loss on the tuning images at the end of the tuning budget)", "",
              "| contender | lr | RD loss | diverged |", "|---|---|---|---|"]
    for name, e in summary["contenders"].items():
        for lr, v in e["lr_grid"].items():
            chosen = " **(tuned)**" if float(lr) == e["tuned_lr"] else ""
            lines.append(f"| {name} | {lr}{chosen} | {_fmt(v['val_loss'])} | {v['diverged']} |")
    lines += ["", "![race](race.png)", ""]
    return "\n".join(lines)


def plot_race(summary: dict, out: Path) -> None:
    """Held-out RD loss and PSNR against training seconds: per contender the median over seeds (line) and the
    range (band)."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, e in summary["contenders"].items():
        for ax, key in zip(axes, ("rd_loss", "psnr")):
            runs = [[at.get(key) for at in s["marks"]] for s in e["seeds"].values()]
            n = min(len(r) for r in runs)
            values = np.array([[np.nan if v is None or not math.isfinite(v) else v for v in r[:n]] for r in runs],
                              dtype=float)
            if not n or np.all(np.isnan(values)):
                continue
            seconds = np.nanmedian([[m["seconds"] for m in s["marks"][:n]] for s in e["seeds"].values()], axis=0)
            line, = ax.plot(seconds, np.nanmedian(values, axis=0), marker="o", markersize=3,
                            label=f"{name} ({len(runs)} seeds)")
            ax.fill_between(seconds, np.nanmin(values, axis=0), np.nanmax(values, axis=0), color=line.get_color(),
                            alpha=0.2)
    if math.isfinite(summary["target_rd_loss"]):
        axes[0].axhline(summary["target_rd_loss"], color="k", ls="--", lw=0.8,
                        label=f"target ({summary['best_hand_designed']} at the end)")
    for ax, label in zip(axes, ("held-out RD loss (real bitstreams)", "held-out PSNR (dB)")):
        ax.set(xlabel="training seconds", ylabel=label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_title("RD loss vs wall-clock")
    axes[1].set_title("PSNR vs wall-clock")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def write_outputs(cfg: dict, run_dir: Path, summary: dict) -> None:
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    (run_dir / "report.md").write_text(report_markdown(summary))
    plot_race(summary, run_dir / "race.png")
    report = Run(run_dir / "report-run", cfg, job_type="race-report", group=cfg["group"], tags=["report"],
                 name=f"{cfg['group']}-report")
    anchor = summary["anchor"]["name"]
    rows = [[name, int(seed), m["mark"], m["seconds"], m["bpp"], m["psnr"], m["ms_ssim"], m["rd_loss"],
             m[f"bd_rate_vs_{anchor}"]]
            for name, e in summary["contenders"].items() for seed, s in e["seeds"].items() for m in s["marks"]]
    report.log_files(images={"race": run_dir / "race.png"},
                     tables={"marks": (["contender", "seed", "mark", "seconds", "bpp", "psnr", "ms_ssim", "rd_loss",
                                        f"bd_rate_vs_{anchor}"], rows)})
    report.summary({"target_rd_loss": summary["target_rd_loss"], "best_hand_designed": summary["best_hand_designed"],
                    **{f"{name}/median_seconds_to_target": e["median_seconds_to_target"]
                       for name, e in summary["contenders"].items()},
                    **{f"{name}/seconds_ratio_vs_best": ratio
                       for name, ratio in summary["learned_vs_best_seconds_ratio"].items()}})
    report.finish()


def jpeg_anchor(data: str | None, run_dir: Path) -> dict:
    """JPEG's RD curve on the held-out images (computed once per race, kept in RUN/jpeg.json)."""
    from codec.baselines import evaluate_baseline  # late import: only the race's start pays for it

    path = run_dir / "jpeg.json"
    if not path.is_file():
        points = evaluate_baseline("jpeg", [load_image(p) for p in list_images(data, "test")])
        anchor = {"name": "jpeg", "bpp": [p["bpp"] for p in points], "psnr": [p["psnr-rgb"] for p in points],
                  "quality": [p["quality"] for p in points]}
        path.write_text(json.dumps(anchor, indent=2))
    return json.loads(path.read_text())


def task_config(cfg: dict) -> dict:
    """The codec.train config every run starts from: the `codec` file with `codec_overrides` applied."""
    task, overrides = config_from_argv(["--config", cfg["codec"]]), cfg["codec_overrides"] or {}
    unknown = sorted(set(overrides) - set(task)) if isinstance(overrides, dict) else None
    if unknown is None or unknown:
        raise UserError(f"codec_overrides must map codec.train keys to values, got {overrides!r}")
    task = {**task, **overrides}
    check_codec_config(task)
    return task


def tuning_jobs(cfg: dict, run_dir: Path) -> list[tuple[Path, dict]]:
    """The tuning runs; every run's config, the reported ones' too (at a grid LR), is validated first."""
    plan, task = check_config(cfg), task_config(cfg)
    folders = image_folders(cfg["data"], run_dir, cfg["tune_images"])
    tune = tuning_runs(task, cfg, plan, run_dir, folders["tune"])
    untuned = race_runs(task, cfg, plan, run_dir, folders["race"], {c: cfg["lrs"][0] for c in cfg["contenders"]})
    for _, job in tune + [job for by_seed in untuned.values() for job in by_seed.values()]:
        check_codec_config(job)
    return tune


def tuned_lrs(cfg: dict, run_dir: Path, tuning_rows: dict[Path, dict]) -> dict[str, tuple[dict, float]]:
    """contender -> (its LR-grid results, the chosen LR) from the finished tuning runs' final rows."""
    plan = check_config(cfg)
    settings = [(None, lr) for lr in cfg["lrs"]]
    tuned = {c: tune_lr({"tune_on": "val_loss"}, plan, run_dir, c, settings, tuning_rows) for c in cfg["contenders"]}
    return {c: (results, lr) for c, (results, (_, lr)) in tuned.items()}


def reported_runs(cfg: dict, run_dir: Path, tuning_rows: dict[Path, dict]) -> dict[str, dict[int, tuple[Path, dict]]]:
    folders = image_folders(cfg["data"], run_dir, cfg["tune_images"])
    tuned = {c: lr for c, (_, lr) in tuned_lrs(cfg, run_dir, tuning_rows).items()}
    return race_runs(task_config(cfg), cfg, check_config(cfg), run_dir, folders["race"], tuned,
                     planned_steps(cfg, run_dir, tuning_rows))


def reported_jobs(cfg: dict, run_dir: Path, tuning_rows: dict[Path, dict]) -> list[tuple[Path, dict]]:
    return [job for by_seed in reported_runs(cfg, run_dir, tuning_rows).values() for job in by_seed.values()]


def report(cfg: dict, run_dir: Path, tuning_rows: dict[Path, dict]) -> dict:
    """Summary and outputs of a race whose runs are all finished."""
    jobs = reported_runs(cfg, run_dir, tuning_rows)
    runs = {c: {seed: path for seed, (path, _) in by_seed.items()} for c, by_seed in jobs.items()}
    summary = summarize(cfg, runs, tuned_lrs(cfg, run_dir, tuning_rows), jpeg_anchor(cfg["data"], run_dir))
    for contender, by_seed in jobs.items():
        summary["contenders"][contender]["planned_steps"] = next(iter(by_seed.values()))[1]["steps"]
    write_outputs(cfg, run_dir, summary)
    return summary


def run_race(cfg: dict, run_dir: Path) -> dict:
    check_config(cfg)  # before the run directory exists
    cfg = {**cfg, "group": cfg["group"] or run_dir.name}
    run_dir.mkdir(parents=True, exist_ok=True)
    tune = tuning_jobs(cfg, run_dir)  # every run's config is checked before the first one starts
    jpeg_anchor(cfg["data"], run_dir)
    with worker_pool(cfg["workers"]) as pool:
        tuning_rows = run_all(tune, cfg["group"], pool)
        run_all(reported_jobs(cfg, run_dir, tuning_rows), cfg["group"], pool)
    return report(cfg, run_dir, tuning_rows)


@cli_entry
def main(argv=None):
    cfg = parse_config(argv, "race/default.yaml", "Race optimizers to a held-out RD quality in wall-clock seconds "
                       "(W&B + summary.json, report.md, race.png).")
    return run_study(cfg, sys.modules[__name__], run_race, "race.png")

if __name__ == "__main__":
    main()
