"""What the learned optimizer costs: `python -m studies.bench [--scale paper|cpu|both] [--key value ...]`.

Prints one JSON object (and writes it to `--out`). Per codec scale (paper: bmshj2018-hyperprior N=128 M=192,
8 crops of 256²; cpu: configs/codec/default.yaml's model and sizes):
  * step_time_s — one codec.train step (zero_grad, forward, RD loss, backward, grad clip, optimizer step, aux
    zero_grad/backward/step) with Adam and with each learned optimizer (by default one per LSTM arch,
    "lstm-coordinate" and "lstm-tensor") on identically initialised models and the same batches; rounds
    interleave them (alternating order) after warm-up; a round is one step, or a whole refresh period of the
    basis when a learned optimizer runs in one (settings.steps_per_round); medians over rounds of the seconds per
    step, and their ratios to Adam's; skipped_updates counts the learned optimizers' skipped (non-finite) updates,
    which would make a timing meaningless;
  * optimizer_in_step_s, rest_of_step_s — step_time_s split into the optimizer's step (timed through torch.optim's
    step hooks, medians over the same rounds) and the rest: the forward and backward passes are the same work for
    every optimizer, so their spread between runs shows in rest_of_step_s, apart from the optimizer's own cost;
  * step_time_rounds_s, optimizer_in_step_rounds_s — the seconds per step of every timed round, in time order,
    behind those medians: how far one round strays from the next on this machine;
  * update_time_s — Adam.step vs LSTMOptimizer.step alone on the same (clipped) gradients, in the same rounds;
  * compile_wait_s — (compiled steps) the first training step's extra seconds in a fresh process on an empty
    inductor cache, and in a second fresh process on the cache the first left: what a first and a later run wait;
  * peak_mem_mb — peak memory above the post-set-up baseline during `warmup + 1` rounds of steps, each optimizer
    in a fresh subprocess so high-water marks never mix (CPU: /proc/self/status VmHWM, reset to the current RSS
    through /proc/self/clear_refs; CUDA: torch.cuda.max_memory_allocated).
Meta-training, through the real code (`metaopt.meta_train.build_family`/`lstm_config`, `metaopt.unroll.start_task`/
`unroll`, then the meta-Adam step of metaopt.meta_train) on one small codec task: time per meta-step, peak
memory and the meta-loss's autograd-graph size vs the truncation length K and vs the total horizon (1x and
`meta_horizon_multiple`x at a fixed K), each run in a fresh subprocess.
The machine (device, torch version, threads, the environment variables that steer the allocator, thread pools and
compiler, 1-minute load average at start and end) is recorded so a reader can judge contention and repeat a run.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from codec.data import CropBatches, list_images
from codec.losses import RateDistortionLoss
from codec.models import MODELS, build_model, latent_stride, resolve_device, split_parameters
from metaopt.basis import FREQUENCY
from metaopt.checkpoint import seed_everything
from metaopt.config import CONFIG_DIR, parse_config, read_yaml
from metaopt.errors import UserError, cli_entry
from metaopt.lstm import ARCHS, LSTMConfig, LSTMOptimizerNet
from metaopt.memory import pin_mmap_threshold, status_bytes
from metaopt.meta_train import build_family, lstm_config, task_seed
from metaopt.optim import PRETRAINED, LSTMOptimizer, load_lopt, lopt_blob
from metaopt.training import train_step
from metaopt.unroll import start_task, unroll

MB = 2**20
SCALES = ("paper", "cpu")
STEP_GOAL = {"cpu": 1.10, "cuda": 1.05}  # the goal for LSTM/Adam training-step time at paper scale
TIMING_ENV = ("MALLOC_", "OMP_", "MKL_", "KMP_", "TORCHINDUCTOR_", "CUDA_", "PYTORCH_")  # prefixes of machine.env
FLAT_GOAL = 1.10    # the goal for meta-training peak memory at 10x the horizon, relative to 1x


# -- measuring ------------------------------------------------------------------------------------------
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def interleaved_rounds(fns: dict, repeats: int, warmup: int, device: torch.device,
                       calls_per_round: int = 1) -> dict[str, list[float]]:
    """Each function's mean wall seconds per call in each of `repeats` timed rounds. Every round calls each
    function `calls_per_round` times in a row, in alternating order, so that load from other processes and cache
    effects hit all of them alike; `warmup` rounds are untimed."""
    names = list(fns)
    times = {name: [] for name in names}
    for round_ in range(warmup + repeats):
        for name in names if round_ % 2 == 0 else names[::-1]:
            synchronize(device)
            start = time.perf_counter()
            for _ in range(calls_per_round):
                fns[name]()
            synchronize(device)
            if round_ >= warmup:
                times[name].append((time.perf_counter() - start) / calls_per_round)
    return times


def medians(rounds: dict[str, list[float]]) -> dict[str, float]:
    return {name: statistics.median(seconds) for name, seconds in rounds.items()}


def step_seconds(optimizer: torch.optim.Optimizer, device: torch.device) -> list[float]:
    """A list that collects the wall seconds of each later `optimizer.step` call (torch.optim's step hooks)."""
    seconds, start = [], []

    def before(*_):
        synchronize(device)
        start.append(time.perf_counter())

    def after(*_):
        synchronize(device)
        seconds.append(time.perf_counter() - start.pop())

    optimizer.register_step_pre_hook(before)
    optimizer.register_step_post_hook(after)
    return seconds


def round_means(calls: list[float], repeats: int, calls_per_round: int) -> list[float]:
    """The mean of each of the last `repeats` rounds of `calls_per_round` calls."""
    timed = calls[len(calls) - repeats * calls_per_round:]
    return [statistics.fmean(timed[i:i + calls_per_round]) for i in range(0, len(timed), calls_per_round)]


def steps_per_round(lopts: dict) -> int:
    """How many consecutive steps one timing covers: a learned optimizer in the Shampoo basis refreshes its basis
    every basis.FREQUENCY steps, at a cost several ordinary steps long, so its rounds time whole refresh periods
    (a median of single steps would leave the refresh out); 1 when no optimizer has a period."""
    return FREQUENCY if any(source["basis"] == "shampoo" for source in lopts.values()) else 1


class PeakMemory:
    """Peak memory above the usage at entry, while the block runs (CUDA: allocated bytes; CPU: RSS)."""

    def __init__(self, device: torch.device):
        self.device = device

    def __enter__(self) -> "PeakMemory":
        synchronize(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS: earlier peaks (imports, set-up) do not count
            self.base = status_bytes("VmRSS")
        return self

    def __exit__(self, *exc) -> None:
        synchronize(self.device)
        peak = torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else status_bytes("VmHWM")
        self.peak_bytes = peak - self.base


def run_probe(name: str, spec: dict, env: dict | None = None) -> dict:
    """Run PROBES[name](spec) in a fresh interpreter (its own high-water mark; `env` added to its environment) and
    return its result."""
    code = ("import json, sys; from studies.bench import PROBES; "
            "print(json.dumps(PROBES[sys.argv[1]](json.loads(sys.argv[2]))))")
    proc = subprocess.run([sys.executable, "-c", code, name, json.dumps(spec)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})
    if proc.returncode:
        raise RuntimeError(f"bench probe {name} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.splitlines()[-1])


def graph_size(loss: torch.Tensor) -> int:
    """Number of autograd nodes reachable from `loss`: what a backward through it keeps alive."""
    seen, stack = set(), [loss.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        stack.extend(child for child, _ in node.next_functions)
    return len(seen)


# -- codec training steps ---------------------------------------------------------------------------------
@dataclass
class CodecRun:
    model: torch.nn.Module
    net_params: list
    optimizer: torch.optim.Optimizer
    aux_optimizer: torch.optim.Optimizer
    loss_fn: RateDistortionLoss
    batches: CropBatches
    device: torch.device
    grad_clip: float
    steps: int = 0

    def step(self) -> None:
        """The work of one codec.train step (without its logging and NaN guard), on the step's own batch: timings
        span many steps, and a learned optimizer at its stored step can blow up when fed one batch over and over
        (then its skipped updates would time as nearly free)."""
        x = self.batches.batch(self.steps).to(self.device)
        self.steps += 1
        train_step(self.optimizer, lambda: self.loss_fn(self.model(x), x), self.grad_clip,
                   self.aux_optimizer, self.model.aux_loss)


def make_optimizer(name: str, params, spec: dict) -> torch.optim.Optimizer:
    """Adam, or LSTMOptimizer from spec["lopts"][name]: a file, or {"arch": ...} for a fresh network (the
    timing of a step does not depend on the weights; spec travels to probes as JSON, so no blobs in it),
    eager or compiled."""
    if name == "adam":
        return torch.optim.Adam(params, lr=spec["adam_lr"])
    source, compiled = spec["lopts"][name]["lopt"], spec["lopts"][name]["compile"]
    if not isinstance(source, str):
        source = lopt_blob(LSTMOptimizerNet(LSTMConfig(arch=source["arch"])), spec["fresh_lopt_lr"])
    # A planned length for optimizers that read the training progress; what a step costs does not depend on it.
    return LSTMOptimizer(params, lopt=source, compile=compiled, horizon=10_000)


def codec_run(scale: dict, optimizer: str, spec: dict) -> CodecRun:
    device = torch.device(spec["device"])
    torch.manual_seed(spec["seed"])  # the same initial weights for every optimizer
    model = build_model(scale["model"], scale["N"], scale["M"]).to(device).train()
    net_params, aux_params = split_parameters(model)
    batches = CropBatches(list_images(None, "train"), scale["crop"], scale["batch_size"], spec["seed"])
    return CodecRun(model, net_params, make_optimizer(optimizer, net_params, spec),
                    torch.optim.Adam(aux_params, lr=spec["aux_lr"]), RateDistortionLoss(spec["lmbda"], spec["distortion"]),
                    batches, device, spec["grad_clip"])


def codec_memory_probe(spec: dict) -> dict:
    """(In a fresh process.) Peak memory of `warmup + 1` rounds of training steps of one optimizer."""
    torch.set_num_threads(spec["threads"])
    run = codec_run(spec["scale"], spec["optimizer"], spec)
    if spec["optimizer"] != "adam" and spec["lopts"][spec["optimizer"]]["compile"]:
        # Compile first, on a throwaway copy: the compiler's own memory is a one-off, not the optimizer's.
        params = [p.detach().clone().requires_grad_() for p in run.net_params]
        for p in params:
            p.grad = torch.zeros_like(p)
        make_optimizer(spec["optimizer"], params, spec).step()
        del params
    with PeakMemory(torch.device(spec["device"])) as peak:
        for _ in range((spec["warmup"] + 1) * spec["steps_per_round"]):
            run.step()
    return {"peak_mem_bytes": peak.peak_bytes}


def compile_wait_probe(spec: dict) -> dict:
    """(In a fresh process.) The first training step's extra seconds over the second's: what a run waits for its
    compiled step, with whatever inductor finds in its on-disk cache."""
    torch.set_num_threads(spec["threads"])
    run = codec_run(spec["scale"], spec["optimizer"], spec)
    times = []
    for _ in range(2):
        synchronize(torch.device(spec["device"]))
        start = time.perf_counter()
        run.step()
        synchronize(torch.device(spec["device"]))
        times.append(time.perf_counter() - start)
    return {"wait_s": times[0] - times[1]}


def measure_compile_wait(scale: dict, spec: dict, name: str) -> dict:
    """The compile wait of a first run on a machine (an empty inductor cache) and of a second run (the cache the
    first one left): a second run must not pay the compile again."""
    with tempfile.TemporaryDirectory() as cache:
        env = {"TORCHINDUCTOR_CACHE_DIR": cache}
        first, second = (run_probe("compile", {**spec, "scale": scale, "optimizer": name}, env)["wait_s"]
                         for _ in range(2))
    return {"first_run_s": first, "second_run_s": second}


def measure_scale(scale: dict, spec: dict) -> dict:
    device = torch.device(spec["device"])
    names = ["adam", *spec["lopts"]]
    runs = {name: codec_run(scale, name, spec) for name in names}
    net_params = sum(p.numel() for p in runs["adam"].net_params)
    optimizer_calls = {name: step_seconds(run.optimizer, device) for name, run in runs.items()}
    step_rounds = interleaved_rounds({name: run.step for name, run in runs.items()}, spec["repeats"],
                                     spec["warmup"], device, spec["steps_per_round"])
    in_step_rounds = {name: round_means(calls, spec["repeats"], spec["steps_per_round"])
                      for name, calls in optimizer_calls.items()}
    steps, in_step = medians(step_rounds), medians(in_step_rounds)
    # A skipped update (a non-finite gradient) costs next to nothing: timings with any would flatter the optimizer.
    skipped = {name: runs[name].optimizer.skipped_updates for name in spec["lopts"]}
    # The optimizer update alone, all on copies of Adam's last clipped gradients.
    grads = [p.grad for p in runs["adam"].net_params]
    updates = {}
    for name in names:
        params = [p.detach().clone().requires_grad_() for p in runs["adam"].net_params]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        updates[name] = make_optimizer(name, params, spec).step
    del runs
    update = medians(interleaved_rounds(updates, spec["repeats"], spec["warmup"], device, spec["steps_per_round"]))
    memory = {name: run_probe("codec", {**spec, "scale": scale, "optimizer": name})["peak_mem_bytes"] / MB
              for name in names}
    compile_wait = {name: measure_compile_wait(scale, spec, name) for name in spec["lopts"]
                    if spec["lopts"][name]["compile"]}
    over_adam = lambda figures: {name: figures[name] / figures["adam"] for name in spec["lopts"]}  # noqa: E731
    return {**scale, "net_params": net_params, "compile_wait_s": compile_wait,
            "step_time_s": steps, "step_time_ratio_over_adam": over_adam(steps), "skipped_updates": skipped,
            "optimizer_in_step_s": in_step, "rest_of_step_s": {name: steps[name] - in_step[name] for name in names},
            "step_time_rounds_s": step_rounds, "optimizer_in_step_rounds_s": in_step_rounds,
            "update_time_s": update, "update_time_ratio_over_adam": over_adam(update),
            "peak_mem_mb": memory, "peak_mem_ratio_over_adam": over_adam(memory)}


# -- meta-training ----------------------------------------------------------------------------------------
def meta_probe(spec: dict) -> dict:
    """(In a fresh process.) `truncations` meta-steps of K inner steps on one task, as metaopt.meta_train runs
    them: time per meta-step (the first is warm-up), peak memory, the meta-loss graph size per truncation."""
    pin_mmap_threshold()  # as metaopt.meta_train does
    torch.set_num_threads(spec["threads"])
    seed_everything(spec["seed"])
    device = torch.device(spec["device"])
    cfg, K = spec["meta_cfg"], spec["unroll"]
    task = build_family(cfg).sample(task_seed(cfg["seed"], 0), "train")  # meta_train's first task
    task.to(device)
    net = LSTMOptimizerNet(lstm_config(cfg)).to(device)
    meta_opt = torch.optim.Adam(net.parameters(), lr=cfg["meta_lr"])
    ts = start_task(task, net, horizon=K * spec["truncations"])
    for step in range(ts.horizon + 1):
        task.batch(step)  # decode and cache every image first: image loading is not meta-training memory
    times, nodes, finite = [], [], True

    def meta_step() -> None:
        nonlocal ts, finite
        start = time.perf_counter()
        meta_loss, ts, stats = unroll(net, ts, K, cfg["lr"], cfg["meta_loss"], cfg["second_order"],
                                      cfg["correction_penalty"], cfg["chunk_size"])
        unroll_s = time.perf_counter() - start
        nodes.append(graph_size(meta_loss))  # outside the timing
        start = time.perf_counter()
        meta_opt.zero_grad(set_to_none=True)
        meta_loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), cfg["meta_clip"])
        meta_opt.step()
        synchronize(device)
        times.append(unroll_s + time.perf_counter() - start)
        finite = finite and stats["finite"] and bool(torch.isfinite(meta_loss))

    # The first truncation is warm-up, before the memory baseline and outside the timing: it faults in code
    # pages and allocator pools, which would otherwise dominate the peak of small tasks.
    meta_step()
    with PeakMemory(device) as peak:
        while not ts.done:
            meta_step()
    return {"unroll": K, "horizon_steps": ts.horizon, "truncations": len(times),
            "meta_step_s": statistics.median(times[1:]), "peak_mem_mb": peak.peak_bytes / MB,
            "graph_nodes": max(nodes), "graph_nodes_constant": len(set(nodes)) == 1, "finite": finite}


PROBES = {"codec": codec_memory_probe, "meta": meta_probe, "compile": compile_wait_probe}


def measure_meta(cfg: dict, spec: dict) -> dict:
    meta_cfg = {**read_yaml(CONFIG_DIR / "meta" / "default.yaml"), "models": [cfg["meta_model"]],
                "sizes": [[cfg["meta_N"], cfg["meta_M"]]], "seed": cfg["seed"]}
    for key in ("crop", "batch_size"):
        if cfg[f"meta_{key}"] is not None:
            meta_cfg[key] = cfg[f"meta_{key}"]
    base = cfg["meta_truncations"]

    def probe(K: int, truncations: int) -> dict:
        return run_probe("meta", {**spec, "meta_cfg": meta_cfg, "unroll": K, "truncations": truncations})

    vs_unroll = {K: probe(K, base) for K in cfg["meta_unrolls"]}
    K = cfg["meta_horizon_unroll"]
    vs_horizon = [vs_unroll.get(K) or probe(K, base), probe(K, base * cfg["meta_horizon_multiple"])]
    return {"task": f"{cfg['meta_model']}(N={cfg['meta_N']},M={cfg['meta_M']}), {meta_cfg['batch_size']} crops of "
                    f"{meta_cfg['crop']}², lstm hidden={meta_cfg['hidden']} layers={meta_cfg['layers']}, "
                    f"second_order={meta_cfg['second_order']}",
            "vs_unroll": list(vs_unroll.values()), "vs_horizon": vs_horizon,
            "peak_mem_growth_over_horizon": vs_horizon[1]["peak_mem_mb"] / vs_horizon[0]["peak_mem_mb"]}


# -- the command -------------------------------------------------------------------------------------------
def codec_scales(cfg: dict) -> dict[str, dict]:
    """{scale name: model, N, M, batch_size, crop} for the scales selected by --scale."""
    if cfg["scale"] not in (*SCALES, "both"):
        raise UserError(f"--scale must be paper, cpu or both, got {cfg['scale']!r}")
    codec_default = read_yaml(CONFIG_DIR / "codec" / "default.yaml")
    scales = {}
    for name in SCALES if cfg["scale"] == "both" else (cfg["scale"],):
        scale = {key: cfg[f"{name}_{key}"] if cfg[f"{name}_{key}"] is not None else codec_default[key]
                 for key in ("model", "N", "M", "batch_size", "crop")}
        if scale["model"] not in MODELS:
            raise UserError(f"unknown {name}_model {scale['model']!r}; choose one of: {', '.join(MODELS)}")
        for key in ("N", "M", "batch_size", "crop"):
            if not isinstance(scale[key], int) or scale[key] <= 0:
                raise UserError(f"{name}_{key} must be a positive integer, got {scale[key]!r}")
        multiple = latent_stride(scale["model"])
        if scale["crop"] % multiple:
            raise UserError(f"{name}_crop must be a multiple of {multiple} for {scale['model']}, got {scale['crop']}")
        scales[name] = scale
    return scales


def check_meta(cfg: dict) -> None:
    if cfg["meta_model"] not in MODELS:
        raise UserError(f"unknown meta_model {cfg['meta_model']!r}; choose one of: {', '.join(MODELS)}")
    for key in ("meta_N", "meta_M", "meta_horizon_unroll", "meta_horizon_multiple"):
        if not isinstance(cfg[key], int) or cfg[key] <= 0:
            raise UserError(f"{key} must be a positive integer, got {cfg[key]!r}")
    if not isinstance(cfg["meta_truncations"], int) or cfg["meta_truncations"] < 2:
        raise UserError(f"meta_truncations must be an integer >= 2 (the first is warm-up), got {cfg['meta_truncations']!r}")
    if not cfg["meta_unrolls"] or not all(isinstance(K, int) and K > 0 for K in cfg["meta_unrolls"]):
        raise UserError(f"meta_unrolls must be a list of positive integers, got {cfg['meta_unrolls']!r}")


def lopt_sources(cfg: dict) -> tuple[dict, dict]:
    """({name: {"lopt": file or {"arch": a}, "compile": bool, "basis": the basis it runs in}}, {name: how the report
    describes it}) of the learned optimizers to time: --lopt FILE alone, or one per entry of `archs` (the shipped file
    where its arch matches, else fresh, in the coordinate basis); each once per entry of `compile` (False: the eager
    step, True: metaopt.fused)."""
    modes = [{"true": True, "false": False}.get(str(c).lower()) for c in cfg["compile"]]  # "--compile false,true"
    if not modes or None in modes:
        raise UserError(f"compile must be a non-empty list of true/false, got {cfg['compile']!r}")
    if cfg["lopt"] is not None:
        net, blob = load_lopt(cfg["lopt"])
        files = {net.cfg.arch: (str(cfg["lopt"]), str(cfg["lopt"]), blob["basis"])}
    else:
        unknown = [a for a in cfg["archs"] if a not in ARCHS]
        if unknown or not cfg["archs"]:
            raise UserError(f"archs must be a non-empty list of {', '.join(ARCHS)}, got {cfg['archs']!r}")
        # Time the shipped file of each arch (lopt.pt, lopt-tensor.pt), else a fresh network of that arch.
        shipped = {}
        for path in (PRETRAINED.parent / "lopt-tensor.pt", PRETRAINED):
            if path.is_file():
                net, blob = load_lopt(path)
                shipped[net.cfg.arch] = (str(path), f"shipped metaopt/pretrained/{path.name}", blob["basis"])
        files = {arch: shipped.get(arch) or ({"arch": arch}, f"fresh LSTMConfig(arch={arch!r}) network (a step's cost "
                                             "does not depend on weights)", "coordinate")
                 for arch in cfg["archs"]}
    sources, names = {}, {}
    for arch, (source, described, basis) in files.items():
        for compiled in modes:
            name = f"lstm-{arch}" + ("-compiled" if compiled else "")
            sources[name] = {"lopt": source, "compile": compiled, "basis": basis}
            names[name] = described + (", compiled step (metaopt.fused)" if compiled else ", eager step")
    return sources, names


def machine(device: torch.device, threads: int) -> dict:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                    platform.processor() or platform.machine())
    # Variables that change how the allocator, the thread pools or the compiler behave, so a run can be repeated.
    env = {key: value for key, value in os.environ.items() if key.startswith(TIMING_ENV)}
    return {"device": device.type, "device_name": name, "torch": torch.__version__, "threads": threads,
            "cpu_count": os.cpu_count(), "env": env, "load_avg_1min_start": os.getloadavg()[0]}


@cli_entry
def main(argv=None) -> dict:
    cfg = parse_config(argv, "bench/default.yaml", "Step time, update time and peak memory of Adam vs the learned "
                                                   "optimizer, and meta-training cost vs truncation and horizon.")
    scales = codec_scales(cfg)
    if cfg["meta"]:
        check_meta(cfg)
    for key, low in (("repeats", 1), ("warmup", 0), ("threads", 0)):
        if cfg[key] < low:
            raise UserError(f"{key} must be >= {low}, got {cfg[key]}")
    rounds = cfg["steps_per_round"]
    if rounds is not None and (isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1):
        raise UserError(f"steps_per_round must be null or a positive integer, got {rounds!r}")
    device = resolve_device(cfg["device"])
    threads = cfg["threads"] or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    seed_everything(cfg["seed"])
    lopts, lopt_names = lopt_sources(cfg)
    codec_default = read_yaml(CONFIG_DIR / "codec" / "default.yaml")
    spec = {"device": device.type, "threads": threads, "seed": cfg["seed"], "repeats": cfg["repeats"],
            "warmup": cfg["warmup"], "steps_per_round": cfg["steps_per_round"] or steps_per_round(lopts),
            "lopts": lopts, "fresh_lopt_lr": read_yaml(CONFIG_DIR / "meta" / "default.yaml")["lr"],
            "adam_lr": cfg["adam_lr"], **{k: codec_default[k] for k in ("aux_lr", "lmbda", "distortion", "grad_clip")}}

    report = {"machine": machine(device, threads),
              "settings": {"repeats": cfg["repeats"], "warmup": cfg["warmup"],
                           "steps_per_round": spec["steps_per_round"],
                           "statistic": "median over rounds of the mean wall seconds per step",
                           "learned_optimizers": lopt_names,
                           "peak_memory": "MiB above the post-set-up baseline, fresh subprocess per measurement; "
                                          + ("torch.cuda.max_memory_allocated" if device.type == "cuda"
                                             else "VmHWM (reset via /proc/self/clear_refs) - VmRSS")},
              "codec": {name: measure_scale(scale, spec) for name, scale in scales.items()}}
    goals = {}
    if "paper" in report["codec"]:
        goal = STEP_GOAL[device.type]
        for name, ratio in report["codec"]["paper"]["step_time_ratio_over_adam"].items():
            goals[f"paper_step_time_ratio_{name}_over_adam"] = {
                "value": ratio, "goal": f"<= {goal} on {device.type}", "met": ratio <= goal}
    if cfg["meta"]:
        report["meta_training"] = measure_meta(cfg, spec)
        growth = report["meta_training"]["peak_mem_growth_over_horizon"]
        goals["meta_peak_mem_flat_over_horizon"] = {
            "value": growth, "goal": f"<= {FLAT_GOAL} at {cfg['meta_horizon_multiple']}x the horizon",
            "met": growth <= FLAT_GOAL}
    report["goals"] = goals
    report["machine"]["load_avg_1min_end"] = os.getloadavg()[0]
    out = Path(cfg["out"])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
