"""Meta-train the LSTM optimizer: `python -m metaopt.meta_train [--config FILE] [--key value]`, or on several
processes and machines `torchrun --nproc_per_node K [...] -m metaopt.meta_train ...` (metaopt/distributed.py).

Truncated meta-training (Andrychowicz 2016; Wichrowska 2017; Lv 2017; Harrison 2022):
  * a task (codec init, images, λ, size) is trained by the LSTM for a sampled horizon, in truncations of
    `unroll` steps; each truncation gives a meta-gradient estimate (metaopt/estimators.py: backpropagated through
    the truncation, `meta_gradient: bptt`, or persistent evolution strategies, `pes`, unbiased for the whole inner
    run), and parameters and optimizer state are carried to the next truncation detached;
  * horizons are log-uniform between `horizon_min` and a maximum that grows over `curriculum_steps`
    (a curriculum with a heavy tail of long runs); each task's loss is scaled by a random factor so the
    optimizer cannot rely on the loss scale;
  * a meta-step averages the estimates of every task stream of the job (`tasks_per_step` on each process) and
    takes one step of the meta-optimizer, Adam with gradient-norm clipping; a non-finite estimate skips the
    step on every process (counted as `skipped`): NaN never reaches the weights or a checkpoint;
  * every `val_every` meta-steps: held-out tasks (meta-validation images, unseen seeds), shared out among the processes,
    trained for `val_steps`, longer than any training horizon, so the best checkpoint is the one that stays
    stable past it.

Outputs in RUN_DIR, written by the first process alone: config.yaml (with the `world_size` it ran at),
metrics.jsonl (+ W&B offline mirror), checkpoint.pt (latest, atomic, every stream's inner run in flight
included, for --resume at the same world size), lopt.pt (best on meta-validation; the file LSTMOptimizer and
`--lopt` load; at the end a W&B artifact of type "learned-optimizer" with its sha256).
"""
from __future__ import annotations

import math
import random
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from metaopt import distributed
from metaopt.checkpoint import atomic_save, load, rng_state, seed_everything, set_rng_state
from metaopt.config import parse_config
from metaopt.distributed import World
from metaopt.errors import UserError, cli_entry
from metaopt.estimators import GradientEstimator, Imitation, TruncatedBPTT, TruncatedPES
from metaopt.lstm import LSTMConfig, LSTMOptimizerNet
from metaopt.memory import pin_mmap_threshold
from metaopt.optim import LSTMOptimizer, load_lopt, lopt_blob
from metaopt.pes import Particles
from metaopt.tracking import Run
from metaopt.unroll import TaskState, start_task

CHECKPOINT_VERSION = 4  # 4: one run in flight per task stream (3 held one; still resumed, as world size 1)


def build_family(cfg: dict):
    if cfg["task"] == "codec":
        from metaopt.tasks.codec import CodecFamily  # codec-specific code stays in the codec task

        return CodecFamily(cfg["models"], cfg["sizes"], cfg["lmbda_min"], cfg["lmbda_max"], cfg["distortion"],
                           cfg["crop"], cfg["batch_size"], cfg["data"], cfg["aux_lr"], cfg["val_data"])
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


def build_estimator(cfg: dict) -> GradientEstimator:
    common = dict(unroll=cfg["unroll"], lr=cfg["lr"], meta_loss=cfg["meta_loss"],
                  correction_penalty=cfg["correction_penalty"], chunk_size=cfg["chunk_size"])
    if cfg["meta_gradient"] == "pes":
        return TruncatedPES(pairs=cfg["pes_pairs"], sigma=cfg["pes_sigma"], **common)
    if cfg["meta_gradient"] == "imitate":
        teacher, blob = load_lopt(cfg["teacher"])
        return Imitation(teacher=teacher, teacher_lr=blob["lr"], drive=cfg["imitate_drive"], **common)
    return TruncatedBPTT(second_order=cfg["second_order"], **common)


