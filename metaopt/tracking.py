"""The one logging path: `RUN_DIR/metrics.jsonl` (source of truth) mirrored to Weights & Biases.

W&B runs offline by default (written under `RUN_DIR/wandb/`, uploadable later with `wandb sync`), honours
`WANDB_MODE=online|offline|disabled`, and is never allowed to kill a run: any W&B failure prints one
warning and the run continues with local metrics only.
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

from metaopt.config import save_yaml

PROJECT = os.environ.get("WANDB_PROJECT", "metaopt-codec")


def _jsonable(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/inf; keep them visible rather than dropping the row
    return v


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
        mode = os.environ.get("WANDB_MODE", "offline")
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
                self.wandb.log({k: v for k, v in row.items() if k != "step"}, step=step)
            except Exception as e:  # noqa: BLE001
                self._warn("log", e)
        return row

    def summary(self, values: dict[str, Any]) -> None:
        if self.wandb is not None:
            try:
                self.wandb.summary.update({k: _jsonable(v) for k, v in values.items()})
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

    def finish(self) -> None:
        self._file.close()
        if self.wandb is not None:
            try:
                self.wandb.finish()
            except Exception as e:  # noqa: BLE001
                self._warn("finish", e)
