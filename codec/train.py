"""Train a learned image codec: `python -m codec.train --optimizer adam|sgd|schedulefree|soap|lstm [--key value ...]`.

One loop for every optimizer: the optimizer under study gets the network parameters, CompressAI's
entropy-bottleneck quantiles always train on their own Adam (aux loss). Outputs in the run directory:
config.yaml, metrics.jsonl (one row per logged step; W&B mirrors it), checkpoint.pt (latest, atomic),
best.pt (best validation loss; a W&B artifact of type "codec" at the end). `--resume` continues exactly: model,
both optimizers, LR schedule, RNG and step. config.yaml and the W&B config also record under `resolved` what the
config's nulls became: the step size the optimizer used and, for the learned optimizer, its file and that file's
sha256. A wall-clock budget (`max_seconds`) and marks (`eval_every_seconds`: the held-out images entropy-coded
with the current weights, rd_* rows) serve time-to-quality studies; the marks' coding is not counted as training
time.

`train` reads top to bottom: `build_trainer`, `resume_from`, then `train_one_epoch` (the steps up to the next
logged row or checkpoint), `log_row` (with `test_epoch`, the validation), `save_checkpoint` and `log_mark`, until
the end.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Iterator

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from codec.data import CropBatches, center_crop, check_images, crop_to, list_images, load_image, pad_to_multiple
from codec.losses import RateDistortionLoss, coded_rd_loss, ms_ssim_any_size, psnr
from codec.models import (MODELS, PAD_MULTIPLE, build_model, latent_stride, load_model, resolve_device,
                          split_parameters)
from metaopt import checkpoint as ckpt_io
from metaopt.config import RESOLVED, parse_config
from metaopt.errors import UserError, cli_entry
from metaopt.guard import SpikeGuard
from metaopt.optim import PRETRAINED
from metaopt.optimizers import LRSchedule, check_optimizer_config, evaluation_point, make_optimizer
from metaopt.tracking import Run
from metaopt.training import aux_step, backward, clip_gradients

CHECKPOINT_FORMAT = "codec-train-v1"
def check_config(cfg: dict) -> None:
    if cfg["model"] not in MODELS:
        raise UserError(f"unknown model {cfg['model']!r}; choose one of: {', '.join(MODELS)}")
    for key in ("val_crop", "threads", "workers", "stop_after_nonfinite", "spike_guard", "max_seconds",
                "eval_every_seconds"):
        if cfg[key] < 0:
            raise UserError(f"{key} must be >= 0, got {cfg[key]}")
    for key in ("steps", "batch_size", "crop", "N", "M", "val_every", "log_every", "checkpoint_every",
                "spike_snapshot_every"):
        if cfg[key] <= 0:
            raise UserError(f"{key} must be positive, got {cfg[key]}")
    multiple = latent_stride(cfg["model"])
    if cfg["crop"] % multiple:
        raise UserError(f"crop must be a multiple of {multiple} for {cfg['model']}, got {cfg['crop']}")
    check_optimizer_config(cfg["optimizer"], cfg)  # name, lr, schedule, warmup, packages, the LSTM's file
    if not cfg["aux_lr"] > 0:
        raise UserError("aux_lr must be positive")
    if 0 < cfg["spike_guard"] <= 1:
        raise UserError(f"spike_guard must be 0 (off) or a factor > 1, got {cfg['spike_guard']}")


def default_run_dir(cfg: dict) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / "codec-train" / f"{stamp}-{cfg['model']}-{cfg['optimizer']}-s{cfg['seed']}"


@dataclass
class Trainer:
    """What a run trains with: the model, the optimizer under study, the aux optimizer, the loss and the guard."""
    cfg: dict
    device: torch.device
    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    aux_optimizer: torch.optim.Optimizer
    loss_fn: RateDistortionLoss
    guard: SpikeGuard | None


WINDOW_MEANS = ("loss", "bpp", "mse", "step_time", "opt_step_time")


def empty_window() -> dict:
    return {**{name: 0.0 for name in WINDOW_MEANS}, "n": 0}


@dataclass
class TrainState:
    """A run's progress; everything but `started` is in the checkpoint, so a resume continues exactly.

    loss/bpp/mse and the step times are logged as means over the updated steps since the previous row (smoother
    curves, no cherry-picked single batch; an optimizer whose dear steps recur with the logging period, such as a
    basis refresh every 10th step, would otherwise log only those or none of them): `window` holds their partial sums.
    """
    step: int = 0
    best_val: float = math.inf
    elapsed: float = 0.0  # wall seconds of the run's earlier sessions
    skipped: int = 0  # steps whose update was skipped for a non-finite loss
    streak: int = 0  # ... of them in a row, up to now
    window: dict = field(default_factory=empty_window)
    marks: int = 0  # wall-clock marks evaluated so far
    started: float = field(default_factory=time.time)  # when this session started training (moved on by evaluations
                                                        # that are not training time)

    def wall_time(self) -> float:
        return self.elapsed + time.time() - self.started


def build_trainer(cfg: dict, device: torch.device) -> Trainer:
    model = build_model(cfg["model"], cfg["N"], cfg["M"]).to(device)
    net_params, aux_params = split_parameters(model)
    optimizer = make_optimizer(cfg["optimizer"], net_params, cfg)
    schedule = LRSchedule(optimizer, cfg)  # before a resume loads a warmed-up lr into the optimizer
    if cfg["optimizer"] == "lstm" and cfg["lopt_compile"]:
        print("note: the learned optimizer's step compiles at the first step (once per run, ~0.5 min)", file=sys.stderr)
    aux_optimizer = torch.optim.Adam(aux_params, lr=cfg["aux_lr"])
    loss_fn = RateDistortionLoss(cfg["lmbda"], cfg["distortion"])
    guard = SpikeGuard({"model": model, "optimizer": optimizer, "aux_optimizer": aux_optimizer}, cfg["spike_guard"],
                       every=cfg["spike_snapshot_every"]) if cfg["spike_guard"] else None
    return Trainer(cfg, device, model, optimizer, schedule, aux_optimizer, loss_fn, guard)


def checked_run_dir(run_dir: Path, resume: bool) -> Path:
    """The run's latest-checkpoint path, once starting (or resuming) in `run_dir` is known to make sense."""
    latest = run_dir / "checkpoint.pt"
    if latest.exists() and not resume:
        raise UserError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --run-dir")
    if resume and not latest.exists():
        raise UserError(f"nothing to resume: {latest} does not exist")
    if run_dir.is_dir():
        ckpt_io.remove_stale_temporaries(run_dir)
    return latest


