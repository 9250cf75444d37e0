"""Imitation: train a network to reproduce a given learned optimizer's updates (distillation), not to lower a loss.

Why: a learned optimizer that saves steps can still lose in seconds if its network is costly per coordinate
(docs/speed.md). Meta-training a cheaper network from scratch is expensive and need not find the same optimizer;
imitating the costly one is a supervised problem. Who moves the inner run (`drive`):
* "teacher" (behaviour cloning): the student learns on the teacher's own runs. It sees the same gradients, so its
  LSTM state follows the history it will follow in use; but in use the parameters follow its own updates, and its
  small errors can carry it to states the teacher's runs never visit.
* "student" (DAgger, Ross et al. 2011): the student's updates move the run and the teacher labels every state it
  reaches, so it also learns what the teacher would do where its own errors lead.
The student is trained by backpropagating through its own steps over the truncation (its recurrent state), never
through the task.

The loss of a truncation is the mean over its K steps of |u_student - u_teacher|^2 / |u_teacher|^2, each update a
vector over every coordinate: scale-free, so small and large steps, tasks and loss scales weigh the same.

No library distils a PyTorch learned optimizer into another architecture, hence this file.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from metaopt.lstm import LSTMOptimizerNet, detach_state, init_state
from metaopt.unroll import TaskState, aux_adam


@dataclass
class ImitationState:
    run: TaskState        # the inner run; `run.opt_state` is the student's state
    teacher_state: dict   # the teacher's optimizer state over the same coordinates

    @property
    def done(self) -> bool:
        return self.run.done


def start_imitation(ts: TaskState, teacher: LSTMOptimizerNet) -> ImitationState:
    mask = ts.task.net_mask()
    ref = ts.params[0]
    sizes = [p.numel() for p, m in zip(ts.params, mask) if m]
    return ImitationState(ts, init_state(teacher.cfg, sizes, ref.device, ref.dtype))


def imitate(net: LSTMOptimizerNet, teacher: LSTMOptimizerNet, teacher_lr: float, state: ImitationState, K: int,
            lr: float, chunk_size: int | None = None, drive: str = "teacher"
            ) -> tuple[torch.Tensor, ImitationState, dict]:
    """K inner steps from `state`, moved by the `drive`r's updates -> (imitation loss, differentiable w.r.t. `net`'s
    weights; the state advanced, detached; stats)."""
    ts = state.run
    task, mask = ts.task, ts.task.net_mask()
    model = task.model.train()
    params = list(model.parameters())
    with torch.no_grad():
        for p, saved in zip(params, ts.params):
            p.copy_(saved)
    for p in params:
        p.requires_grad_(True)
    net_params = [p for p, m in zip(params, mask) if m]
    aux_params = [p for p, m in zip(params, mask) if not m]
    sizes = [p.numel() for p in net_params]
    wants_values = "param_scale" in net.cfg.features or "param_scale" in teacher.cfg.features
    student, teacher_state, aux_state = ts.opt_state, state.teacher_state, ts.aux_state
    terms, inner_losses = [], []
    for k in range(K):
        loss = task.loss(model, task.batch(ts.step + k))
        inner_losses.append(loss.item())
        grads = torch.autograd.grad(loss * ts.loss_scale, net_params)
        flat = torch.cat([g.reshape(-1) for g in grads])
        values = torch.cat([p.detach().reshape(-1) for p in net_params]) if wants_values else None
        with torch.no_grad():
            target, teacher_state, _ = teacher.step(flat, teacher_state, teacher_lr, chunk_size, penalty=False,
                                                    params=values, horizon=ts.horizon)
        update, student, _ = net.step(flat, student, lr, chunk_size, penalty=False, params=values, horizon=ts.horizon)
        terms.append((update - target).pow(2).sum() / target.pow(2).sum().clamp_min(1e-30))
        move = target if drive == "teacher" else update.detach()
        with torch.no_grad():
            torch._foreach_add_(net_params, [u.view_as(p) for p, u in zip(net_params, move.split(sizes))])
        aux_loss = task.aux_loss(model) if aux_params else None
        if aux_loss is not None:
            new, aux_state = aux_adam(aux_params, torch.autograd.grad(aux_loss, aux_params), aux_state, task.aux_lr)
            with torch.no_grad():
                for p, value in zip(aux_params, new):
                    p.copy_(value)
    total = torch.stack(terms).mean()
    run = ts.advanced([p.detach().clone() for p in params], student, aux_state, K)  # a copy: the model is reused
    finite = all(math.isfinite(x) for x in inner_losses)
    return total, ImitationState(run, detach_state(teacher_state)), {"inner_loss": inner_losses[-1], "finite": finite}
