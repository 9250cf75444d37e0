"""Train a learned image codec: `python -m codec.train --optimizer adam|sgd|lstm [--key value ...]`.

One loop for every optimizer: the optimizer under study gets the network parameters, CompressAI's
entropy-bottleneck quantiles always train on their own Adam (aux loss). Outputs in the run directory:
config.yaml, metrics.jsonl (one row per logged step; W&B mirrors it), checkpoint.pt (latest, atomic),
best.pt (best validation loss). `--resume` continues exactly: model, both optimizers, RNG and step.
"""
from __future__ import annotations

import math
import sys
import time
from datetime import datetime
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from codec.data import CropBatches, center_crop, crop_to, list_images, load_image, pad_to_multiple
from codec.losses import RateDistortionLoss, ms_ssim_any_size, psnr
from codec.models import MODELS, PAD_MULTIPLE, build_model, load_model, resolve_device, split_parameters
from metaopt import checkpoint as ckpt_io
from metaopt.config import parse_config
from metaopt.errors import UserError, cli_entry
from metaopt.guard import SpikeGuard
from metaopt.optimizers import OPTIMIZERS, make_optimizer
from metaopt.tracking import Run
from metaopt.training import aux_step, backward, clip_gradients

CHECKPOINT_FORMAT = "codec-train-v1"
LR_SCHEDULES = ("constant", "cosine")


def lr_factor(cfg: dict, step: int) -> float:
    """The network optimizer's step-size multiplier before update `step + 1`: linear warmup, then the schedule.

    Computed from the step counter rather than kept in a stateful LR scheduler: nothing to checkpoint, and a
    guard rollback (which restores the optimizer's state, its lr included) cannot desync it.
    """
    factor = min(1.0, (step + 1) / cfg["warmup_steps"]) if cfg["warmup_steps"] else 1.0
    if cfg["lr_schedule"] == "cosine":
        factor *= 0.5 * (1 + math.cos(math.pi * step / cfg["steps"]))
    return factor


def check_config(cfg: dict) -> None:
    if cfg["model"] not in MODELS:
        raise UserError(f"unknown model {cfg['model']!r}; choose one of: {', '.join(MODELS)}")
    for key in ("steps", "val_every", "log_every", "checkpoint_every", "val_crop", "threads", "workers",
                "stop_after_nonfinite", "spike_guard"):
        if cfg[key] < 0:
            raise UserError(f"{key} must be >= 0, got {cfg[key]}")
    for key in ("batch_size", "crop", "N", "M", "val_every", "log_every", "checkpoint_every", "spike_snapshot_every"):
        if cfg[key] <= 0:
            raise UserError(f"{key} must be positive, got {cfg[key]}")
    multiple = 64 if "hyperprior" in cfg["model"] else 16
    if cfg["crop"] % multiple:
        raise UserError(f"crop must be a multiple of {multiple} for {cfg['model']}, got {cfg['crop']}")
    if cfg["lr"] is not None and not (isinstance(cfg["lr"], (int, float)) and cfg["lr"] > 0):
        raise UserError(f"lr must be a positive number (or null for the optimizer's default), got {cfg['lr']!r}")
    if not (isinstance(cfg["warmup_steps"], int) and cfg["warmup_steps"] >= 0):
        raise UserError(f"warmup_steps must be a non-negative integer, got {cfg['warmup_steps']!r}")
    if cfg["lr_schedule"] not in LR_SCHEDULES:
        raise UserError(f"unknown lr_schedule {cfg['lr_schedule']!r}; choose one of: {', '.join(LR_SCHEDULES)}")
    if not cfg["aux_lr"] > 0:
        raise UserError("aux_lr must be positive")
    if 0 < cfg["spike_guard"] <= 1:
        raise UserError(f"spike_guard must be 0 (off) or a factor > 1, got {cfg['spike_guard']}")


def default_run_dir(cfg: dict) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / "codec-train" / f"{stamp}-{cfg['model']}-{cfg['optimizer']}-s{cfg['seed']}"


@torch.no_grad()
def validate(model, loss_fn, images: list[torch.Tensor], device) -> dict[str, float]:
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


def entropy_coded_eval(cfg: dict, run_dir: Path, device) -> dict[str, float]:
    """Real bitstreams of the full validation images with the best checkpoint: the run's RD point."""
    from codec.eval import evaluate_checkpoint  # late import: only runs that evaluate pay for it

    model, meta = load_model(run_dir / "best.pt", device)
    result = evaluate_checkpoint(model, meta["model_name"], meta["model_config"], list_images(cfg["data"], "test"))
    return {f"rd_{k.replace('-', '_')}": v for k, v in result["mean"].items()
            if isinstance(v, (int, float)) and k not in ("height", "width")}


