"""Meta-train the LSTM optimizer: `python -m metaopt.meta_train [--config FILE] [--key value]`.

Truncated meta-training (Andrychowicz 2016; Wichrowska 2017; Lv 2017; Harrison 2022):
  * a task (codec init, images, λ, size) is trained by the LSTM for a sampled horizon, in truncations of
    `unroll` steps; each truncation is one meta-step (`metaopt.unroll.unroll`), and parameters and
    optimizer state are carried to the next one detached;
  * horizons are log-uniform between `horizon_min` and a maximum that grows over `curriculum_steps`
    (a curriculum with a heavy tail of long runs); each task's loss is scaled by a random factor so the
    optimizer cannot rely on the loss scale;
  * the meta-gradient of a truncation is backpropagated through it (`meta_gradient: bptt`, the default), or
    estimated by persistent evolution strategies over antithetic particles (`pes`, metaopt/pes.py), which is
    unbiased for the whole inner run where BPTT sees only its truncation;
  * meta-optimizer Adam with gradient-norm clipping; a non-finite meta-loss or meta-gradient skips the
    step (counted as `skipped`) — NaN never reaches the weights or a checkpoint;
  * every `val_every` meta-steps: held-out tasks (test images, unseen seeds) trained for `val_steps`,
    longer than any training horizon, so the best checkpoint is the one that stays stable past it.

Outputs in RUN_DIR: config.yaml, metrics.jsonl (+ W&B offline mirror), checkpoint.pt (latest, atomic,
for --resume), lopt.pt (best on meta-validation; the file LSTMOptimizer and `--lopt` load; at the end a W&B
artifact of type "learned-optimizer" with its sha256).
"""
from __future__ import annotations

import math
import random
from pathlib import Path

import torch
from tqdm import tqdm

from metaopt.checkpoint import atomic_save, load, rng_state, seed_everything, set_rng_state
from metaopt.config import parse_config
from metaopt.errors import UserError, cli_entry
from metaopt.lstm import LSTMConfig, LSTMOptimizerNet
from metaopt.memory import pin_mmap_threshold
from metaopt.optim import LSTMOptimizer, lopt_blob
from metaopt.pes import Particles, pes_step, start_particles
from metaopt.tracking import Run
from metaopt.unroll import TaskState, start_task, unroll

CHECKPOINT_VERSION = 3  # 3: the in-flight LSTM state is feature-major (metaopt.lstm.init_state)


def build_family(cfg: dict):
    if cfg["task"] == "codec":
        from metaopt.tasks.codec import CodecFamily  # codec-specific code stays in the codec task

        return CodecFamily(cfg["models"], cfg["sizes"], cfg["lmbda_min"], cfg["lmbda_max"], cfg["distortion"],
                           cfg["crop"], cfg["batch_size"], cfg["data"], cfg["aux_lr"])
    if cfg["task"] == "regression":
        from metaopt.tasks.quadratic import RegressionFamily

        return RegressionFamily(batch_size=cfg["batch_size"])
    raise UserError(f"unknown task family {cfg['task']!r}; choose codec or regression")


def lstm_config(cfg: dict) -> LSTMConfig:
    try:
        return LSTMConfig(arch=cfg["arch"], hidden=cfg["hidden"], layers=cfg["layers"], mlp_hidden=cfg["mlp_hidden"],
                          features=list(cfg["features"]),
                          momentum_betas=[float(b) for b in cfg["momentum_betas"]], output=cfg["output"],
                          alpha=cfg["alpha"], beta=cfg["beta"], odd=cfg["odd"])
    except ValueError as e:
        raise UserError(f"bad learned-optimizer config: {e}") from None


def sample_horizon(rng: random.Random, meta_step: int, cfg: dict) -> int:
    """Log-uniform in [horizon_min, max], max growing linearly over the curriculum; a multiple of `unroll`."""
    lo, hi = cfg["horizon_min"], cfg["horizon_max"]
    frac = min(1.0, meta_step / max(1, cfg["curriculum_steps"]))
    top = lo + (hi - lo) * frac
    h = math.exp(rng.uniform(math.log(lo), math.log(max(lo, top))))
    return max(cfg["unroll"], int(round(h / cfg["unroll"])) * cfg["unroll"])


VAL_SEED = 7_000_000  # seeds of the validation tasks' random draws (disjoint from task seeds)


def validate(make_opt, family, cfg: dict, device) -> tuple[float, float]:
    """(score, diverged fraction) of an optimizer on held-out tasks; score = mean over tasks and steps of
    log(loss/loss_0).

    A diverged run scores log(1e6) from the step it diverged on, so instability is penalised in proportion
    to how early it happens. Each task runs in a forked RNG seeded by its index: every checkpoint is scored
    on the same random draws (the codec's quantisation noise), and validating never shifts the stream that
    meta-training draws from. Unseeded, two identical optimizers scored up to 0.1 apart, as much as the
    differences between checkpoints that the score is meant to select on.
    """
    scores, diverged = [], 0
    devices = [torch.cuda.current_device()] if device.type == "cuda" else []
    for i in range(cfg["val_tasks"]):
        task = family.sample(i, "test")
        task.to(device)
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(VAL_SEED + i)
            losses = task.train(make_opt, cfg["val_steps"])
        logs = [min(math.log(max(x, 1e-12) / losses[0]), math.log(1e6)) if math.isfinite(x) else math.log(1e6)
                for x in losses]
        diverged += not math.isfinite(losses[-1])
        scores.append(sum(logs) / len(logs))
    return sum(scores) / len(scores), diverged / cfg["val_tasks"]