def check_config(cfg: dict) -> None:
    if cfg["meta_loss"] not in ("log", "mean"):
        raise UserError(f"meta_loss must be log or mean, got {cfg['meta_loss']!r}")
    if cfg["meta_gradient"] not in ("bptt", "pes", "imitate"):
        raise UserError(f"meta_gradient must be bptt, pes or imitate, got {cfg['meta_gradient']!r}")
    if cfg["meta_gradient"] == "imitate" and not cfg["teacher"]:
        raise UserError("meta_gradient imitate needs --teacher LOPT_FILE, the learned optimizer to imitate")
    if cfg["imitate_drive"] not in ("teacher", "student"):
        raise UserError(f"imitate_drive must be teacher or student, got {cfg['imitate_drive']!r}")
    if cfg["meta_gradient"] == "pes" and not (cfg["pes_pairs"] >= 1 and cfg["pes_sigma"] > 0):
        raise UserError("pes needs pes_pairs >= 1 and pes_sigma > 0")
    if cfg["tasks_per_step"] < 1 or cfg["val_tasks"] < 1:
        raise UserError("tasks_per_step and val_tasks must be >= 1")
    if cfg["meta_steps"] < (0 if cfg["init"] else 1):  # 0 with --init: score the stored weights, store them as lopt.pt
        raise UserError(f"meta_steps must be positive (or 0 with --init), got {cfg['meta_steps']}")


def device_kind(choice: str) -> str:
    if choice == "cuda" and not torch.cuda.is_available():
        raise UserError("device cuda requested but CUDA is not available")
    return "cuda" if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()) else "cpu"


def sample_horizon(rng: random.Random, meta_step: int, cfg: dict) -> int:
    """Log-uniform in [horizon_min, max], max growing linearly over the curriculum; a multiple of `unroll`."""
    lo, hi = cfg["horizon_min"], cfg["horizon_max"]
    frac = min(1.0, meta_step / max(1, cfg["curriculum_steps"]))
    top = lo + (hi - lo) * frac
    h = math.exp(rng.uniform(math.log(lo), math.log(max(lo, top))))
    return max(cfg["unroll"], int(round(h / cfg["unroll"])) * cfg["unroll"])


VAL_SEED = 7_000_000  # seeds of the validation tasks' random draws (disjoint from task seeds)


def validate(make_opt, family, cfg: dict, device, world: World = World()) -> tuple[float, float]:
    """(score, diverged fraction) of an optimizer on held-out tasks; score = mean over tasks and steps of
    log(loss/loss_0). Each process trains every world.size-th task; all get the whole result.

    A diverged run scores log(1e6) from the step it diverged on, so instability is penalised in proportion
    to how early it happens. Each task runs in a forked RNG seeded by its index: every checkpoint is scored
    on the same random draws (the codec's quantisation noise) whichever process trains it, and validating never
    shifts the stream that meta-training draws from. Unseeded, two identical optimizers scored apart by as much
    as the checkpoints that the score is meant to select between.
    """
    results = {}
    devices = [torch.cuda.current_device()] if device.type == "cuda" else []
    for i in range(world.rank, cfg["val_tasks"], world.size):
        task = family.sample(i, "test")
        task.to(device)
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(VAL_SEED + i)
            losses = task.train(make_opt, cfg["val_steps"])
        logs = [min(math.log(max(x, 1e-12) / losses[0]), math.log(1e6)) if math.isfinite(x) else math.log(1e6)
                for x in losses]
        results[i] = (sum(logs) / len(logs), not math.isfinite(losses[-1]))
    for part in world.all_gather(results):
        results.update(part)
    scores = [results[i][0] for i in range(cfg["val_tasks"])]  # summed in task order, at any world size
    return sum(scores) / len(scores), sum(results[i][1] for i in range(cfg["val_tasks"])) / cfg["val_tasks"]


# -- task streams ---------------------------------------------------------------------------------------------------
# A job runs world size x tasks_per_step task streams side by side. Stream s of n draws its k-th task from
# task_seed(seed, k * n + s), its PES noise from (seed, meta-step, s, n) and its other random numbers from
# generators of its own, so what a stream trains does not depend on which process runs it: rank r of K processes
# with one task per step trains what stream r of one process with K tasks per step does. Stream 0 draws from the
# process's generators as one-process meta-training always has, so a one-stream run equals earlier versions' and
# their checkpoints resume.

def task_seed(seed: int, number: int) -> int:
    """The seed of a meta-training job's `number`-th task, numbered across its streams."""
    return seed * 100_003 + number


