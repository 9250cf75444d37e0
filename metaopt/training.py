"""The plain training step, written once for every loop that trains a model with an ordinary optimizer
(codec.train, `Task.train`'s validation runs, studies.bench, the experiments):

    zero the gradients, compute the loss, backpropagate, clip (optional), step the optimizer under study,
    then step the auxiliary parameters' own optimizer on their own loss.

Auxiliary parameters (CompressAI's entropy-bottleneck quantiles) are fitted by `aux_loss_fn` whatever the
network update did. codec.train decides between `backward` and the update (loss-spike guard, non-finite
skip, LR schedule, timing), so the parts of `train_step` are public too. Nothing here knows the model.
"""
from __future__ import annotations

from typing import Callable

import torch

Terms = dict[str, torch.Tensor]  # loss terms, the total under "loss" (CompressAI's convention)


def backward(optimizer: torch.optim.Optimizer, loss_fn: Callable[[], Terms]) -> Terms:
    """Zero the optimizer's gradients, evaluate `loss_fn()` and backpropagate its "loss"; returns the terms."""
    optimizer.zero_grad(set_to_none=True)
    terms = loss_fn()
    terms["loss"].backward()
    return terms


def clip_gradients(optimizer: torch.optim.Optimizer, max_norm: float | None) -> None:
    """Clip the gradients of the optimizer's parameters to a total norm of `max_norm` (0 or None: no clipping)."""
    if max_norm:
        torch.nn.utils.clip_grad_norm_([p for group in optimizer.param_groups for p in group["params"]], max_norm)


def aux_step(aux_optimizer: torch.optim.Optimizer, aux_loss_fn: Callable[[], torch.Tensor]) -> torch.Tensor:
    """One update of the auxiliary parameters on their own loss; returns that loss."""
    aux_optimizer.zero_grad(set_to_none=True)
    aux_loss = aux_loss_fn()
    aux_loss.backward()
    aux_optimizer.step()
    return aux_loss


def train_step(optimizer: torch.optim.Optimizer, loss_fn: Callable[[], Terms], grad_clip: float | None = None,
               aux_optimizer: torch.optim.Optimizer | None = None,
               aux_loss_fn: Callable[[], torch.Tensor] | None = None) -> Terms:
    """One whole step (see the module docstring); returns the loss terms of the batch, from before the update."""
    terms = backward(optimizer, loss_fn)
    clip_gradients(optimizer, grad_clip)
    optimizer.step()
    if aux_optimizer is not None:
        aux_step(aux_optimizer, aux_loss_fn)
    return terms