def task_seed(task_index: int, cfg: dict) -> int:
    return cfg["seed"] * 100_003 + task_index


def new_task_state(family, net, rng: random.Random, meta_step: int, task_index: int, cfg: dict, device):
    task = family.sample(task_seed(task_index, cfg), "train")
    task.to(device)
    scale = math.exp(rng.uniform(-math.log(cfg["loss_scale"]), math.log(cfg["loss_scale"]))) \
        if cfg["loss_scale"] > 1 else 1.0
    ts = start_task(task, net, sample_horizon(rng, meta_step, cfg), scale)
    return start_particles(ts, cfg["pes_pairs"], net) if cfg["meta_gradient"] == "pes" else ts


# The in-flight inner run is checkpointed too (the meta-training codecs are small), so --resume continues
# the very same task from the very same step: a resumed run equals an uninterrupted one.
TASK_FIELDS = ("params", "opt_state", "aux_state", "step", "horizon", "init_loss", "loss_scale")


def task_state_dict(ts: TaskState | Particles, task_index: int) -> dict:
    if isinstance(ts, Particles):  # PES: every particle's inner run, and the noise each has accumulated
        return {"task_index": task_index, "xi": ts.xi, "particles": [task_state_dict(s, task_index) for s in ts.states]}
    return {"task_index": task_index, **{k: getattr(ts, k) for k in TASK_FIELDS}}


def restore_task_state(saved: dict, family, cfg: dict, device) -> TaskState | Particles:
    if ("particles" in saved) != (cfg["meta_gradient"] == "pes"):
        raise UserError("the checkpoint's in-flight task was run with another meta_gradient than "
                        f"{cfg['meta_gradient']}")
    if "particles" in saved:
        return Particles([_restore_one(s, family, cfg, device) for s in saved["particles"]], saved["xi"].to(device))
    return _restore_one(saved, family, cfg, device)


def _restore_one(saved: dict, family, cfg: dict, device) -> TaskState:
    task = family.sample(task_seed(saved["task_index"], cfg), "train")
    task.to(device)
    move = lambda x: x.to(device) if torch.is_tensor(x) else x  # noqa: E731
    fields = {k: saved[k] for k in TASK_FIELDS}
    fields["params"] = [move(p) for p in fields["params"]]
    fields["opt_state"] = {k: move(v) for k, v in fields["opt_state"].items()}
    fields["aux_state"] = {k: [move(t) for t in v] if isinstance(v, list) else v for k, v in fields["aux_state"].items()}
    return TaskState(task, **fields)


