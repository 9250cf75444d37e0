"""LSTM vs LR-tuned Adam: `python -m studies.compare [--lopt PATH] [--seeds N] [--steps T] ...`.

1. Tune Adam: one run per learning rate of the grid and tuning seed (`tune_seeds`, never reported; T steps);
   the LR with the lowest mean training loss over the last 10% of steps wins (`tune_on: val_loss` = the
   validation RD loss on the held-out "test" images instead), and an LR that diverged on any tuning seed is
   out: a tuned baseline must be stable, not lucky. A default Adam proves nothing. `lstm_lrs` (off by default:
   a learned optimizer should need no tuning) tunes the LSTM's nominal step by the same rule, and
   `lopt_candidates` chooses among several learned optimizer files by it: every choice about the learned optimizer
   is made on the tuning seeds, so the reported seeds stay fresh.
2. Run every optimizer x seed for T steps on the same held-out codec task (tuned Adam; the others at their
   defaults or tuned step), each a full `codec.train` run logged to W&B with a shared group, job_type "compare" and
   tags [optimizer] (the runs of step 1 also `tuning`: they choose a setting, they are not results).
3. Analyse the runs' own metrics.jsonl: target loss = tuned Adam's final training loss (mean over the seeds
   that did not diverge),
   steps and seconds to reach it per run, median ratios other/Adam, losses at 1x/5x/10x the learned
   optimizer's meta-training horizon, divergence flags. Write summary.json, report.md and
   convergence.png (vs step and vs wall time, mean and min-max band over seeds, log scale), and log them
   to W&B as a "compare-report" run.

Resumable: finished runs (RUN/done.json) are skipped, interrupted ones resume from their checkpoint.
Parallel: `workers: K` trains K runs at once, each in its own process (the runs are independent).
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import math
import os
import signal
import statistics
import sys
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from codec.train import default_config, train  # noqa: E402
from metaopt.config import RESOLVED, parse_config, read_yaml  # noqa: E402
from metaopt.errors import UserError, cli_entry  # noqa: E402
from metaopt.optimizers import OPTIMIZERS  # noqa: E402
from metaopt.tracking import Run, read_metrics  # noqa: E402
from studies.sweeps import run_study  # noqa: E402

TUNE_ON = {"train_loss": "training RD loss over the last 10% of T steps of a run with the tuning seed",
           "val_loss": "validation RD loss on the held-out test images after T steps"}
CODEC_KEYS = ("data", "model", "N", "M", "lmbda", "distortion", "crop", "batch_size", "log_every", "val_crop",
              "spike_guard", "warmup_steps", "lopt_compile", "lopt_basis", "device", "threads")


# -- configuration -------------------------------------------------------------------------------------
def parse_seeds(value) -> list[int]:
    """`3` -> [0, 1, 2]; `[4, 7]` or "4,7" -> [4, 7]; None -> [0, 1, 2]; anything else is an error."""
    if value is None:
        value = 3
    if isinstance(value, bool):
        raise UserError(f"seeds must be a count or a list of integers, got {value!r}")
    if isinstance(value, int):
        if value < 1:
            raise UserError(f"seeds must be at least 1, got {value}")
        return list(range(value))
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise UserError(f"seeds must be a count or a list of integers, got {value!r}")
    seeds = []
    for item in items:
        try:
            if isinstance(item, float) or (isinstance(item, str) and not item.strip().lstrip("-").isdigit()):
                raise ValueError
            seeds.append(int(item))
        except (TypeError, ValueError):
            raise UserError(f"seeds must be integers, got {item!r} in {value!r}") from None
    if len(set(seeds)) != len(seeds):
        raise UserError(f"seeds must be distinct, got {seeds}")
    return seeds


def check_config(cfg: dict) -> dict:
    """Validate everything before the first run starts; returns the derived plan."""
    optimizers = cfg["optimizers"]
    if not optimizers:
        raise UserError("optimizers is empty")
    unknown = [o for o in optimizers if o not in OPTIMIZERS]
    if unknown:
        raise UserError(f"unknown optimizer(s) {unknown}; choose from: {', '.join(OPTIMIZERS)}")
    if "adam" not in optimizers:
        raise UserError("optimizers must include adam: it is the tuned baseline that defines the target loss")
    if not cfg["adam_lrs"]:
        raise UserError("adam_lrs is empty: Adam must be tuned over a grid of learning rates")
    for key in ("adam_lrs", "lstm_lrs"):
        for lr in cfg[key] or []:
            if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
                raise UserError(f"{key} must be positive numbers, got {lr!r}")
    for key in ("lstm_lrs", "lopt_candidates"):
        if cfg[key] and "lstm" not in optimizers:
            raise UserError(f"{key} is set but lstm is not among the optimizers")
    candidates = cfg["lopt_candidates"] or []
    if candidates and cfg["lopt"]:
        raise UserError("give either lopt (one learned optimizer) or lopt_candidates (chosen among on the tuning "
                        "seeds), not both")
    stems = [Path(str(c)).stem for c in candidates]
    if len(set(stems)) != len(stems):
        raise UserError(f"lopt_candidates must have distinct file names (their runs are named by them): {candidates}")
    if cfg["tune_only"] and any(cfg.get(action) for action in ("sweep", "job", "report")):
        raise UserError("tune_only runs the tuning stage on this machine: not with --sweep, --job or --report")
    if cfg["tune_on"] not in TUNE_ON:
        raise UserError(f"tune_on must be one of {', '.join(TUNE_ON)}, got {cfg['tune_on']!r}")
    if cfg["steps"] <= 0:
        raise UserError(f"steps must be positive, got {cfg['steps']}")
    if not (isinstance(cfg["workers"], int) and cfg["workers"] >= 1):
        raise UserError(f"workers must be a positive integer, got {cfg['workers']!r}")
    seeds = parse_seeds(cfg["seeds"])
    tune_seeds = parse_seeds(cfg["tune_seeds"])
    if set(tune_seeds) & set(seeds):
        raise UserError(f"tune_seeds {sorted(set(tune_seeds) & set(seeds))} are also reported seeds; pick others")
    codec_cfg = codec_config(cfg, optimizer="adam", lr=cfg["adam_lrs"][0], seed=tune_seeds[0])
    if "lstm" in optimizers:
        from metaopt.optim import load_lopt

        for lopt in candidates or [cfg["lopt"]]:
            load_lopt(lopt)  # fail now, not after an hour of Adam runs
    return {"seeds": seeds, "tune_seeds": tune_seeds, "codec": codec_cfg}


def codec_config(cfg: dict, optimizer: str, lr, seed: int, tags: tuple[str, ...] = (), lopt=None) -> dict:
    """One run's codec.train config; `lopt` (a candidate file) overrides cfg's learned optimizer."""
    steps = cfg["steps"]
    return default_config(**{k: cfg[k] for k in CODEC_KEYS}, optimizer=optimizer, lr=lr, seed=seed,
                          lopt=lopt or cfg["lopt"], steps=steps, val_every=steps, checkpoint_every=max(1, steps // 10),
                          eval_at_end=False, group=cfg["group"], tags=list(tags))


def meta_horizon(cfg: dict) -> int | None:
    if cfg["horizon"]:
        return int(cfg["horizon"])
    if "lstm" not in cfg["optimizers"]:
        return None
    from metaopt.optim import load_lopt

    meta = load_lopt(cfg["lopt"] or (cfg["lopt_candidates"] or [None])[0])[1].get("meta", {})
    horizon = meta.get("horizon") or meta.get("config", {}).get("horizon_max")
    return int(horizon) if horizon else None


# -- running -------------------------------------------------------------------------------------------
def run_one(run_dir: Path, codec_cfg: dict, group: str) -> dict:
    """Train (or resume, or skip if finished) one codec run; returns its final metrics row."""
    done = run_dir / "done.json"
    if done.is_file():
        return json.loads(done.read_text())
    cfg = {**codec_cfg, "run_dir": str(run_dir), "resume": (run_dir / "checkpoint.pt").is_file()}
    print(f"[compare] {run_dir.name}: {cfg['optimizer']} lr={cfg['lr']} seed={cfg['seed']}"
          + (" (resuming)" if cfg["resume"] else ""), flush=True)
    row = train(cfg, run_dir, group=group, show_progress=False)
    done.write_text(json.dumps(row))
    return row


def run_all(jobs: list[tuple[Path, dict]], group: str,
            pool: ProcessPoolExecutor | None) -> dict[Path, dict]:
    """`run_one` for every (run_dir, codec config): in this process, or spread over the `pool`'s workers."""
    if pool is None:
        return {path: run_one(path, codec_cfg, group) for path, codec_cfg in jobs}
    futures = {pool.submit(run_one, path, codec_cfg, group): path for path, codec_cfg in jobs}
    done, _ = wait(futures, return_when=FIRST_EXCEPTION)
    failed = [f for f in done if f.exception() is not None]
    if failed:
        pool.shutdown(cancel_futures=True)
        raise failed[0].exception()
    return {futures[f]: f.result() for f in futures}


