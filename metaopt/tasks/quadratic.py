"""A tiny task family for tests and smoke runs: noisy regression with a small MLP (or linear) model.

Each task draws a random teacher (from the task seed) and minibatches (from seed and step); `hidden=0` makes
it linear least squares, i.e. a noisy quadratic. Everything is cheap and works in float64 for
finite-difference checks.
"""
from __future__ import annotations

import torch
from torch import nn

from metaopt.tasks.base import Task, TaskFamily


class RegressionTask(Task):
    def __init__(self, seed: int, dim: int, hidden: int, batch_size: int, noise: float, dtype=torch.float32):
        g = torch.Generator().manual_seed(seed)
        torch_state = torch.get_rng_state()
        torch.manual_seed(seed)
        layers = [nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, 1)] if hidden else [nn.Linear(dim, 1)]
        model = nn.Sequential(*layers).to(dtype)
        torch.set_rng_state(torch_state)  # sampling a task must not disturb the caller's RNG stream
        super().__init__(model, f"regression(dim={dim},hidden={hidden},seed={seed})")
        self.teacher = torch.randn(dim, 1, generator=g, dtype=dtype) * 2
        self.scale = torch.logspace(-1, 1, dim, dtype=dtype)  # ill-conditioned inputs: a non-trivial problem
        self.seed, self.dim, self.batch_size, self.noise, self.dtype = seed, dim, batch_size, noise, dtype

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        x = torch.randn(self.batch_size, self.dim, generator=g, dtype=self.dtype) * self.scale
        y = x @ self.teacher + self.noise * torch.randn(self.batch_size, 1, generator=g, dtype=self.dtype)
        return x.to(self.device), y.to(self.device)

    def loss(self, model: nn.Module, batch) -> torch.Tensor:
        x, y = batch
        return (model(x) - y).pow(2).mean()


class RegressionFamily(TaskFamily):
    def __init__(self, dim: int = 8, hidden: int = 0, batch_size: int = 16, noise: float = 0.1,
                 dtype=torch.float32):
        self.kwargs = dict(dim=dim, hidden=hidden, batch_size=batch_size, noise=noise, dtype=dtype)

    def sample(self, seed: int, split: str) -> RegressionTask:
        # held-out tasks come from a disjoint seed range
        return RegressionTask(seed if split == "train" else 10**6 + seed, **self.kwargs)
