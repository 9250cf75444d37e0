"""Persistent evolution strategies (PES; Vicol, Metz & Sohl-Dickstein 2021): meta-gradients without truncation bias.

Truncated BPTT (`metaopt.unroll`) differentiates each K-step truncation as if it were the whole inner run: how an
update changes the losses of *later* truncations never reaches the meta-gradient, which favours greedy optimizers
(docs/ablation.md). PES instead perturbs the optimizer's weights theta with antithetic Gaussian noise
+eps / -eps, runs each perturbed copy (a *particle*) forward through the same truncation of the same task (no
backpropagation through the unroll), and weights each particle's truncation loss by the sum xi of all the noise
that particle has received since its task began. Because xi accumulates over the whole run so far, the estimate

    grad ~= sum over pairs of xi_pair * (L_plus - L_minus) / (2 * pairs * sigma^2)

is unbiased for the gradient of the Gaussian-smoothed loss of the entire inner run, however short K is. Each
particle keeps its own inner state across truncations; both particles of a pair see the same batches and the same
quantisation noise (common random numbers), which is what makes the difference L_plus - L_minus informative.

No library does this for a `higher`-driven task (learned_optimization implements PES for JAX), hence this file.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from metaopt.lstm import LSTMOptimizerNet
from metaopt.unroll import TaskState, unroll


@dataclass
class Particles:
    states: list[TaskState]   # 2 * pairs inner runs of one task: the "+" particles, then the "-" ones
    xi: torch.Tensor          # [pairs, D]: noise the "+" particle of each pair received so far (the "-" one: -xi)

    @property
    def done(self) -> bool:
        return self.states[0].done


def start_particles(ts: TaskState, pairs: int, net: LSTMOptimizerNet) -> Particles:
    """2 * pairs copies of a freshly started task, with no noise accumulated yet."""
    states = [ts] + [copy.copy(ts) for _ in range(2 * pairs - 1)]  # shallow: every field is replaced, not mutated
    dim = sum(p.numel() for p in net.parameters())
    return Particles(states, torch.zeros(pairs, dim, device=ts.params[0].device))


def pes_step(net: LSTMOptimizerNet, particles: Particles, K: int, lr: float, sigma: float, seed: int,
             meta_loss: str = "log", correction_penalty: float = 0.0, chunk_size: int | None = None
             ) -> tuple[torch.Tensor, float, Particles, dict]:
    """One truncation of every particle -> (PES meta-gradient [D] for `net`'s flattened parameters, mean particle
    meta-loss, the particles advanced, stats). `seed` draws the noise and the inner runs' random numbers, so a
    resumed run draws the same ones."""
    pairs = particles.xi.shape[0]
    theta = parameters_to_vector(net.parameters()).detach()
    gen = torch.Generator().manual_seed(seed)
    eps = (torch.randn(pairs, theta.numel(), generator=gen) * sigma).to(theta)
    perturbed = copy.deepcopy(net).requires_grad_(False)
    devices = [theta.device.index or 0] if theta.device.type == "cuda" else []
    losses, states, finite, inner = [], [], True, []
    for i, ts in enumerate(particles.states):
        sign, pair = (1.0, i) if i < pairs else (-1.0, i - pairs)
        vector_to_parameters(theta + sign * eps[pair], perturbed.parameters())
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)  # the same inner noise for every particle
            loss, next_ts, stats = unroll(perturbed, ts, K, lr, meta_loss, False, correction_penalty, chunk_size)
        losses.append(loss.item())
        states.append(next_ts)
        finite = finite and stats["finite"] and math.isfinite(losses[-1])
        inner.append(stats["inner_loss"])
    xi = particles.xi + eps
    plus, minus = torch.tensor(losses[:pairs]), torch.tensor(losses[pairs:])
    grad = (xi * (plus - minus).to(xi)[:, None]).sum(0) / (2 * pairs * sigma ** 2)
    stats = {"inner_loss": sum(inner) / len(inner), "finite": finite}
    return grad, sum(losses) / len(losses), Particles(states, xi), stats
