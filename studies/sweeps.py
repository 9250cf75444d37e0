"""A study's runs spread over machines by W&B sweep agents, and its report built from the finished runs.

A study (compare, race) is two stages of independent codec runs: the LR-tuning runs, then the reported runs at the
tuned LRs. On one machine `python -m studies.<study>` runs both through a local process pool. Across machines:

    python -m studies.compare --run-dir /shared/cmp --sweep tune.yaml   # the study's plan is pinned in study.yaml
    wandb sweep tune.yaml; wandb agent ID                              # on every machine that sees /shared
    python -m studies.compare --run-dir /shared/cmp --sweep runs.yaml  # tuning done: the reported runs' sweep
    wandb sweep runs.yaml; wandb agent ID
    python -m studies.compare --run-dir /shared/cmp --report          # summary.json, report.md, plot, W&B

Each sweep is a grid over one parameter, `job`: the stage's runs by name (optimizer, LR and seed spelled out, e.g.
`tune/adam-lr0.001-s1000`). A grid over the plan's jobs rather than over optimizer x LR x seed separately, because
the contenders' grids differ (compare tunes only some optimizers) and a product would schedule runs nobody planned.
An agent's run calls `python -m studies.<study> --run_dir DIR --job NAME`, which trains that one run in DIR/NAME
with the pinned plan, resuming it if an earlier attempt was interrupted and skipping it if it is finished. The
tuned LRs are read from the finished tuning runs, so `--report` gives the summary the one-machine command gives.
The data folder must have the same path on every machine.
"""
from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import Callable

import yaml

from metaopt.checkpoint import atomic_write
from metaopt.errors import UserError
from metaopt.sweep import check_sweep

STUDY_FILE = "study.yaml"
# Keys of a study's command line that choose what to do with the study, not what the study is.
ACTIONS = ("sweep", "job", "report", "resume", "run_dir")

Job = tuple[Path, dict]  # (run directory, codec.train config)


def is_distributed(cfg: dict) -> bool:
    """Whether the command line asks for one of the actions here rather than a whole study on this machine."""
    actions = [f"--{key}" for key in ("sweep", "job", "report") if cfg[key]]
    if len(actions) > 1:
        raise UserError(f"{' and '.join(actions)} exclude each other; pass one")
    return bool(actions)


def study_run_dir(cfg: dict, study: str) -> Path:
    """A study's output folder: --run-dir, else runs/<study>/<time>; a non-empty one only with --resume."""
    if cfg["run_dir"]:
        run_dir = Path(cfg["run_dir"])
    elif cfg["resume"]:
        raise UserError(f"--resume needs --run-dir (the {study} to continue)")
    else:
        run_dir = Path("runs") / study / datetime.now().strftime("%Y%m%d-%H%M%S")
    if run_dir.exists() and any(run_dir.iterdir()) and not cfg["resume"]:
        raise UserError(f"{run_dir} is not empty; pass --resume to continue it or choose another --run-dir")
    return run_dir


def run_study(cfg: dict, study: ModuleType, run_whole: Callable[[dict, Path], dict], plot: str) -> dict | None:
    """A study's command: the whole study on this machine (`run_whole(cfg, run_dir)`), or one of the actions here;
    prints the report where there is one."""
    if is_distributed(cfg):
        summary = run_distributed(cfg, distributed_run_dir(cfg), study)
        if not cfg["report"]:
            return summary
        run_dir = Path(cfg["run_dir"])
    else:
        run_dir = study_run_dir(cfg, study.__spec__.name.rpartition(".")[2])
        summary = run_whole({**cfg, "run_dir": str(run_dir)}, run_dir)
    print((run_dir / "report.md").read_text())
    outputs = "tuning.json, report.md" if summary and summary.get("tune_only") else f"summary.json, report.md, {plot}"
    print(f"outputs: {run_dir}/{outputs}")
    return summary


def distributed_run_dir(cfg: dict) -> Path:
    if not cfg["run_dir"]:
        raise UserError("--sweep, --job and --report need --run-dir: the study's folder, which every machine sees")
    return Path(cfg["run_dir"])


