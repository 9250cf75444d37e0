"""The one logging path: `RUN_DIR/metrics.jsonl` (source of truth) mirrored to Weights & Biases.

W&B runs offline by default (written under `RUN_DIR/wandb/`, uploadable later with `wandb sync`), honours
`WANDB_MODE=online|offline|disabled`, and is never allowed to kill a run: any W&B failure prints one
warning and the run continues with local metrics only. A run started by `wandb agent` (which sets
WANDB_SWEEP_ID) has no offline default: it reports to the agent's server unless WANDB_MODE says otherwise.

Every chart's x axis is our `step` (`define_metric`), and the run summary keeps the best value of the
metrics in SUMMARIES rather than the last one, so run tables and sweeps rank runs by it.
"""
from __future__ import annotations

import json
import math
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any

from metaopt.checkpoint import file_sha256
from metaopt.config import save_yaml

PROJECT = os.environ.get("WANDB_PROJECT", "metaopt-codec")
SUMMARIES = {"val_loss": "min", "val_psnr": "max", "val_ms_ssim": "max", "val_score": "min"}


def _jsonable(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/inf; keep them visible rather than dropping the row
    return v


def summary_value(rows: list[dict], name: str):
    """What the W&B summary holds for `name` after these rows: the best (SUMMARIES) or the last value."""
    values = [r[name] for r in rows if isinstance(r.get(name), (int, float))]
    if not values:
        return None
    rule = SUMMARIES.get(name)
    return min(values) if rule == "min" else max(values) if rule == "max" else values[-1]


def read_metrics(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a torn last line from a kill: everything before it is valid
    return rows


class Run:
    """A run directory with config.yaml + metrics.jsonl, mirrored to a W&B run.

    `resume_step`: when resuming from a checkpoint taken at that step, rows logged after it (by the killed
    process) are dropped, so the resumed run's metrics file equals an uninterrupted run's.
    """

    def __init__(self, run_dir: str | Path, config: dict, job_type: str, group: str | None = None,
                 tags: list[str] | tuple = (), name: str | None = None, resume_step: int | None = None):
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        save_yaml(config, self.dir / "config.yaml")
        self.metrics_path = self.dir / "metrics.jsonl"
        if resume_step is None:
            self.metrics_path.write_text("")
        else:
            kept = [r for r in read_metrics(self.metrics_path) if r.get("step", 0) <= resume_step]
            self.metrics_path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        self._file = open(self.metrics_path, "a")
        self.start = time.time()
        self.wandb = None
        self._init_wandb(config, job_type, group, list(tags), name or self.dir.name, resume_step is not None)

    # -- W&B mirror -------------------------------------------------------------------------------------
    def _warn(self, what: str, e: BaseException) -> None:
        print(f"warning: W&B {what} failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
              f"continuing with local metrics in {self.metrics_path}", file=sys.stderr)
        self.wandb = None

    def _init_wandb(self, config, job_type, group, tags, name, resume) -> None:
        under_agent = bool(os.environ.get("WANDB_SWEEP_ID"))
        mode = os.environ.get("WANDB_MODE") or (None if under_agent else "offline")
        if mode == "disabled":
            return
        id_file = self.dir / "wandb_id"
        try:
            os.environ.setdefault("WANDB_SILENT", "true")
            import wandb  # lazy: importing wandb costs ~1 s and is not needed when disabled

            if os.environ.get("WANDB_RUN_ID"):  # under `wandb agent` the sweep decides the run id
                run_id = os.environ["WANDB_RUN_ID"]
            elif resume and id_file.is_file():
                run_id = id_file.read_text().strip()
            else:
                run_id = secrets.token_hex(6)
            id_file.write_text(run_id)
            self.wandb = wandb.init(project=PROJECT, dir=str(self.dir), id=run_id, resume="allow", mode=mode,
                                    config=config, job_type=job_type, group=group, tags=tags, name=name,
                                    settings=wandb.Settings(init_timeout=float(os.environ.get("WANDB_INIT_TIMEOUT", 60)),
                                                            console="off"))
            self.wandb.define_metric("step")
            self.wandb.define_metric("*", step_metric="step")
            for metric, summary in SUMMARIES.items():
                self.wandb.define_metric(metric, step_metric="step", summary=summary)
            if self.wandb.url:  # online only (WANDB_SILENT keeps wandb's own banner quiet)
                print(f"W&B run: {self.wandb.url}", file=sys.stderr)
        except Exception as e:  # noqa: BLE001 - bad key, no network, full disk: never fatal
            self._warn("init", e)

    # -- logging ---------------------------------------------------------------------------------------
    def log(self, metrics: dict[str, Any], step: int) -> dict:
        row = {"step": step, **{k: _jsonable(v) for k, v in metrics.items()}}
        row.setdefault("wall_time", round(time.time() - self.start, 4))
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self.wandb is not None:
            try:
                # `step` is a logged value (the x axis), not wandb's own step: a resumed run re-logs the steps
                # after its checkpoint, which wandb's monotonic step would drop.
                self.wandb.log(row)
            except Exception as e:  # noqa: BLE001
                self._warn("log", e)
        return row

    def summary(self, values: dict[str, Any]) -> None:
        """Final values for the W&B summary; metrics in SUMMARIES keep their best value, not these."""
        if self.wandb is not None:
            try:
                self.wandb.summary.update({k: _jsonable(v) for k, v in values.items() if k not in SUMMARIES})
            except Exception as e:  # noqa: BLE001
                self._warn("summary", e)

    def log_files(self, images: dict[str, str | Path] = (), tables: dict[str, tuple[list, list]] = ()) -> None:
        """Log PNG plots (`name -> path`) and tables (`name -> (columns, rows)`) to W&B."""
        if self.wandb is None:
            return
        try:
            import wandb

            payload = {k: wandb.Image(str(p)) for k, p in dict(images).items()}
            payload.update({k: wandb.Table(columns=c, data=r) for k, (c, r) in dict(tables).items()})
            self.wandb.log(payload)
        except Exception as e:  # noqa: BLE001
            self._warn("file logging", e)

    def log_artifact(self, path: str | Path, type: str, name: str | None = None) -> str:
        """Log a file as a W&B artifact (`type` e.g. "codec" or "learned-optimizer"; `name` defaults to
        `<type>-<run id>`) with its sha256 in the metadata. Returns the sha256, also when W&B is off."""
        digest = file_sha256(path)
        if self.wandb is not None:
            try:
                import wandb

                artifact = wandb.Artifact(name or f"{type}-{self.wandb.id}", type=type,
                                          metadata={"sha256": digest, "file": Path(path).name})
                artifact.add_file(str(path))
                self.wandb.log_artifact(artifact)
            except Exception as e:  # noqa: BLE001
                self._warn("artifact logging", e)
        return digest

    def finish(self) -> None:
        self._file.close()
        if self.wandb is not None:
            try:
                self.wandb.finish()
            except Exception as e:  # noqa: BLE001
                self._warn("finish", e)