def worker_pool(workers: int) -> ProcessPoolExecutor | contextlib.nullcontext:
    """`workers` > 1: one pool of child processes for the whole compare (tuning and reported runs), so that each
    worker pays torch's import once; otherwise every run trains in this process."""
    if workers <= 1:
        return contextlib.nullcontext()
    return ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_die_with_parent,
                               initargs=(os.getpid(),))


def _die_with_parent(parent: int) -> None:
    """Worker initializer: on Linux, ask the kernel to SIGKILL this worker when the compare process dies. A worker
    left running after `kill -9` would keep writing to its run directory while a resumed compare trains that same
    run again (the pool itself only notices a dead parent after the current run). Elsewhere: nothing to set."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # a libc without prctl (as pin_mmap_threshold allows): run unprotected
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def lr_tag(lr) -> str:
    return "default" if lr is None else f"{lr:g}"


def setting_tag(lopt, lr) -> str:
    """A tuned setting's name in run directories and the summary: `lr<lr>`, or `<candidate file>-lr<lr>`."""
    return f"lr{lr_tag(lr)}" if lopt is None else f"{Path(str(lopt)).stem}-lr{lr_tag(lr)}"


def tuning_grids(cfg: dict) -> dict[str, list[tuple]]:
    """optimizer -> the settings its tuning runs try, each (learned optimizer file or None, lr): Adam's LRs; the
    LSTM's candidate files x its LRs (each file's stored step where `lstm_lrs` is empty), when either is set."""
    grids = {"adam": [(None, lr) for lr in cfg["adam_lrs"]]}
    if cfg["lstm_lrs"] or cfg["lopt_candidates"]:
        grids["lstm"] = [(lopt, lr) for lopt in (cfg["lopt_candidates"] or [None])
                         for lr in (cfg["lstm_lrs"] or [None])]
    return grids


