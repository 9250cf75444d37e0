"""The learned optimizer's CUDA path: the same update on GPU and CPU, the compiled (Triton) step, meta-training.

Skipped where no CUDA device is present (CI); `bash experiments/gpu_check.sh` runs them on a GPU.
"""
import copy

import pytest
import torch
from torch import nn

from metaopt.meta_train import main as meta_train
from metaopt.optim import PRETRAINED, LSTMOptimizer, load_lopt
from tests.metaopt.test_meta_train import TINY

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 32), nn.Tanh(), nn.Linear(32, 1))


def _run(model, steps=5, **opt_kwargs):
    device = next(model.parameters()).device
    opt = LSTMOptimizer(model.parameters(), **opt_kwargs)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x = torch.randn(16, 6, generator=g)
        loss = (model(x.to(device)) - torch.sin(x.sum(1, keepdim=True)).to(device)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return opt


@pytest.mark.parametrize("lopt", [None, "lopt-tensor.pt"])
@pytest.mark.parametrize("compile", [False, True])
def test_update_on_cuda_equals_the_update_on_cpu(lopt, compile):
    path = None if lopt is None else PRETRAINED.parent / lopt
    cpu_model = _model()
    gpu_model = copy.deepcopy(cpu_model).cuda()
    _run(cpu_model, lopt=path)
    opt = _run(gpu_model, lopt=path, compile=compile)  # compile=True: the fused loops as Triton kernels
    assert next(iter(opt.net.parameters())).device.type == "cuda"
    for a, b in zip(cpu_model.parameters(), gpu_model.parameters()):
        torch.testing.assert_close(b.cpu(), a, rtol=1e-4, atol=1e-6)
    moved = [p.detach().cpu() for p in gpu_model.parameters()]
    assert any(not torch.equal(m, p0) for m, p0 in zip(moved, _model().parameters()))


def test_optimizer_state_saved_on_cuda_resumes_on_cpu():
    gpu_model = _model().cuda()
    opt = _run(gpu_model)
    state = copy.deepcopy(opt.state_dict())
    cpu_model = copy.deepcopy(gpu_model).cpu()
    resumed = LSTMOptimizer(cpu_model.parameters())
    resumed.load_state_dict(state)  # the carried LSTM state, not a fresh one: both take the same next step
    gpu_next = _continue(gpu_model, opt)
    cpu_next = _continue(cpu_model, resumed)
    for a, b in zip(cpu_next, gpu_next):
        torch.testing.assert_close(b.cpu(), a, rtol=1e-4, atol=1e-6)


def _continue(model, opt):
    device = next(model.parameters()).device
    x = torch.randn(16, 6, generator=torch.Generator().manual_seed(99))
    loss = model(x.to(device)).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("task", ["regression", "codec"])
def test_meta_training_on_cuda_and_resume(tmp_path, task):
    args = TINY + ["--device", "cuda", "--run-dir", str(tmp_path / "run")]
    if task == "codec":  # the real task: a tiny hyperprior codec unrolled through `higher` on the GPU
        args = [a if a != "regression" else "codec" for a in args] + ["--sizes", "[[8, 12]]", "--crop", "64",
                                                                       "--batch-size", "2"]
    meta_train(args + ["--meta-steps", "3"])
    meta_train(args + ["--meta-steps", "5", "--resume"])
    rows = [r for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if '"meta_loss"' in r]
    assert len(rows) == 5
    net, _ = load_lopt(tmp_path / "run" / "lopt.pt")  # written on the GPU, loads without one
    assert next(net.parameters()).device.type == "cpu"
    LSTMOptimizer(_model().parameters(), lopt=tmp_path / "run" / "lopt.pt")


def test_meta_training_under_torchrun_on_nccl(tmp_path):
    """The NCCL path: as many processes as GPUs, up to two, each on its own GPU."""
    import os
    import subprocess
    import sys

    import yaml

    processes = min(2, torch.cuda.device_count())
    run = tmp_path / "run"
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
                    "-m", "metaopt.meta_train", *TINY, "--device", "cuda", "--meta-steps", "4", "--run-dir", str(run)],
                   env={**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}, check=True, timeout=600)
    assert yaml.safe_load((run / "config.yaml").read_text())["world_size"] == processes
    assert len(torch.load(run / "checkpoint.pt", weights_only=False)["streams"]) == processes
    LSTMOptimizer(_model().parameters(), lopt=run / "lopt.pt")