def resume_from(path: Path, trainer: Trainer) -> TrainState:
    """Load a `checkpoint.pt` into the trainer (model, both optimizers, LR schedule, guard) and the global RNG."""
    ckpt, cfg = ckpt_io.load(path), trainer.cfg
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path} is not a codec training checkpoint")
    for key in ("model", "N", "M", "optimizer", "distortion", "lmbda", "batch_size", "crop", "seed"):
        if ckpt["config"][key] != cfg[key]:
            raise UserError(f"cannot resume: {key} was {ckpt['config'][key]!r}, now {cfg[key]!r}")
    trainer.model.load_state_dict(ckpt["model"])
    trainer.optimizer.load_state_dict(ckpt["optimizer"])
    trainer.schedule.load_state_dict(ckpt.get("lr_schedule", {}))
    trainer.aux_optimizer.load_state_dict(ckpt["aux_optimizer"])
    ckpt_io.set_rng_state(ckpt["rng"])
    if trainer.guard is not None and "spike_guard" in ckpt:
        trainer.guard.load_state_dict(ckpt["spike_guard"])
    window = {**empty_window(), **ckpt["window"]}  # checkpoints from before the window held the step times
    return TrainState(step=ckpt["step"], best_val=ckpt["best_val"], elapsed=ckpt["elapsed"],
                      skipped=ckpt["skipped_steps"], streak=ckpt.get("nonfinite_streak", 0), window=window,
                      marks=ckpt.get("marks", 0))


