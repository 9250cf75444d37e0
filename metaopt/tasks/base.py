"""The Task interface: one sampled training problem, generic over models and data.

A `TaskFamily` samples `Task`s from a seed and a split ("train" tasks for meta-training, "test" tasks —
held-out data and seeds — for meta-validation). A Task owns a freshly initialised model and says:
  * which of `model.parameters()` the optimizer under study trains (`net_mask`); the rest are auxiliary
    parameters fitted by `aux_loss` on their own Adam (`aux_lr`), without any meta-gradient;
  * the batch for each inner step (`batch(step)`, deterministic in (task seed, step));
  * the scalar training loss of a model on a batch (`loss(model, batch)`), which must work both on the
    plain model and on its `higher`-patched functional copy.
"""
from __future__ import annotations

import copy
import math
from typing import Any, Callable

import torch
from torch import nn

from metaopt.training import train_step


class Task:
    aux_lr: float = 1e-3

    def __init__(self, model: nn.Module, name: str):
        self.model = model
        self.name = name
        self.device = torch.device("cpu")

    def to(self, device) -> "Task":
        """Move the model; `batch` returns tensors on this device."""
        self.device = torch.device(device)
        self.model.to(self.device)
        return self

    def net_mask(self) -> list[bool]:
        """One bool per `self.model.parameters()` entry: True = trained by the optimizer under study."""
        return [p.requires_grad for p in self.model.parameters()]

    def batch(self, step: int) -> Any:
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        raise NotImplementedError

    def aux_loss(self, model: nn.Module) -> torch.Tensor | None:
        return None

    def train(self, make_opt: Callable[[list[nn.Parameter]], torch.optim.Optimizer], steps: int,
              diverged_at: float = 1e6) -> list[float]:
        """Ordinary (non-differentiable) training of a copy of the model; returns the loss before each step.

        Stops early, padding with inf, once the loss is non-finite or `diverged_at` times the initial loss.
        """
        model = copy.deepcopy(self.model).train()
        mask = self.net_mask()
        params = list(model.parameters())
        net = [p for p, m in zip(params, mask) if m]
        aux = [p for p, m in zip(params, mask) if not m and p.requires_grad]
        opt = make_opt(net)
        aux_opt = torch.optim.Adam(aux, lr=self.aux_lr) if aux else None
        losses: list[float] = []
        for step in range(steps):
            batch = self.batch(step)
            terms = train_step(opt, lambda: {"loss": self.loss(model, batch)}, aux_optimizer=aux_opt,
                               aux_loss_fn=lambda: self.aux_loss(model))
            losses.append(terms["loss"].item())
            if not math.isfinite(losses[-1]) or losses[-1] > diverged_at * abs(losses[0]):
                return losses + [math.inf] * (steps - len(losses))  # (the update just made is thrown away)
        return losses


class TaskFamily:
    def sample(self, seed: int, split: str) -> Task:
        raise NotImplementedError

    def max_fan_in(self) -> int | None:
        """The largest fan-in among the trained parameters of any task the family samples, stored with a learned
        optimizer for metaopt.optim's fan-in rule; None: no rule."""
        return None
