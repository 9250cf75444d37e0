"""Data-parallel meta-training over the processes torchrun starts (torch.distributed):

    torchrun --nproc_per_node K [--nnodes N --node-rank R --rdzv-endpoint HOST:PORT] -m metaopt.meta_train ...

Each process trains its own task streams; their meta-gradients are summed over the processes before the
meta-optimizer's step, so every process takes the same step and holds the same weights. The collectives run on
gloo on CPU and NCCL on CUDA. The first process alone writes: it gathers every stream's run in flight into the
checkpoint, and on `--resume` reads it and hands it out, so a run resumes at the world size it was written at
(and refuses another). A process that dies ends the job: its peers fail in their next collective (at once when its
connections close, after `collective_timeout` seconds at the latest) and torchrun stops the rest; `--resume`
continues from the last checkpoint. Started without torchrun, a process is a world of one and runs no collective.

Throughput at several numbers of processes, one thread each (each size in its own torchrun job; prints JSON):

    python -m metaopt.distributed --world-sizes 1,2 [--independent] [meta-training flags, e.g. --task regression]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from metaopt.config import read_yaml
from metaopt.errors import UserError, cli_entry
from metaopt.tracking import read_metrics


@dataclass(frozen=True)
class World:
    """This process's place among the processes of the job: rank `rank` of `size`."""
    rank: int = 0
    size: int = 1
    local_rank: int = 0       # rank on this machine: which GPU it drives
    joined: bool = False      # a process group exists (started by torchrun)

    @property
    def is_main(self) -> bool:
        """The process that alone writes checkpoints, lopt.pt, metrics and W&B."""
        return self.rank == 0

    def device(self, kind: str) -> torch.device:
        return torch.device(kind, self.local_rank) if self.joined and kind == "cuda" else torch.device(kind)

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` summed over the processes, in place (every process gets the same bits)."""
        if self.joined:
            dist.all_reduce(tensor)
        return tensor

    def broadcast(self, obj):
        """The main process's `obj`, on every process."""
        if not self.joined:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_gather(self, obj) -> list:
        """Every process's `obj`, in rank order, on every process."""
        if not self.joined:
            return [obj]
        gathered = [None] * self.size
        dist.all_gather_object(gathered, obj)
        return gathered

    def gather(self, obj) -> list | None:
        """Every process's `obj`, in rank order, on the main process (None elsewhere). Tensors travel on the CPU."""
        if not self.joined:
            return [obj]
        gathered = [None] * self.size if self.is_main else None
        dist.gather_object(_to_cpu(obj), gathered, dst=0)
        return gathered

    def leave(self) -> None:
        if self.joined:
            dist.destroy_process_group()


def join(device_kind: str, timeout_s: float) -> World:
    """Join the job torchrun started (from its environment variables); a world of one without torchrun."""
    if not dist.is_torchelastic_launched():
        return World()
    local_rank = int(os.environ["LOCAL_RANK"])
    if device_kind == "cuda":
        torch.cuda.set_device(local_rank)  # NCCL and its object collectives use the current device
    dist.init_process_group("nccl" if device_kind == "cuda" else "gloo", timeout=timedelta(seconds=timeout_s))
    return World(dist.get_rank(), dist.get_world_size(), local_rank, joined=True)


def _to_cpu(obj):
    if torch.is_tensor(obj):
        return obj.cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


# -- throughput benchmark ------------------------------------------------------------------------------------------
# Short runs that log every meta-step and spend no time validating or checkpointing in between; flags given on the
# command line come later and win.
BENCH_FLAGS = ["--meta-steps", "30", "--log-every", "1", "--val-every", "1000000000", "--val-tasks", "1",
               "--val-steps", "2", "--checkpoint-every", "1000000000"]


def _throughput(run_dir: Path) -> dict:
    """Meta-steps and truncations per second between the first and the last logged meta-step of a run (start-up
    excluded). A meta-step averages one truncation per task stream of each process."""
    rows = [r for r in read_metrics(run_dir / "metrics.jsonl") if "meta_loss" in r]
    if len(rows) < 2:
        raise UserError("too few meta-steps to time: give --meta-steps 2 or more")
    steps_per_s = (rows[-1]["step"] - rows[0]["step"]) / (rows[-1]["wall_time"] - rows[0]["wall_time"])
    streams = int(read_yaml(run_dir / "config.yaml")["world_size"]) * _tasks_per_step(run_dir)
    return {"meta_steps_per_s": steps_per_s, "truncations_per_s": steps_per_s * streams}


def _launch(cmds: list[list[str]], what: str) -> None:
    """Run the commands at once (one thread each); the first failure is one UserError line. Their stderr goes to
    temporary files: a pipe left unread while waiting for another process could fill up and stall its writer."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": os.environ.get("WANDB_MODE", "disabled")}
    with contextlib.ExitStack() as stack:
        logs = [stack.enter_context(tempfile.TemporaryFile("w+")) for _ in cmds]
        procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log) for cmd, log in zip(cmds, logs)]
        for proc, log in zip(procs, logs):
            if proc.wait() != 0:
                log.seek(0)
                lines = log.read().strip().splitlines() or [f"exit status {proc.returncode}"]
                reason = next((line for line in reversed(lines) if "error:" in line), lines[-1])
                for other in procs:
                    other.kill()
                raise UserError(f"meta-training {what} failed: {reason}")


def benchmark(world_sizes: list[int], meta_train_flags: list[str], out_dir: str | Path,
              independent: bool = False) -> dict:
    """Meta-train at each world size (torchrun, one thread per process) and measure the truncations per second.
    `independent`: at each size K > 1 also K separate one-process jobs at once, with no collective: what the
    machine itself gives K processes (shared caches and memory bandwidth), the ceiling for the distributed job."""
    results = {}
    for size in world_sizes:
        run_dir = Path(out_dir) / f"world{size}"
        _launch([[sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(size),
                  "-m", "metaopt.meta_train", *BENCH_FLAGS, *meta_train_flags, "--threads", "1",
                  "--run-dir", str(run_dir)]], f"at world size {size}")
        results[size] = _throughput(run_dir)
        if independent and size > 1:
            alone = [Path(out_dir) / f"independent{size}-{rank}" for rank in range(size)]
            _launch([[sys.executable, "-m", "metaopt.meta_train", *BENCH_FLAGS, *meta_train_flags, "--threads", "1",
                      "--seed", str(rank), "--run-dir", str(path)] for rank, path in enumerate(alone)],
                    f"as {size} independent processes")
            results[size]["independent_truncations_per_s"] = sum(_throughput(path)["truncations_per_s"]
                                                                  for path in alone)
            results[size]["vs_independent"] = (results[size]["truncations_per_s"]
                                               / results[size]["independent_truncations_per_s"])
    base = results[world_sizes[0]]["truncations_per_s"]
    return {"world_sizes": results, "threads_per_process": 1,
            "truncation_throughput_vs_first": {size: r["truncations_per_s"] / base for size, r in results.items()}}


def _tasks_per_step(run_dir: Path) -> int:
    return int(read_yaml(run_dir / "config.yaml")["tasks_per_step"])


@cli_entry
def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m metaopt.distributed", allow_abbrev=False,
                                     description="Meta-training throughput at several numbers of processes. "
                                                 "Other flags go to metaopt.meta_train.")
    parser.add_argument("--world-sizes", default="1,2", help="comma-separated numbers of processes")
    parser.add_argument("--out-dir", default=None, help="where the runs go (default: a temporary folder)")
    parser.add_argument("--independent", action="store_true",
                        help="also time K independent one-process jobs at once at each K > 1 (the machine's ceiling)")
    args, meta_train_flags = parser.parse_known_args(argv)
    try:
        sizes = [int(s) for s in args.world_sizes.split(",") if s.strip()]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise UserError(f"--world-sizes must be positive integers, got {args.world_sizes!r}")
    with tempfile.TemporaryDirectory() as tmp:
        report = benchmark(sizes, meta_train_flags, args.out_dir or tmp, args.independent)
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