@dataclass
class TaskStream:
    index: int                              # among the job's streams: rank * tasks_per_step + slot
    count: int                              # the job's number of streams
    rng: random.Random                      # horizons and loss scales
    random_state: dict                      # the global RNGs' state (codec quantisation noise) between turns
    tasks: int = 0                          # tasks started
    state: TaskState | Particles | None = None  # the estimator's state of the inner run in flight

    @classmethod
    def fresh(cls, index: int, count: int, seed: int) -> TaskStream:
        if index == 0:
            return cls(0, count, random.Random(seed), rng_state())
        own = random.Random(f"stream {index} of seed {seed}").getrandbits(63)
        outer = rng_state()
        seed_everything(own)
        state = rng_state()
        set_rng_state(outer)
        return cls(index, count, random.Random(own), state)

    @contextmanager
    def turn(self):
        """The global RNGs hold this stream's state while it trains."""
        outer = rng_state()
        set_rng_state(self.random_state)
        try:
            yield
        finally:
            self.random_state = rng_state()
            set_rng_state(outer)

    def noise_seed(self, seed: int, meta_step: int) -> int:
        return (seed * 1_000_003 + meta_step) * self.count + self.index

    def state_dict(self, estimator: GradientEstimator) -> dict:
        return {"tasks": self.tasks, "py_rng": self.rng.getstate(), "rng": self.random_state,
                "task": estimator.state_dict(self.state)}