def tuning_jobs(cfg: dict, run_dir: Path) -> list[tuple[Path, dict]]:
    """Every tuned optimizer at every setting of its grid and every tuning seed."""
    plan = check_config(cfg)
    return [(run_dir / "tune" / f"{optimizer}-{setting_tag(lopt, lr)}-s{seed}",
             codec_config(cfg, optimizer, lr, seed, tags=("tuning",), lopt=lopt))
            for optimizer, grid in tuning_grids(cfg).items() for lopt, lr in grid for seed in plan["tune_seeds"]]


def tuned_lrs(cfg: dict, run_dir: Path, tuning_rows: dict[Path, dict]) -> dict[str, tuple[dict, tuple]]:
    """optimizer -> (its grid's results by setting name, the chosen (file, lr)) from the finished tuning runs."""
    plan = check_config(cfg)
    return {optimizer: tune_lr(cfg, plan, run_dir, optimizer, grid, tuning_rows)
            for optimizer, grid in tuning_grids(cfg).items()}


def reported_runs(cfg: dict, run_dir: Path, tuning_rows: dict[Path, dict]) -> dict[str, dict[int, tuple[Path, dict]]]:
    """optimizer -> seed -> (run directory, config): every optimizer x reported seed, tuned ones at their setting."""
    plan, tuned = check_config(cfg), tuned_lrs(cfg, run_dir, tuning_rows)
    runs = {}
    for optimizer in cfg["optimizers"]:
        lopt, lr = tuned[optimizer][1] if optimizer in tuned else (None, None)
        runs[optimizer] = {seed: (run_dir / "runs" / f"{optimizer}-{setting_tag(lopt, lr)}-s{seed}",
                                  codec_config(cfg, optimizer, lr, seed, lopt=lopt)) for seed in plan["seeds"]}
    return runs