def _checkpoint(cfg, model, step, **extra) -> dict:
    return {"format": CHECKPOINT_FORMAT, "model_name": cfg["model"], "model_config": {"N": cfg["N"], "M": cfg["M"]},
            "model": model.state_dict(), "step": step, "config": cfg, **extra}


def train(cfg: dict, run_dir: Path, group: str | None = None, show_progress: bool = True) -> dict:
    """Run (or resume) one training run; returns the final metrics row."""
    check_config(cfg)
    device = resolve_device(cfg["device"])
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    latest = run_dir / "checkpoint.pt"
    if latest.exists() and not cfg["resume"]:
        raise UserError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --run-dir")
    if cfg["resume"] and not latest.exists():
        raise UserError(f"nothing to resume: {latest} does not exist")

    if run_dir.is_dir():
        ckpt_io.remove_stale_temporaries(run_dir)
    ckpt_io.seed_everything(cfg["seed"])
    model = build_model(cfg["model"], cfg["N"], cfg["M"]).to(device)
    net_params, aux_params = split_parameters(model)
    optimizer = make_optimizer(cfg["optimizer"], net_params, cfg)
    base_lrs = [group["lr"] for group in optimizer.param_groups]  # before a resume restores a warmed-up one
    if cfg["optimizer"] == "lstm" and cfg["lopt_compile"]:
        print("note: the learned optimizer's step compiles at the first step (once per run, ~0.5 min)", file=sys.stderr)
    aux_optimizer = torch.optim.Adam(aux_params, lr=cfg["aux_lr"])
    loss_fn = RateDistortionLoss(cfg["lmbda"], cfg["distortion"])
    guard = SpikeGuard({"model": model, "optimizer": optimizer, "aux_optimizer": aux_optimizer}, cfg["spike_guard"],
                       every=cfg["spike_snapshot_every"]) if cfg["spike_guard"] else None
    batches = CropBatches(list_images(cfg["data"], "train"), cfg["crop"], cfg["batch_size"], cfg["seed"])
    val_images = [load_image(p) for p in list_images(cfg["data"], "test")]
    if cfg["val_crop"]:
        val_images = [center_crop(x, cfg["val_crop"]) for x in val_images]

    # loss/bpp/mse are logged as means over the steps since the previous row (smoother curves, no
    # cherry-picked single batch); the partial sums are part of the checkpoint so resume stays exact.
    window = {"loss": 0.0, "bpp": 0.0, "mse": 0.0, "n": 0}
    step, best_val, elapsed_before, skipped, streak = 0, math.inf, 0.0, 0, 0
    if cfg["resume"]:
        state = ckpt_io.load(latest)
        if state.get("format") != CHECKPOINT_FORMAT:
            raise UserError(f"{latest} is not a codec training checkpoint")
        for key in ("model", "N", "M", "optimizer", "distortion", "lmbda", "batch_size", "crop", "seed"):
            if state["config"][key] != cfg[key]:
                raise UserError(f"cannot resume: {key} was {state['config'][key]!r}, now {cfg[key]!r}")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        aux_optimizer.load_state_dict(state["aux_optimizer"])
        ckpt_io.set_rng_state(state["rng"])
        step, best_val = state["step"], state["best_val"]
        elapsed_before, skipped, window = state["elapsed"], state["skipped_steps"], state["window"]
        streak = state.get("nonfinite_streak", 0)
        if guard is not None and "spike_guard" in state:
            guard.load_state_dict(state["spike_guard"])

    run = Run(run_dir, cfg, job_type="codec-train", group=group or cfg["group"], tags=[cfg["optimizer"]],
              resume_step=step if cfg["resume"] else None)
    # Batches depend only on (seed, step); the loader gets its own generator so that creating it does not
    # draw from the global RNG (which drives the quantization noise and must resume exactly).
    loader = DataLoader(batches, batch_size=None, sampler=range(step, cfg["steps"]), num_workers=cfg["workers"],
                        generator=torch.Generator())
    started = time.time()
    row: dict = {}

    def save(path: Path, with_state: bool) -> None:
        extra = {"best_val": best_val, "elapsed": elapsed_before + time.time() - started, "skipped_steps": skipped,
                 "nonfinite_streak": streak, "window": dict(window)}
        if with_state:
            extra.update(optimizer=optimizer.state_dict(), aux_optimizer=aux_optimizer.state_dict(),
                         rng=ckpt_io.rng_state())
            if guard is not None:
                extra["spike_guard"] = guard.state_dict()
        ckpt_io.atomic_save(_checkpoint(cfg, model, step, **extra), path)

    if guard is not None and not cfg["resume"]:
        guard.snapshot(0)  # Adam at a too-large LR can blow up in its first steps: a state to return to
    model.train()
    progress = tqdm(loader, total=cfg["steps"], initial=step, disable=not show_progress, desc="train",
                    dynamic_ncols=True)
    for x in progress:
        x = x.to(device, non_blocking=True)
        step_start = time.perf_counter()
        terms = backward(optimizer, lambda: loss_fn(model(x), x))
        loss_value = float(terms["loss"].detach()) if guard is not None else None  # a host sync, as is the check below
        if guard is not None and guard.is_spike(loss_value):
            restored = guard.rollback()  # back to a state from before the spike; this batch's update is dropped
            tqdm.write(f"step {step + 1}: loss {loss_value:.4g} is a spike (median of the last {len(guard.losses)}: "
                       f"{guard.median:.4g}); " + ("no snapshot yet, update skipped" if restored is None else
                                                   f"rolled back to step {restored}"), file=sys.stderr)
            optimizer.zero_grad(set_to_none=True)
            opt_time = float("nan")
        elif not torch.isfinite(terms["loss"]):
            skipped += 1  # a non-finite loss would poison both optimizers' states: skip the update
            streak += 1
            optimizer.zero_grad(set_to_none=True)
            opt_time = float("nan")
        else:
            streak = 0
            clip_gradients(optimizer, cfg["grad_clip"])
            if cfg["warmup_steps"] or cfg["lr_schedule"] != "constant":
                for group, base_lr in zip(optimizer.param_groups, base_lrs):
                    group["lr"] = base_lr * lr_factor(cfg, step)
            opt_start = time.perf_counter()
            optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            opt_time = time.perf_counter() - opt_start
            for name in ("loss", "bpp", "mse"):
                window[name] += terms[name].detach()  # no .item() per step: that would sync the GPU
            window["n"] += 1
            if guard is not None:
                guard.record(loss_value, step + 1)
        aux_loss = aux_step(aux_optimizer, model.aux_loss)
        step += 1
        step_time = time.perf_counter() - step_start
        # A run whose every step is skipped has diverged for good: stop instead of burning compute until T.
        stop = bool(cfg["stop_after_nonfinite"]) and streak >= cfg["stop_after_nonfinite"]
        stop_spikes = guard is not None and guard.gave_up
        stop = stop or stop_spikes

        if stop or step % cfg["log_every"] == 0 or step % cfg["val_every"] == 0 or step == cfg["steps"]:
            row = {name: float(window[name]) / window["n"] if window["n"] else float("nan")
                   for name in ("loss", "bpp", "mse")}
            row.update(psnr=psnr(row["mse"]), aux_loss=float(aux_loss.detach()), step_time=step_time,
                       opt_step_time=opt_time, skipped_steps=skipped + getattr(optimizer, "skipped_updates", 0),
                       wall_time=elapsed_before + time.time() - started)
            if guard is not None:
                row["rollbacks"] = guard.rollbacks
            if stop:
                row["stopped_diverged"] = True
            if step % cfg["val_every"] == 0 or step == cfg["steps"]:
                row.update(validate(model, loss_fn, val_images, device))
                if row["val_loss"] < best_val:
                    best_val = row["val_loss"]
                    save(run_dir / "best.pt", with_state=False)
            if step == cfg["steps"] and cfg["eval_at_end"]:
                row.update(entropy_coded_eval(cfg, run_dir, device))
            progress.set_postfix(loss=f"{row['loss']:.4f}", bpp=f"{row['bpp']:.3f}", psnr=f"{row['psnr']:.2f}")
            run.log(row, step)
            window = {"loss": 0.0, "bpp": 0.0, "mse": 0.0, "n": 0}
        if stop or step % cfg["checkpoint_every"] == 0 or step == cfg["steps"]:
            save(latest, with_state=True)
        if stop:
            why = (f"{guard.consecutive} loss-spike rollbacks in a row" if stop_spikes
                   else f"{streak} consecutive non-finite losses")
            print(f"warning: stopped at step {step}: {why} (the run diverged)", file=sys.stderr)
            break
    progress.close()
    run.summary({**row, "best_val_loss": best_val})
    run.finish()
    return row


DESCRIPTION = ("Train a learned image codec (Ballé 2017/2018, deepened variants) with Adam, SGD or the learned "
               "LSTM optimizer.")


def config_from_argv(argv=None) -> dict:
    """Parse and validate a codec.train command line (also used by the offline sweep runner)."""
    cfg = parse_config(argv, "codec/default.yaml", DESCRIPTION)
    check_config(cfg)
    if cfg["optimizer"] not in OPTIMIZERS:
        raise UserError(f"unknown optimizer {cfg['optimizer']!r}; choose one of: {', '.join(OPTIMIZERS)}")
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
