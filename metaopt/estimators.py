"""Meta-gradient estimators: how one truncation of an inner training run becomes a meta-gradient.

One interface, as learned_optimization's `GradientEstimator` (outer_trainers/truncated_grad.py and
truncated_pes.py), so meta-training drives either without knowing which: `init_state` when a task starts,
`estimate` once per truncation, `state_dict` / `load_state` to checkpoint the run in flight.

* `TruncatedBPTT` backpropagates through the truncation (`metaopt.unroll`): exact for the truncation, but blind
  to how an update changes the losses of later truncations, which favours greedy optimizers (docs/ablation.md).
* `TruncatedPES` runs antithetic particles forward through it (`metaopt.pes`): unbiased for the whole inner run,
  at the price of variance and 2 x pairs forward unrolls per truncation.
* `Imitation` is not a meta-gradient: the gradient of how far the network's updates are from a given learned
  optimizer's over the truncation (`metaopt.imitation`), which moves the inner run. It distils a costly optimizer
  into a cheaper network.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from metaopt.errors import UserError
from metaopt.imitation import ImitationState, imitate, start_imitation
from metaopt.lstm import LSTMOptimizerNet
from metaopt.pes import Particles, pes_step, start_particles
from metaopt.unroll import TaskState, unroll


@dataclass
class Estimate:
    grads: list[torch.Tensor]          # the meta-gradient, one tensor per network parameter
    meta_loss: float
    state: TaskState | Particles       # the run in flight, one truncation further
    inner_loss: float                  # the inner training loss at the truncation's end
    finite: bool                       # meta-loss, inner losses and meta-gradient all finite

    @property
    def flat_grad(self) -> torch.Tensor:
        return torch.cat([g.reshape(-1) for g in self.grads])


def backpropagated(net: LSTMOptimizerNet, loss: torch.Tensor, next_state, stats: dict) -> Estimate:
    """The estimate of a differentiable truncation loss: its gradient, or zeros and `finite` False when the loss, an
    inner loss or the gradient is not finite."""
    params = list(net.parameters())
    finite = stats["finite"] and torch.isfinite(loss).item()
    grads = list(torch.autograd.grad(loss, params)) if finite else [torch.zeros_like(p) for p in params]
    finite = finite and all(torch.isfinite(g).all().item() for g in grads)
    return Estimate(grads, loss.item(), next_state, stats["inner_loss"], finite)


class GradientEstimator:
    """Settings every truncation shares: its length `unroll`, the optimizer's nominal step `lr`, the meta-loss
    (`metaopt.unroll.unroll`), the correction penalty and the chunk size of the optimizer's step."""

    name: str  # the `meta_gradient` config value that selects it

    def __init__(self, unroll: int, lr: float, meta_loss: str = "log", correction_penalty: float = 0.0,
                 chunk_size: int | None = None):
        self.unroll, self.lr, self.meta_loss = unroll, lr, meta_loss
        self.correction_penalty, self.chunk_size = correction_penalty, chunk_size

    def init_state(self, ts: TaskState, net: LSTMOptimizerNet) -> TaskState | Particles:
        """The estimator's state for a freshly started inner run."""
        return ts

    def estimate(self, net: LSTMOptimizerNet, state, seed: int) -> Estimate:
        """One truncation from `state`. `seed` draws whatever random numbers the estimator needs, so a resumed run
        draws the same ones."""
        raise NotImplementedError

    def state_dict(self, state) -> dict:
        return state.state_dict()

    def load_state(self, saved: dict, restore: Callable[[dict], TaskState]):
        """The state `state_dict` saved (by this kind of estimator: `check_saved`); `restore` turns one saved inner
        run back into a TaskState."""
        return restore(saved)

    def check_saved(self, saved: dict) -> None:
        """UserError unless `saved` is what this kind of estimator's `state_dict` writes."""
        kind = "pes" if "particles" in saved else "imitate" if "teacher_state" in saved else "bptt"
        if kind != self.name:
            raise UserError(f"the checkpoint's run in flight was estimated with meta_gradient {kind}, not {self.name}")


class TruncatedBPTT(GradientEstimator):
    name = "bptt"

    def __init__(self, *args, second_order: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.second_order = second_order

    def estimate(self, net: LSTMOptimizerNet, state: TaskState, seed: int) -> Estimate:
        loss, next_state, stats = unroll(net, state, self.unroll, self.lr, self.meta_loss, self.second_order,
                                         self.correction_penalty, self.chunk_size)
        return backpropagated(net, loss, next_state, stats)


class TruncatedPES(GradientEstimator):
    name = "pes"

    def __init__(self, *args, pairs: int, sigma: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.pairs, self.sigma = pairs, sigma

    def init_state(self, ts: TaskState, net: LSTMOptimizerNet) -> Particles:
        return start_particles(ts, self.pairs, net)

    def estimate(self, net: LSTMOptimizerNet, state: Particles, seed: int) -> Estimate:
        flat, loss, next_state, stats = pes_step(net, state, self.unroll, self.lr, self.sigma, seed, self.meta_loss,
                                                 self.correction_penalty, self.chunk_size)
        grads = [g.view_as(p) for g, p in zip(flat.split([p.numel() for p in net.parameters()]), net.parameters())]
        finite = stats["finite"] and math.isfinite(loss) and torch.isfinite(flat).all().item()
        return Estimate(grads, loss, next_state, stats["inner_loss"], finite)

    def state_dict(self, state: Particles) -> dict:
        # every particle's inner run, and the noise each has accumulated
        return {"xi": state.xi, "particles": [s.state_dict() for s in state.states]}

    def load_state(self, saved: dict, restore: Callable[[dict], TaskState]) -> Particles:
        states = [restore(s) for s in saved["particles"]]
        return Particles(states, saved["xi"].to(states[0].params[0].device))


class Imitation(GradientEstimator):
    name = "imitate"

    def __init__(self, *args, teacher: LSTMOptimizerNet, teacher_lr: float, drive: str = "teacher", **kwargs):
        super().__init__(*args, **kwargs)
        self.teacher, self.teacher_lr, self.drive = teacher.requires_grad_(False), teacher_lr, drive

    def init_state(self, ts: TaskState, net: LSTMOptimizerNet) -> ImitationState:
        self.teacher.to(ts.params[0].device)
        return start_imitation(ts, self.teacher)

    def estimate(self, net: LSTMOptimizerNet, state: ImitationState, seed: int) -> Estimate:
        loss, next_state, stats = imitate(net, self.teacher, self.teacher_lr, state, self.unroll, self.lr,
                                          self.chunk_size, self.drive)
        return backpropagated(net, loss, next_state, stats)

    def state_dict(self, state: ImitationState) -> dict:
        return {"run": state.run.state_dict(), "teacher_state": state.teacher_state}

    def load_state(self, saved: dict, restore: Callable[[dict], TaskState]) -> ImitationState:
        run = restore(saved["run"])
        self.teacher.to(run.params[0].device)
        move = lambda x: x.to(run.params[0].device) if torch.is_tensor(x) else x  # noqa: E731
        return ImitationState(run, {k: move(v) for k, v in saved["teacher_state"].items()})