def reported_jobs(cfg: dict, run_dir: Path, tuning_rows: dict[Path, dict]) -> list[tuple[Path, dict]]:
    return [job for by_seed in reported_runs(cfg, run_dir, tuning_rows).values() for job in by_seed.values()]


def task_settings(cfg: dict) -> dict:
    return {key: cfg[key] for key in ("data", "model", "N", "M", "lmbda", "distortion", "crop", "batch_size")}


def report(cfg: dict, run_dir: Path, tuning_rows: dict[Path, dict]) -> dict:
    """Summary and outputs of a study whose runs are all finished."""
    runs = {optimizer: {seed: path for seed, (path, _) in by_seed.items()}
            for optimizer, by_seed in reported_runs(cfg, run_dir, tuning_rows).items()}
    summary = summarize(cfg, runs, tuned_lrs(cfg, run_dir, tuning_rows), meta_horizon(cfg))
    summary["task"] = task_settings(cfg)
    if "lstm" in runs:
        summary["learned_optimizer"] = _resolved(next(iter(runs["lstm"].values())))
    write_outputs(cfg, run_dir, summary, runs)
    return summary


def run_compare(cfg: dict, run_dir: Path) -> dict:
    check_config(cfg)
    cfg = {**cfg, "group": cfg["group"] or run_dir.name}
    if cfg["workers"] > 1 and not cfg["threads"]:  # torch's default (all cores) in every worker would oversubscribe
        cfg["threads"] = max(1, (os.cpu_count() or 1) // cfg["workers"])
    run_dir.mkdir(parents=True, exist_ok=True)
    with worker_pool(cfg["workers"]) as pool:
        tuning_rows = run_all(tuning_jobs(cfg, run_dir), cfg["group"], pool)
        if cfg["tune_only"]:
            return tuning_report(cfg, run_dir, tuning_rows)
        run_all(reported_jobs(cfg, run_dir, tuning_rows), cfg["group"], pool)
    return report(cfg, run_dir, tuning_rows)


def tuning_fields(tuned: dict[str, tuple[dict, tuple]]) -> dict:
    """What summary.json and tuning.json record of `tuned_lrs`: each grid's results, the chosen lr and file."""
    return {**{f"{opt}_lr_grid": grid for opt, (grid, _) in tuned.items()},
            **{f"tuned_{opt}_lr": lr for opt, (_, (_, lr)) in tuned.items()},
            **{f"tuned_{opt}_lopt": lopt for opt, (_, (lopt, _)) in tuned.items() if lopt is not None}}


def tuning_report(cfg: dict, run_dir: Path, tuning_rows: dict[Path, dict]) -> dict:
    """`tune_only`: the tuning stage's outcome (tuning.json, and report.md with its tables), no reported run: how
    candidates are screened without spending a fresh seed."""
    tuned = tuned_lrs(cfg, run_dir, tuning_rows)
    outcome = {"tune_only": True, "steps": cfg["steps"], "tune_seeds": parse_seeds(cfg["tune_seeds"]),
               "tuning_criterion": TUNE_ON[cfg["tune_on"]],
               "task": task_settings(cfg),
               **tuning_fields(tuned)}
    (run_dir / "tuning.json").write_text(json.dumps(outcome, indent=2, default=str))
    lines = ["# Tuning stage only", "", f"T = {cfg['steps']} steps. Criterion: {outcome['tuning_criterion']}.", "",
             f"Tuning seeds {outcome['tune_seeds']} (means over them; a setting that diverged on any is out).", ""]
    for opt in tuned:
        lines += [f"## {opt}", "", *_lr_grid_table(outcome, opt), ""]
    (run_dir / "report.md").write_text("\n".join(lines))
    return outcome


def tune_lr(cfg: dict, plan: dict, run_dir: Path, optimizer: str, grid: list[tuple],
            rows: dict[Path, dict]) -> tuple[dict, tuple]:
    """From the finished tuning runs of `optimizer` (final `rows` by run directory), return
    ({setting name: tuning results}, best (file, lr)). Best = lowest mean `tune_on` loss over the tuning seeds among
    the settings that diverged on none. A setting is named by its lr alone unless it names a candidate file."""
    tuning, scores = {}, {}
    for lopt, lr in grid:
        train_losses, val_losses = [], []
        for seed in plan["tune_seeds"]:
            path = run_dir / "tune" / f"{optimizer}-{setting_tag(lopt, lr)}-s{seed}"
            row = rows[path]
            train_losses.append(tail_loss(path))
            val_losses.append(row["val_loss"] if _finite(row.get("val_loss")) else math.inf)
        name = lr_tag(lr) if lopt is None else setting_tag(lopt, lr)
        tuning[name] = {"train_loss": float(np.mean(train_losses)), "val_loss": float(np.mean(val_losses)),
                        "diverged": sum(not math.isfinite(x) for x in train_losses)}
        scores[(lopt, lr)] = tuning[name][cfg["tune_on"]] if not tuning[name]["diverged"] else math.inf
    best = min(scores, key=scores.get)
    if not math.isfinite(scores[best]):
        raise UserError(f"every {optimizer} setting of its grid {[setting_tag(*x) for x in grid]} diverged; "
                        "widen the grid")
    for (lopt, lr), entry in zip(grid, tuning.values()):
        entry["chosen"] = (lopt, lr) == best
    return tuning, best


# -- analysis ------------------------------------------------------------------------------------------
def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def curve(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(steps, training loss, wall seconds) from a run's metrics.jsonl; non-finite losses, and the last row of
    a run that stopped as diverged, become inf."""
    rows = read_metrics(path / "metrics.jsonl")
    steps = np.array([r["step"] for r in rows], dtype=float)
    loss = np.array([r["loss"] if _finite(r["loss"]) and not r.get("stopped_diverged") else math.inf for r in rows],
                    dtype=float)
    wall = np.array([r["wall_time"] for r in rows], dtype=float)
    return steps, loss, wall


def trailing_mean(values: np.ndarray, k: int) -> np.ndarray:
    """Mean of each value and the k-1 before it (fewer at the start); a window holding inf is inf.
    Window by window, not as differences of a cumulative sum: one huge early value (a first window at 1e17,
    then a recovery) would wipe out the precision of every later difference (measured: means of 0.0)."""
    padded = np.concatenate([np.full(k - 1, np.nan), np.asarray(values, dtype=float)])
    return np.nanmean(np.lib.stride_tricks.sliding_window_view(padded, k), axis=1)


def is_diverged(loss: np.ndarray) -> bool:
    """Non-finite somewhere, or ending above where it started."""
    return bool(not np.all(np.isfinite(loss)) or loss[-1] > loss[0])


def tail_loss(path: Path) -> float:
    """Mean logged training loss over the last 10% of a run (inf if it diverged): the tuning criterion
    `train_loss`, less noisy than the single last window."""
    steps, loss, _ = curve(path)
    tail = loss[steps > steps[-1] * 0.9] if len(steps) > 1 else loss
    return float(np.mean(tail)) if np.all(np.isfinite(loss)) else math.inf


def first_reach(steps, values, target) -> float | None:
    hit = np.nonzero(values <= target)[0]
    return float(steps[hit[0]]) if len(hit) else None


def loss_at(steps, loss, step) -> float | None:
    """The logged (window-mean) loss at the first logged step >= `step`."""
    idx = np.nonzero(steps >= step)[0]
    return float(loss[idx[0]]) if len(idx) else None


def _median_or_inf(values) -> float:
    return statistics.median([math.inf if v is None else v for v in values])


def _ratio(a: float, b: float) -> float | None:
    """a / b; None where Adam's median (b) never reached the target: 0.0 would read as infinitely faster."""
    return a / b if b and not math.isinf(b) else None


def report_steps(T: int, horizon: int | None) -> list[int]:
    """The steps the loss tables report: 1x, 5x and 10x the meta-training horizon that fit in T; T/10, T/2 and T
    when none does (a run shorter than the horizon) or the horizon is unknown."""
    fitting = [s for s in (horizon, 5 * horizon, 10 * horizon) if s <= T] if horizon else []
    return fitting or [max(1, T // 10), max(1, T // 2), T]


def summarize(cfg: dict, runs: dict[str, dict[int, Path]], tuned: dict[str, tuple[dict, tuple]],
              horizon: int | None) -> dict:
    """`tuned`: optimizer -> (its grid's results, the chosen (file, lr)), as `tune_lr` returns them."""
    # Every statistic reads the *smoothed* curve: one logged window is a 10-step mean over random crops and
    # scatters by ~+-15% around the trend, enough for a single lucky window to "reach" a target hundreds of
    # steps early. The trailing mean over `smooth` windows keeps steps-to-target about the trend.
    k = max(1, int(cfg.get("smooth", 1)))
    curves = {opt: {seed: (st, trailing_mean(lo, k), wa) for seed, (st, lo, wa) in
                    ((seed, curve(path)) for seed, path in by_seed.items())} for opt, by_seed in runs.items()}
    adam_final = [c[1][-1] for c in curves["adam"].values() if math.isfinite(c[1][-1])]
    target = float(np.mean(adam_final)) if adam_final else math.inf
    T = cfg["steps"]
    checkpoints = report_steps(T, horizon)

    per_opt = {}
    for opt, by_seed in curves.items():
        entry = {"seeds": {}}
        for seed, (steps, loss, wall) in by_seed.items():
            diverged = is_diverged(loss)
            reach_step = first_reach(steps, loss, target)
            reach_wall = first_reach(wall, loss, target)
            entry["seeds"][str(seed)] = {
                "steps_to_target": reach_step, "seconds_to_target": reach_wall,
                "final_loss": float(loss[-1]), "diverged": diverged,
                "loss_at": {str(s): loss_at(steps, loss, s) for s in checkpoints},
                "seconds_total": float(wall[-1]),
            }
        seeds = entry["seeds"].values()
        entry["median_steps_to_target"] = _median_or_inf([s["steps_to_target"] for s in seeds])
        entry["median_seconds_to_target"] = _median_or_inf([s["seconds_to_target"] for s in seeds])
        stable = [s for s in seeds if not s["diverged"]]  # means over the runs that did not diverge
        entry["mean_loss_at"] = {str(c): _mean([s["loss_at"][str(c)] for s in stable]) for c in checkpoints}
        entry["mean_final_loss"] = _mean([s["final_loss"] for s in stable])
        entry["divergences"] = sum(s["diverged"] for s in seeds)
        per_opt[opt] = entry

    adam = per_opt["adam"]
    ratios = {}
    for opt, entry in per_opt.items():
        if opt == "adam":
            continue
        ratios[opt] = {
            "steps_to_target_ratio": _ratio(entry["median_steps_to_target"], adam["median_steps_to_target"]),
            "wall_time_to_target_ratio": _ratio(entry["median_seconds_to_target"],
                                                adam["median_seconds_to_target"]),
            "loss_ratio_at": {c: (_ratio(v, adam["mean_loss_at"][c]) if v is not None else None)
                              for c, v in entry["mean_loss_at"].items()},
        }
    return {
        "steps": T, "seeds": sorted(int(s) for s in next(iter(per_opt.values()))["seeds"]),
        "meta_training_horizon": horizon, "report_steps": checkpoints,
        **tuning_fields(tuned),
        "tuning_criterion": TUNE_ON[cfg["tune_on"]],
        "target_loss": target, "smooth_windows": k,
        "target_definition": f"mean over the non-diverged seeds of tuned Adam's training loss at T (every curve "
                             f"smoothed by a trailing mean over {k} logged windows)",
        "tune_seeds": parse_seeds(cfg["tune_seeds"]),
        "optimizers": per_opt, "ratios_vs_adam": ratios,
        "final_rd": {opt: {str(seed): _final_rd(path) for seed, path in by_seed.items()}
                     for opt, by_seed in runs.items()},
    }


def _resolved(path: Path) -> dict:
    """What a run actually used, as codec.train recorded it: the learned optimizer's file, its sha256 and the step
    (lr) it ran at."""
    return read_yaml(path / "config.yaml")[RESOLVED]


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _final_rd(path: Path) -> dict:
    last = read_metrics(path / "metrics.jsonl")[-1]
    return {k: last.get(k) for k in ("val_loss", "val_bpp", "val_psnr", "val_ms_ssim")}


# -- outputs -------------------------------------------------------------------------------------------
def plot_convergence(runs: dict[str, dict[int, Path]], target: float, out: Path) -> tuple[float, float]:
    """Write the two-panel convergence plot; returns its y range."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    top, bottom = 0.0, math.inf  # y range: up to 2x the highest per-step median, so one seed's spike (a guarded
    for opt, by_seed in runs.items():  # run's logged window can reach 1e18 before the rollback) hides nothing
        all_curves = [curve(p) for p in by_seed.values()]
        curves = [c for c in all_curves if not is_diverged(c[1])]  # a diverged run would swamp a log-scale mean
        note = f", {len(all_curves) - len(curves)} diverged, not drawn" if len(curves) < len(all_curves) else ""
        if not curves:
            continue
        n = min(len(c[0]) for c in curves)
        steps = curves[0][0][:n]
        loss = np.stack([c[1][:n] for c in curves])
        wall = np.mean(np.stack([c[2][:n] for c in curves]), axis=0)
        mean = np.exp(np.mean(np.log(np.clip(loss, 1e-12, 1e30)), axis=0))  # geometric mean: log-scale plot
        top, bottom = max(top, 2 * float(np.median(loss, axis=0).max())), min(bottom, 0.8 * float(loss.min()))
        for ax, x in ((axes[0], steps), (axes[1], wall)):
            line, = ax.plot(x, mean, label=f"{opt} ({len(curves)} seeds{note})")
            ax.fill_between(x, np.clip(loss.min(0), 1e-12, None), np.clip(loss.max(0), None, 1e30),
                            color=line.get_color(), alpha=0.2)
    for ax, xlabel in ((axes[0], "step"), (axes[1], "wall time (s)")):
        if math.isfinite(target):
            ax.axhline(target, color="k", ls="--", lw=0.8, label="target (tuned Adam at T)")
        ax.set_yscale("log")
        if 0 < bottom < top < math.inf:
            ax.set_ylim(bottom, top)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("training RD loss (window mean)")
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    axes[0].set_title("convergence vs step (band: min-max over seeds)")
    axes[1].set_title("convergence vs wall time")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return axes[0].get_ylim()


def _fmt(v, digits=4) -> str:
    if v is None:
        return "—"
    if isinstance(v, float) and math.isinf(v):
        return "never"
    return f"{v:.{digits}g}" if isinstance(v, float) else str(v)


def _lr_grid_table(summary: dict, optimizer: str) -> list[str]:
    return ["| setting | training loss (last 10%) | validation loss | diverged |", "|---|---|---|---|"] + [
        f"| {name}{' **(best)**' if v['chosen'] else ''} | {_fmt(v['train_loss'])} | {_fmt(v['val_loss'])} | "
        f"{v['diverged']} |" for name, v in summary[f"{optimizer}_lr_grid"].items()]


def report_markdown(summary: dict) -> str:
    lines = ["# LSTM vs tuned Adam", "",
             f"T = {summary['steps']} steps, seeds {summary['seeds']}, meta-training horizon "
             f"{_fmt(summary['meta_training_horizon'])}.", "",
             "## Adam LR tuning", "", f"Criterion: {summary['tuning_criterion']}.", "",
             f"Tuning seeds {summary['tune_seeds']} (means over them; an LR that diverged on any is out).", "",
             *_lr_grid_table(summary, "adam")]
    if "lstm_lr_grid" in summary:
        lines += ["", "LSTM nominal step (and file, among candidates), tuned by the same rule on the same seeds:", "",
                  *_lr_grid_table(summary, "lstm")]
    lines += ["", f"Target loss (tuned Adam's mean training loss at T, non-diverged seeds; curves smoothed over "
              f"{summary['smooth_windows']} logged windows): **{_fmt(summary['target_loss'])}**", "",
              "## Steps to target", "",
              "| optimizer | " + " | ".join(f"seed {s}" for s in summary["seeds"])
              + " | median steps | median seconds | divergences |",
              "|---|" + "---|" * (len(summary["seeds"]) + 3)]
    for opt, e in summary["optimizers"].items():
        cells = [_fmt(e["seeds"][str(s)]["steps_to_target"]) for s in summary["seeds"]]
        lines.append(f"| {opt} | " + " | ".join(cells) + f" | {_fmt(e['median_steps_to_target'])} | "
                     f"{_fmt(e['median_seconds_to_target'], 3)} | {e['divergences']} |")
    steps_label = ", ".join(str(s) for s in summary["report_steps"])
    lines += ["", f"## Mean training loss at steps {steps_label}", "",
              "| optimizer | " + " | ".join(f"step {s}" for s in summary["report_steps"]) + " |",
              "|---|" + "---|" * len(summary["report_steps"])]
    for opt, e in summary["optimizers"].items():
        lines.append(f"| {opt} | " + " | ".join(_fmt(e["mean_loss_at"][str(s)]) for s in summary["report_steps"])
                     + " |")
    lines += ["", "## Ratios vs tuned Adam (lower is better)", "",
              "| optimizer | steps-to-target | wall-time-to-target | " + " | ".join(
                  f"loss @ {s}" for s in summary["report_steps"]) + " |",
              "|---|---|---|" + "---|" * len(summary["report_steps"])]
    for opt, r in summary["ratios_vs_adam"].items():
        lines.append(f"| {opt} | {_fmt(r['steps_to_target_ratio'], 3)} | {_fmt(r['wall_time_to_target_ratio'], 3)}"
                     " | " + " | ".join(_fmt(r["loss_ratio_at"][str(s)], 3) for s in summary["report_steps"])
                     + " |")
    lines += ["", "## Final RD points (validation images, likelihood bpp)", "",
              "| optimizer | seed | val loss | bpp | PSNR (dB) | MS-SSIM |", "|---|---|---|---|---|---|"]
    for opt, by_seed in summary["final_rd"].items():
        for seed, rd in by_seed.items():
            lines.append(f"| {opt} | {seed} | {_fmt(rd['val_loss'])} | {_fmt(rd['val_bpp'])} | "
                         f"{_fmt(rd['val_psnr'])} | {_fmt(rd['val_ms_ssim'])} |")
    lines += ["", "![convergence](convergence.png)", ""]
    return "\n".join(lines)


def write_outputs(cfg: dict, run_dir: Path, summary: dict, runs: dict[str, dict[int, Path]]) -> None:
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    markdown = report_markdown(summary)
    (run_dir / "report.md").write_text(markdown)
    plot_convergence(runs, summary["target_loss"], run_dir / "convergence.png")
    report = Run(run_dir / "report-run", cfg, job_type="compare-report", group=cfg["group"], tags=["report"],
                 name=f"{cfg['group']}-report")
    rows = [[opt, seed, s["steps_to_target"], s["seconds_to_target"], s["final_loss"], s["diverged"]]
            for opt, e in summary["optimizers"].items() for seed, s in e["seeds"].items()]
    report.log_files(images={"convergence": run_dir / "convergence.png"},
                     tables={"steps_to_target": (["optimizer", "seed", "steps", "seconds", "final_loss",
                                                  "diverged"], rows)})
    report.summary({"target_loss": summary["target_loss"],
                    **{k: v for k, v in summary.items() if k.startswith("tuned_") and k.endswith("_lr")},
                    **{f"{opt}/steps_to_target_ratio": r["steps_to_target_ratio"]
                       for opt, r in summary["ratios_vs_adam"].items()}})
    report.finish()


@cli_entry
def main(argv=None):
    cfg = parse_config(argv, "compare/default.yaml", "Compare the learned LSTM optimizer with LR-tuned Adam "
                       "on held-out codec training tasks (W&B + summary.json, report.md, convergence.png).")
    return run_study(cfg, sys.modules[__name__], run_compare, "convergence.png")

if __name__ == "__main__":
    main()