class MetaTrainer:
    """The learned optimizer in meta-training, its meta-optimizer, and this process's task streams."""

    def __init__(self, cfg: dict, world: World, device: torch.device):
        self.cfg, self.world, self.device = cfg, world, device
        self.family, self.estimator = build_family(cfg), build_estimator(cfg)
        self.net = LSTMOptimizerNet(lstm_config(cfg))
        if cfg["init"]:
            start, _ = load_lopt(cfg["init"])
            if start.cfg != self.net.cfg:
                raise UserError(f"init {cfg['init']} has another learned-optimizer architecture than this config's "
                                f"({start.cfg.to_dict()} vs {self.net.cfg.to_dict()})")
            self.net.load_state_dict(start.state_dict())
        self.net.to(device)
        self.meta_opt = torch.optim.Adam(self.net.parameters(), lr=cfg["meta_lr"])
        self.meta_step, self.best, self.skipped = 0, math.inf, 0
        self.max_fan_in = self.family.max_fan_in()
        self.streams: list[TaskStream] = []
        self.stream_count = world.size * cfg["tasks_per_step"]
        first = world.rank * cfg["tasks_per_step"]
        self.stream_indices = range(first, first + cfg["tasks_per_step"])

    def start(self) -> None:
        self.streams = [TaskStream.fresh(i, self.stream_count, self.cfg["seed"]) for i in self.stream_indices]
        for stream in self.streams:
            self.next_task(stream)

    def next_task(self, stream: TaskStream) -> None:
        cfg = self.cfg
        with stream.turn():
            task = self.family.sample(task_seed(cfg["seed"], stream.tasks * stream.count + stream.index), "train")
            task.to(self.device)
            scale = math.exp(stream.rng.uniform(-math.log(cfg["loss_scale"]), math.log(cfg["loss_scale"]))) \
                if cfg["loss_scale"] > 1 else 1.0
            ts = start_task(task, self.net, sample_horizon(stream.rng, self.meta_step, cfg), scale)
            stream.state = self.estimator.init_state(ts, self.net)
        stream.tasks += 1

    def step(self) -> dict:
        """One meta-step: a truncation of every stream's run; unless any estimate is non-finite, one meta-optimizer
        step along their meta-gradients averaged over all the job's streams."""
        estimates = []
        for stream in self.streams:
            with stream.turn():
                seed = stream.noise_seed(self.cfg["seed"], self.meta_step)
                estimates.append(self.estimator.estimate(self.net, stream.state, seed))
        params = list(self.net.parameters())
        grads = [e.flat_grad for e in estimates if e.finite] or [torch.zeros_like(estimates[0].flat_grad)]
        total = grads[0]
        for g in grads[1:]:
            total = total + g
        total = self.world.sum(total)
        sums = self.world.sum(torch.tensor([[not e.finite, e.meta_loss, e.inner_loss] for e in estimates],
                                           dtype=torch.float64, device=self.device).sum(0))
        non_finite, meta_loss, inner_loss = sums.tolist()
        self.meta_opt.zero_grad(set_to_none=True)
        ok = non_finite == 0  # the same on every process, so all of them step or skip together
        if ok:
            for p, g in zip(params, (total / self.stream_count).split([p.numel() for p in params])):
                p.grad = g.view_as(p)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, self.cfg["meta_clip"])
            ok = torch.isfinite(grad_norm).item()
        if ok:
            self.meta_opt.step()
        else:
            self.skipped += 1
            grad_norm = torch.tensor(float("nan"))
        self.meta_step += 1
        for stream, estimate in zip(self.streams, estimates):
            # A run that blew up is abandoned, never continued from a NaN state. When only the average overflowed
            # no stream is to blame, and all start afresh.
            healthy = estimate.finite and (ok or non_finite > 0)
            stream.state = estimate.state if healthy and not estimate.state.done else None
            if stream.state is None:
                self.next_task(stream)
        return {"meta_loss": meta_loss / self.stream_count, "loss": inner_loss / self.stream_count,
                "grad_norm": grad_norm.item(), "skipped": self.skipped}

    def tasks_started(self) -> int:
        mine = torch.tensor([sum(s.tasks for s in self.streams)], device=self.device)
        return int(self.world.sum(mine).item())

    def validate(self, make_opt) -> tuple[float, float]:
        return validate(make_opt, self.family, self.cfg, self.device, self.world)

    def validate_and_keep_best(self, lopt_path: Path) -> dict:
        """Score the current network on the held-out tasks; the best one so far is written to `lopt_path`."""
        blob = lopt_blob(self.net, self.cfg["lr"], max_fan_in=self.max_fan_in)
        score, diverged = self.validate(lambda p: LSTMOptimizer(p, lopt=blob, chunk_size=self.cfg["chunk_size"],
                                                                horizon=self.cfg["val_steps"]))
        if score < self.best:
            self.best = score
            if self.world.is_main:
                meta = {"meta_step": self.meta_step, "val_score": score, "config": self.cfg}
                atomic_save(lopt_blob(self.net, self.cfg["lr"], meta, self.max_fan_in), lopt_path)
        return {"val_score": score, "val_diverged": diverged, "best_val_score": self.best}

    # -- checkpoint: everything, every process's streams included, so a resumed run equals an uninterrupted one --
    def save(self, path: Path) -> None:
        streams = self.world.gather([s.state_dict(self.estimator) for s in self.streams])
        if self.world.is_main:
            atomic_save({"version": CHECKPOINT_VERSION, "net": self.net.state_dict(),
                         "meta_opt": self.meta_opt.state_dict(), "lstm_config": self.net.cfg.to_dict(),
                         "meta_step": self.meta_step, "best": self.best, "skipped": self.skipped, "config": self.cfg,
                         "world_size": self.world.size, "streams": [s for part in streams for s in part]}, path)

    def resume(self, path: Path) -> None:
        # The first process reads and checks the checkpoint and hands it to the others: the run directory need not
        # be shared between machines, and a refusal is reported once.
        ckpt = self.world.broadcast(self.read_checkpoint(path) if self.world.is_main else None)
        self.net.load_state_dict(ckpt["net"])
        self.meta_opt.load_state_dict(ckpt["meta_opt"])
        self.meta_step, self.best, self.skipped = ckpt["meta_step"], ckpt["best"], ckpt["skipped"]
        self.streams = [self.restore_stream(i, ckpt["streams"][i]) for i in self.stream_indices]

    def read_checkpoint(self, path: Path) -> dict:
        ckpt = load(path, what="meta-training checkpoint")
        if ckpt.get("version") == 3:  # one stream, which drew from the global generators
            ckpt = {**ckpt, "world_size": 1, "streams": [{"tasks": ckpt["task_index"], "py_rng": ckpt["py_rng"],
                                                          "rng": ckpt["rng"], "task": ckpt["task"]}]}
        elif ckpt.get("version") != CHECKPOINT_VERSION or "net" not in ckpt:
            raise UserError(f"{path} is not a meta-training checkpoint of this version")
        if LSTMConfig.from_dict(ckpt["lstm_config"]) != self.net.cfg:
            raise UserError(f"{path} was written with another learned-optimizer architecture")
        size, per = ckpt["world_size"], len(ckpt["streams"]) // ckpt["world_size"]
        if (size, per) != (self.world.size, self.cfg["tasks_per_step"]):
            raise UserError(f"{path} was written at world size {size} with tasks_per_step {per}; resume it with "
                            f"the same (torchrun --nproc_per_node, --tasks-per-step), not world size "
                            f"{self.world.size} with tasks_per_step {self.cfg['tasks_per_step']}")
        for saved in ckpt["streams"]:
            self.estimator.check_saved(saved["task"])
        return ckpt

    def restore_stream(self, index: int, saved: dict) -> TaskStream:
        rng = random.Random()
        rng.setstate(saved["py_rng"])
        stream = TaskStream(index, self.stream_count, rng, saved["rng"], saved["tasks"])
        task = self.family.sample(task_seed(self.cfg["seed"], (stream.tasks - 1) * stream.count + index), "train")
        task.to(self.device)
        stream.state = self.estimator.load_state(saved["task"], lambda run: TaskState.from_state_dict(run, task))
        return stream