def init_weights(path: Path, trainer: Trainer) -> None:
    """Start from a trained codec's weights (`init_from`); the optimizers and the step start afresh."""
    model, meta = load_model(path)
    wanted = {"model_name": trainer.cfg["model"], "N": trainer.cfg["N"], "M": trainer.cfg["M"]}
    found = {"model_name": meta["model_name"], **meta["model_config"]}
    if found != wanted:
        raise UserError(f"init_from {path} holds {found}, this run trains {wanted}")
    trainer.model.load_state_dict(model.state_dict())


def save_checkpoint(path: Path, trainer: Trainer, state: TrainState, with_state: bool) -> None:
    """`checkpoint.pt` (with_state: also what a resume needs: optimizers, LR schedule, RNG, guard; the training
    point) or `best.pt` (saved inside `evaluation_point`: the weights to use, a schedule-free optimizer's average)."""
    cfg = trainer.cfg
    ckpt = {"format": CHECKPOINT_FORMAT, "model_name": cfg["model"], "model_config": {"N": cfg["N"], "M": cfg["M"]},
            "model": trainer.model.state_dict(), "step": state.step, "config": cfg, "best_val": state.best_val,
            "elapsed": state.wall_time(), "skipped_steps": state.skipped, "nonfinite_streak": state.streak,
            "window": dict(state.window)}
    if with_state:
        ckpt.update(optimizer=trainer.optimizer.state_dict(), aux_optimizer=trainer.aux_optimizer.state_dict(),
                    lr_schedule=trainer.schedule.state_dict(), rng=ckpt_io.rng_state(), marks=state.marks)
        if trainer.guard is not None:
            ckpt["spike_guard"] = trainer.guard.state_dict()
    ckpt_io.atomic_save(ckpt, path)


def apply_update(trainer: Trainer, step: int) -> float:
    """Clip, set the scheduled step size and update the network; returns the seconds of the update alone."""
    cfg, optimizer = trainer.cfg, trainer.optimizer
    clip_gradients(optimizer, cfg["grad_clip"])
    if trainer.schedule.active:
        trainer.schedule.set_lr(step)
    start = time.perf_counter()
    optimizer.step()
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def train_one_step(trainer: Trainer, state: TrainState, x: torch.Tensor) -> dict:
    """The plain training step of `metaopt.training`, except that a loss spike (with the guard on) rolls back and
    a non-finite loss skips the network update; returns the step's aux loss (its timings go to the window)."""
    start, guard, model = time.perf_counter(), trainer.guard, trainer.model
    terms = backward(trainer.optimizer, lambda: trainer.loss_fn(model(x), x))
    loss_value = float(terms["loss"].detach()) if guard is not None else None  # a host sync, as is the check below
    updated = False
    if guard is not None and guard.is_spike(loss_value):
        restored = guard.rollback()  # back to a state from before the spike; this batch's update is dropped
        tqdm.write(f"step {state.step + 1}: loss {loss_value:.4g} is a spike (median of the last {len(guard.losses)}: "
                   f"{guard.median:.4g}); " + ("no snapshot yet, update skipped" if restored is None else
                                               f"rolled back to step {restored}"), file=sys.stderr)
        trainer.optimizer.zero_grad(set_to_none=True)
    elif not torch.isfinite(terms["loss"]):
        state.skipped += 1  # a non-finite loss would poison both optimizers' states: skip the update
        state.streak += 1
        trainer.optimizer.zero_grad(set_to_none=True)
    else:
        state.streak = 0
        state.window["opt_step_time"] += apply_update(trainer, state.step)
        for name in ("loss", "bpp", "mse"):
            state.window[name] += terms[name].detach()  # no .item() per step: that would sync the GPU
        state.window["n"] += 1
        updated = True
        if guard is not None:
            guard.record(loss_value, state.step + 1)
    aux_loss = aux_step(trainer.aux_optimizer, model.aux_loss)
    state.step += 1
    if updated:
        state.window["step_time"] += time.perf_counter() - start
    return {"aux_loss": aux_loss}


def diverged(trainer: Trainer, state: TrainState) -> str | None:
    """Why the run has diverged for good (its every step is skipped or rolled back), or None: such a run stops
    instead of burning compute until the last step."""
    limit = trainer.cfg["stop_after_nonfinite"]
    if trainer.guard is not None and trainer.guard.gave_up:
        return f"{trainer.guard.consecutive} loss-spike rollbacks in a row"
    if limit and state.streak >= limit:
        return f"{state.streak} consecutive non-finite losses"
    return None