def pinned_config(cfg: dict, run_dir: Path, check: Callable[[dict], object]) -> dict:
    """The study's config as its first `--sweep` stored it in RUN/study.yaml (stored now if this is that call):
    every later call and every agent's job use it, whatever else their command line says."""
    path = run_dir / STUDY_FILE
    if path.is_file():
        stored = yaml.safe_load(path.read_text())
        return {**stored, **{key: cfg[key] for key in ACTIONS}}
    if not cfg["sweep"]:
        raise UserError(f"{path} does not exist: start the study with --sweep FILE (or run it on one machine)")
    if run_dir.exists() and any(run_dir.iterdir()):
        raise UserError(f"{run_dir} is not empty and has no {STUDY_FILE}; choose another --run-dir")
    check(cfg)  # before anything is written
    pinned = {**{k: v for k, v in cfg.items() if k not in ACTIONS}, "group": cfg["group"] or run_dir.name}
    if pinned.get("data") and Path(pinned["data"]).is_dir():  # agents may start in another working directory
        pinned["data"] = str(Path(pinned["data"]).resolve())
    atomic_write(path, yaml.safe_dump(pinned, sort_keys=False).encode())
    return {**pinned, **{key: cfg[key] for key in ACTIONS}}


def finished_rows(jobs: list[Job]) -> tuple[dict[Path, dict], list[Path]]:
    """(final metrics row of every finished job by run directory, the run directories not finished yet)."""
    rows, missing = {}, []
    for path, _ in jobs:
        done = path / "done.json"
        if done.is_file():
            rows[path] = json.loads(done.read_text())
        else:
            missing.append(path)
    return rows, missing


def job_name(run_dir: Path, path: Path) -> str:
    return path.relative_to(run_dir).as_posix()


def write_sweep_file(out: Path, program: str, run_dir: Path, group: str, stage: str, jobs: list[Job]) -> None:
    """A W&B grid sweep whose runs are `jobs`, for `wandb sweep` (or metaopt.sweep offline)."""
    spec = {"name": f"{group}-{stage}", "program": program, "method": "grid",
            "description": f"the {stage} runs of the study in {run_dir.resolve()}",
            "parameters": {"run_dir": {"value": str(run_dir.resolve())},
                           "job": {"values": [job_name(run_dir, path) for path, _ in jobs]}},
            "command": ["${env}", "${interpreter}", "-m", "${program}", "${args}"]}
    check_sweep(spec, str(out))
    atomic_write(out, yaml.safe_dump(spec, sort_keys=False).encode())


def run_distributed(cfg: dict, run_dir: Path, study: ModuleType):
    """`--sweep FILE`, `--job NAME` or `--report` for a study module, which provides `check_config(cfg)`,
    `tuning_jobs(cfg, run_dir)` and `reported_jobs(cfg, run_dir, tuning rows)` (its runs), `report(cfg, run_dir,
    tuning rows)` (writes its outputs, returns the summary) and `run_one(run_dir, codec config, group)`."""
    program = study.__spec__.name  # `python -m studies.compare` runs it as __main__; the sweep needs its real name
    cfg = pinned_config(cfg, run_dir, study.check_config)
    tuning = study.tuning_jobs(cfg, run_dir)
    tuning_rows, tuning_left = finished_rows(tuning)
    reported = [] if tuning_left else study.reported_jobs(cfg, run_dir, tuning_rows)
    if cfg["job"]:
        jobs = {job_name(run_dir, path): (path, job) for path, job in tuning + reported}
        if cfg["job"] not in jobs:
            waiting = " (the reported runs exist once every tuning run is finished)" if tuning_left else ""
            raise UserError(f"no job {cfg['job']!r} in the study in {run_dir}{waiting}")
        path, job = jobs[cfg["job"]]
        return study.run_one(path, job, cfg["group"])
    if cfg["sweep"]:
        stage, jobs = ("tuning", tuning) if tuning_left else ("reported", reported)
        write_sweep_file(Path(cfg["sweep"]), program, run_dir, cfg["group"], stage, jobs)
        left = len(tuning_left) if tuning_left else len(finished_rows(reported)[1])
        print(f"wrote {cfg['sweep']}: the {len(jobs)} {stage} runs ({left} not finished). Next: wandb sweep "
              f"{cfg['sweep']}, then `wandb agent ID` on each machine"
              + ("; when they are done, --sweep again for the reported runs" if stage == "tuning" else
                 f"; when they are done, python -m {program} --run-dir {run_dir} --report"))
        return None
    reported_left = finished_rows(reported)[1]
    if tuning_left or reported_left:
        left = tuning_left or reported_left
        raise UserError(f"{len(left)} {'tuning' if tuning_left else 'reported'} runs are not finished yet "
                        f"(e.g. {job_name(run_dir, left[0])}); run their sweep first")
    return study.report(cfg, run_dir, tuning_rows)