@cli_entry
def main(argv=None):
    cfg = parse_config(argv, "meta/default.yaml", "Meta-train the LSTM optimizer.")
    pin_mmap_threshold()  # otherwise CPU memory ratchets up over the first truncations (metaopt/memory.py)
    torch.set_num_threads(cfg["threads"])
    device = torch.device("cuda" if cfg["device"] == "cuda" or (cfg["device"] == "auto" and torch.cuda.is_available())
                          else "cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("device cuda requested but CUDA is not available")
    if cfg["meta_loss"] not in ("log", "mean"):
        raise UserError(f"meta_loss must be log or mean, got {cfg['meta_loss']!r}")
    if cfg["meta_gradient"] not in ("bptt", "pes"):
        raise UserError(f"meta_gradient must be bptt or pes, got {cfg['meta_gradient']!r}")
    if cfg["meta_gradient"] == "pes" and not (cfg["pes_pairs"] >= 1 and cfg["pes_sigma"] > 0):
        raise UserError("pes needs pes_pairs >= 1 and pes_sigma > 0")
    if cfg["meta_steps"] < 1:
        raise UserError(f"meta_steps must be positive, got {cfg['meta_steps']}")
    run_dir = cfg["run_dir"]
    seed_everything(cfg["seed"])
    family = build_family(cfg)
    net = LSTMOptimizerNet(lstm_config(cfg)).to(device)
    meta_opt = torch.optim.Adam(net.parameters(), lr=cfg["meta_lr"])
    rng = random.Random(cfg["seed"])
    start, task_index, best, skipped = 0, 0, math.inf, 0
    ckpt_path = f"{run_dir}/checkpoint.pt"

    if cfg["resume"]:
        ckpt = load(ckpt_path, what="meta-training checkpoint")
        if ckpt.get("version") != CHECKPOINT_VERSION or "net" not in ckpt:
            raise UserError(f"{ckpt_path} is not a meta-training checkpoint of this version")
        if LSTMConfig(**ckpt["lstm_config"]).to_dict() != net.cfg.to_dict():  # old files lack newer defaults
            raise UserError(f"{ckpt_path} was written with another learned-optimizer architecture")
        net.load_state_dict(ckpt["net"])
        meta_opt.load_state_dict(ckpt["meta_opt"])
        start, task_index, best, skipped = ckpt["meta_step"], ckpt["task_index"], ckpt["best"], ckpt["skipped"]
        rng.setstate(ckpt["py_rng"])
        set_rng_state(ckpt["rng"])
        ts = restore_task_state(ckpt["task"], family, cfg, device)
    else:
        ts = new_task_state(family, net, rng, start, task_index, cfg, device)
        task_index += 1
    run = Run(run_dir, cfg, job_type="meta-train", group=cfg["group"], tags=["lstm"],
              resume_step=start if cfg["resume"] else None)
    if not cfg["resume"]:
        # The yardstick for val_score: plain Adam at the LSTM's nominal step size on the same held-out tasks
        # (the untrained network starts close to it, so meta-training must beat this number to be worth it).
        adam_score, adam_div = validate(lambda p: torch.optim.Adam(p, lr=cfg["lr"]), family, cfg, device)
        run.log({"val_score_adam": adam_score, "val_diverged_adam": adam_div}, step=0)

    def checkpoint(step: int) -> None:
        atomic_save({"version": CHECKPOINT_VERSION, "net": net.state_dict(), "meta_opt": meta_opt.state_dict(),
                     "lstm_config": net.cfg.to_dict(), "meta_step": step, "task_index": task_index, "best": best,
                     "skipped": skipped, "py_rng": rng.getstate(), "rng": rng_state(), "config": cfg,
                     "task": task_state_dict(ts, task_index - 1)}, ckpt_path)

    bar = tqdm(range(start, cfg["meta_steps"]), initial=start, total=cfg["meta_steps"], desc="meta-train")
    for step in bar:
        if cfg["meta_gradient"] == "pes":  # seeded by the step: a resumed run draws the same noise
            estimate, loss_value, next_ts, stats = pes_step(net, ts, cfg["unroll"], cfg["lr"], cfg["pes_sigma"],
                                                            cfg["seed"] * 1_000_003 + step, cfg["meta_loss"],
                                                            cfg["correction_penalty"], cfg["chunk_size"])
            meta_loss = torch.tensor(loss_value)
        else:
            meta_loss, next_ts, stats = unroll(net, ts, cfg["unroll"], cfg["lr"], cfg["meta_loss"],
                                               cfg["second_order"], cfg["correction_penalty"], cfg["chunk_size"])
        meta_opt.zero_grad(set_to_none=True)
        ok = stats["finite"] and torch.isfinite(meta_loss).item()
        if ok:
            if cfg["meta_gradient"] == "pes":
                for p, g in zip(net.parameters(), estimate.split([p.numel() for p in net.parameters()])):
                    p.grad = g.view_as(p).clone()
            else:
                meta_loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(net.parameters(), cfg["meta_clip"])
            ok = torch.isfinite(grad_norm).item()
        if ok:
            meta_opt.step()
            ts = next_ts if not next_ts.done else None
        else:
            skipped += 1
            ts = None  # a task whose inner run blew up is abandoned, not continued from a NaN state
            grad_norm = torch.tensor(float("nan"))
        if ts is None:
            ts = new_task_state(family, net, rng, step + 1, task_index, cfg, device)
            task_index += 1
        done = step + 1
        if done % cfg["log_every"] == 0 or done == cfg["meta_steps"]:
            run.log({"meta_loss": meta_loss.item(), "loss": stats["inner_loss"], "grad_norm": grad_norm.item(),
                     "skipped": skipped, "tasks": task_index}, step=done)
            bar.set_postfix(meta_loss=f"{meta_loss.item():.3f}", skipped=skipped)
        if done % cfg["val_every"] == 0 or done == cfg["meta_steps"]:
            blob = lopt_blob(net, cfg["lr"])
            make_opt = lambda p: LSTMOptimizer(p, lopt=blob, chunk_size=cfg["chunk_size"],  # noqa: E731
                                               horizon=cfg["val_steps"])
            score, div = validate(make_opt, family, cfg, device)
            if score < best:
                best = score
                atomic_save(lopt_blob(net, cfg["lr"], {"meta_step": done, "val_score": score, "config": cfg}),
                            f"{run_dir}/lopt.pt")
            run.log({"val_score": score, "val_diverged": div, "best_val_score": best}, step=done)
        if done % cfg["checkpoint_every"] == 0 or done == cfg["meta_steps"]:
            checkpoint(done)
    run.summary({"best_val_score": best, "skipped": skipped})
    if Path(run_dir, "lopt.pt").is_file():
        run.log_artifact(Path(run_dir, "lopt.pt"), "learned-optimizer")
    run.finish()
    return best


if __name__ == "__main__":
    main()