def is_row_step(cfg: dict, step: int) -> bool:
    return step % cfg["log_every"] == 0 or step % cfg["val_every"] == 0 or step == cfg["steps"]


def is_checkpoint_step(cfg: dict, step: int) -> bool:
    return step % cfg["checkpoint_every"] == 0 or step == cfg["steps"]


def out_of_time(cfg: dict, state: TrainState) -> bool:
    return bool(cfg["max_seconds"]) and state.wall_time() >= cfg["max_seconds"]


def is_mark_due(cfg: dict, state: TrainState) -> bool:
    return bool(cfg["eval_every_seconds"]) and state.wall_time() >= (state.marks + 1) * cfg["eval_every_seconds"]


def train_one_epoch(trainer: Trainer, state: TrainState, batches: Iterator[torch.Tensor]) -> dict:
    """Train on `batches` up to the next step that logs a row, saves a checkpoint or is due for a mark, or until
    the run diverges or runs out of time; returns the last step's figures."""
    cfg = trainer.cfg
    while True:
        figures = train_one_step(trainer, state, next(batches).to(trainer.device, non_blocking=True))
        if (diverged(trainer, state) or is_row_step(cfg, state.step) or is_checkpoint_step(cfg, state.step)
                or is_mark_due(cfg, state) or out_of_time(cfg, state)):
            return figures


def validation_images(paths: list[Path], val_crop: int) -> list[torch.Tensor]:
    images = [load_image(p) for p in paths]
    return [center_crop(x, val_crop) for x in images] if val_crop else images


@torch.no_grad()
def test_epoch(model, loss_fn, images: list[torch.Tensor], device) -> dict[str, float]:
    """Mean RD loss, bpp (from likelihoods), PSNR and MS-SSIM on the validation images."""
    model.eval()
    totals = {"val_loss": 0.0, "val_bpp": 0.0, "val_psnr": 0.0, "val_ms_ssim": 0.0}
    for image in images:
        x = image[None].to(device)
        padded, size = pad_to_multiple(x, PAD_MULTIPLE)
        out = model(padded)
        out = {"x_hat": crop_to(out["x_hat"], size).clamp(0, 1), "likelihoods": out["likelihoods"]}
        terms = loss_fn(out, x)
        totals["val_loss"] += float(terms["loss"])
        totals["val_bpp"] += float(terms["bpp"])
        totals["val_psnr"] += float(psnr(terms["mse"]))
        totals["val_ms_ssim"] += float(ms_ssim_any_size(out["x_hat"], x).mean())
    model.train()
    return {k: v / len(images) for k, v in totals.items()}


def coded_images(cfg: dict) -> list[Path]:
    """The images real-bitstream evaluations code (full size): the test split of `eval_data` (default: `data`)."""
    return list_images(cfg["eval_data"] or cfg["data"], "test")


def entropy_coded_metrics(cfg: dict, model: nn.Module, images: list) -> dict[str, float]:
    """Real bitstreams of `images` with `model`: rd_bpp, rd_psnr_rgb, ... (means) and rd_loss, the training objective
    on the decoded images."""
    from codec.eval import evaluate_checkpoint  # late import: only runs that evaluate pay for it

    result = evaluate_checkpoint(model, cfg["model"], {"N": cfg["N"], "M": cfg["M"]}, images)
    losses = [coded_rd_loss(r["bpp"], 10 ** (-r["psnr-rgb"] / 10), r["ms-ssim-rgb"], cfg["lmbda"], cfg["distortion"])
              for r in result["per_image"]]
    metrics = {f"rd_{k.replace('-', '_')}": v for k, v in result["mean"].items()
               if isinstance(v, (int, float)) and k not in ("height", "width")}
    metrics["rd_loss"] = None if None in losses else sum(losses) / len(losses)
    return metrics


def entropy_coded_eval(cfg: dict, run_dir: Path, device) -> dict[str, float]:
    """Real bitstreams of the full held-out images with the best checkpoint: the run's RD point."""
    model, _ = load_model(run_dir / "best.pt", device)
    return entropy_coded_metrics(cfg, model, coded_images(cfg))