@cli_entry
def main(argv=None):
    cfg = parse_config(argv, "meta/default.yaml", "Meta-train the LSTM optimizer.")
    check_config(cfg)
    pin_mmap_threshold()  # otherwise CPU memory ratchets up over the first truncations (metaopt/memory.py)
    torch.set_num_threads(cfg["threads"])
    kind = device_kind(cfg["device"])
    world = distributed.join(kind, cfg["collective_timeout"])  # a world of one unless torchrun started us
    if cfg["world_size"] not in (None, world.size):
        raise UserError(f"world_size {cfg['world_size']} was asked for, but {world.size} processes were started")
    cfg["world_size"] = world.size
    seed_everything(cfg["seed"])
    trainer = MetaTrainer(cfg, world, world.device(kind))
    run_dir = Path(cfg["run_dir"])
    if cfg["resume"]:
        trainer.resume(run_dir / "checkpoint.pt")
    else:
        trainer.start()
    run = Run(run_dir, cfg, job_type="meta-train", group=cfg["group"], tags=["lstm"],
              resume_step=trainer.meta_step if cfg["resume"] else None) if world.is_main else None
    log = lambda row: run.log(row, step=trainer.meta_step) if run else None  # noqa: E731
    due = lambda every: trainer.meta_step % cfg[every] == 0 or trainer.meta_step == cfg["meta_steps"]  # noqa: E731
    if not cfg["resume"]:  # the yardstick: plain Adam at the LSTM's nominal step size on the same held-out tasks
        score, diverged = trainer.validate(lambda p: torch.optim.Adam(p, lr=cfg["lr"]))
        log({"val_score_adam": score, "val_diverged_adam": diverged})
        if cfg["init"]:  # the starting weights are a candidate too: fine-tuning keeps them unless it beats them
            log(trainer.validate_and_keep_best(run_dir / "lopt.pt"))
    bar = tqdm(range(trainer.meta_step, cfg["meta_steps"]), initial=trainer.meta_step, total=cfg["meta_steps"],
               desc="meta-train", disable=not world.is_main)
    for _ in bar:
        stats = trainer.step()
        if due("log_every"):
            log({**stats, "tasks": trainer.tasks_started()})
            bar.set_postfix(meta_loss=f"{stats['meta_loss']:.3f}", skipped=stats["skipped"])
        if due("val_every"):
            log(trainer.validate_and_keep_best(run_dir / "lopt.pt"))
        if due("checkpoint_every"):
            trainer.save(run_dir / "checkpoint.pt")
    if run:
        run.summary({"best_val_score": trainer.best, "skipped": trainer.skipped})
        if (run_dir / "lopt.pt").is_file():
            run.log_artifact(run_dir / "lopt.pt", "learned-optimizer")
        run.finish()
    world.leave()
    return trainer.best


if __name__ == "__main__":
    main()