def log_mark(trainer: Trainer, state: TrainState, images: list[torch.Tensor], run: Run) -> None:
    """A wall-clock mark: the held-out images coded with the current weights (a schedule-free optimizer's average),
    logged with the training seconds so far. The coding is not training time, and leaves the run as it was."""
    start = time.time()
    state.marks += 1
    row = {"mark": state.marks * trainer.cfg["eval_every_seconds"], "wall_time": state.wall_time()}
    with evaluation_point(trainer.optimizer, trainer.model.parameters()):
        row.update(entropy_coded_metrics(trainer.cfg, trainer.model, images))
    run.log(row, state.step)
    state.started += time.time() - start


def metrics_row(trainer: Trainer, state: TrainState, figures: dict, stopped: bool) -> dict:
    """The row of the steps since the previous row (validation is added by `log_row`)."""
    window = state.window
    row = {name: float(window[name]) / window["n"] if window["n"] else float("nan") for name in WINDOW_MEANS}
    row.update(psnr=psnr(row["mse"]), aux_loss=float(figures["aux_loss"].detach()),
               lr=trainer.optimizer.param_groups[0]["lr"],
               skipped_steps=state.skipped + getattr(trainer.optimizer, "skipped_updates", 0),
               wall_time=state.wall_time())
    if trainer.guard is not None:
        row["rollbacks"] = trainer.guard.rollbacks
    if stopped:
        row["stopped_diverged"] = True
    return row


def log_row(trainer: Trainer, state: TrainState, row: dict, run_dir: Path, val_images: list[torch.Tensor],
            run: Run, last: bool) -> None:
    """Validate when due or at the `last` row (keeping `best.pt`, stepping a plateau schedule), evaluate real
    bitstreams at the end, log the row, open a new window."""
    cfg = trainer.cfg
    if state.step % cfg["val_every"] == 0 or last:
        with evaluation_point(trainer.optimizer, trainer.model.parameters()):
            row.update(test_epoch(trainer.model, trainer.loss_fn, val_images, trainer.device))
            if row["val_loss"] < state.best_val:
                state.best_val = row["val_loss"]
                save_checkpoint(run_dir / "best.pt", trainer, state, with_state=False)
        trainer.schedule.validated(row["val_loss"])
    if last and cfg["eval_at_end"]:
        row.update(entropy_coded_eval(cfg, run_dir, trainer.device))
    run.log(row, state.step)
    state.window = empty_window()


def resolved_settings(trainer: Trainer) -> dict:
    """What the config's nulls became in this run: the step size the optimizer under study uses (`lr: null` = its
    default) and, for the learned optimizer, the file it loaded (`lopt: null` = the shipped one), its sha256, its
    fan-in rule's max_fan_in and the basis it ran in (metaopt.optim)."""
    cfg = trainer.cfg
    resolved = {"lr": trainer.schedule.initial_lrs[0]}
    if cfg["optimizer"] == "lstm":
        lopt = Path(cfg["lopt"] or PRETRAINED).resolve()
        resolved.update(lopt=str(lopt), lopt_sha256=ckpt_io.file_sha256(lopt),
                        lopt_max_fan_in=trainer.optimizer.blob.get("max_fan_in"),  # the fan-in rule, None = off
                        lopt_basis=trainer.optimizer.basis)
    if cfg["init_from"] and Path(cfg["init_from"]).is_file():  # a resume does not need the file any more
        resolved["init_from_sha256"] = ckpt_io.file_sha256(Path(cfg["init_from"]))
    return resolved


def train(cfg: dict, run_dir: Path, group: str | None = None, show_progress: bool = True) -> dict:
    """Run (or resume) one training run; returns the final metrics row."""
    check_config(cfg)
    train_paths, val_paths = list_images(cfg["data"], "train"), list_images(cfg["data"], "test")
    check_images(train_paths + val_paths)  # a bad file is named now, not when a batch first draws it hours later
    device = resolve_device(cfg["device"])
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    latest = checked_run_dir(run_dir, cfg["resume"])
    ckpt_io.seed_everything(cfg["seed"])
    trainer = build_trainer(cfg, device)
    batches = CropBatches(train_paths, cfg["crop"], cfg["batch_size"], cfg["seed"])
    val_images = validation_images(val_paths, cfg["val_crop"])
    mark_images = [load_image(p) for p in coded_images(cfg)] if cfg["eval_every_seconds"] else []
    if cfg["init_from"] and not cfg["resume"]:
        init_weights(Path(cfg["init_from"]), trainer)
    state = resume_from(latest, trainer) if cfg["resume"] else TrainState()
    run = Run(run_dir, {**cfg, RESOLVED: resolved_settings(trainer)}, job_type="codec-train",
              group=group or cfg["group"], tags=[cfg["optimizer"], *cfg["tags"]],
              resume_step=state.step if cfg["resume"] else None)
    # Batches depend only on (seed, step); the loader gets its own generator so that creating it does not
    # draw from the global RNG (which drives the quantization noise and must resume exactly).
    loader = DataLoader(batches, batch_size=None, sampler=range(state.step, cfg["steps"]), num_workers=cfg["workers"],
                        generator=torch.Generator())
    state.started = time.time()  # W&B's set-up is not training time
    if trainer.guard is not None and not cfg["resume"]:
        trainer.guard.snapshot(0)  # Adam at a too-large LR can blow up in its first steps: a state to return to
    trainer.model.train()
    bar = tqdm(loader, total=cfg["steps"], initial=state.step, disable=not show_progress, desc="train",
               dynamic_ncols=True)
    stream, row = iter(bar), {}
    finished = state.step >= cfg["steps"] or out_of_time(cfg, state)
    while not finished:
        figures = train_one_epoch(trainer, state, stream)
        why_stop = diverged(trainer, state)
        last = state.step == cfg["steps"] or out_of_time(cfg, state)  # decided once: the row's validation takes time
        finished = last or bool(why_stop)
        if why_stop or last or is_row_step(cfg, state.step):
            row = metrics_row(trainer, state, figures, stopped=bool(why_stop))
            log_row(trainer, state, row, run_dir, val_images, run, last)
            bar.set_postfix(loss=f"{row['loss']:.4f}", bpp=f"{row['bpp']:.3f}", psnr=f"{row['psnr']:.2f}")
        while not why_stop and is_mark_due(cfg, state):  # before the checkpoint, which counts the marks done
            log_mark(trainer, state, mark_images, run)
        if why_stop or last or is_checkpoint_step(cfg, state.step):
            save_checkpoint(latest, trainer, state, with_state=True)
        if why_stop:
            print(f"warning: stopped at step {state.step}: {why_stop} (the run diverged)", file=sys.stderr)
    bar.close()
    run.summary({**row, "best_val_loss": state.best_val})
    if (run_dir / "best.pt").is_file():
        run.log_artifact(run_dir / "best.pt", "codec")
    run.finish()
    return row


DESCRIPTION = ("Train a learned image codec (Ballé 2017/2018, deepened variants) with Adam, SGD, schedule-free "
               "AdamW, SOAP or the learned LSTM optimizer.")


def config_from_argv(argv=None) -> dict:
    """Parse and validate a codec.train command line (also used by the offline sweep runner)."""
    cfg = parse_config(argv, "codec/default.yaml", DESCRIPTION)
    check_config(cfg)
    return cfg


def default_config(**overrides) -> dict:
    """The default codec.train config with `overrides` applied (for programmatic callers)."""
    cfg = {**parse_config([], "codec/default.yaml", DESCRIPTION), **overrides}
    check_config(cfg)
    return cfg


@cli_entry
def main(argv=None):
    cfg = config_from_argv(argv)
    run_dir = Path(cfg["run_dir"]) if cfg["run_dir"] else None
    if run_dir is None:
        if cfg["resume"]:
            raise UserError("--resume needs --run-dir (the run to continue)")
        run_dir = default_run_dir(cfg)
    cfg["run_dir"] = str(run_dir)
    row = train(cfg, run_dir)
    print(f"done: {run_dir}  " + "  ".join(f"{k}={row[k]:.4g}" for k in ("loss", "bpp", "psnr", "val_loss",
                                                                       "val_bpp", "val_psnr") if k in row))


if __name__ == "__main__":
    main()
