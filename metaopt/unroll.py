"""The differentiable truncated unroll: K inner training steps of a task driven by the LSTM, with `higher`.

A `TaskState` is one inner training run in progress (parameters, LSTM-optimizer state, aux-Adam state,
step). `unroll` continues it for K steps and returns the meta-loss, differentiable w.r.t. the LSTM
weights, plus the next TaskState *detached*: each truncation starts from fresh leaf tensors, so the graph
(and `higher`'s list of parameter versions, which grows with every update) never outlives a truncation and
memory does not grow with the total horizon.

The model is driven through `fmodel.update_params(...)` followed by a plain `fmodel(x)` call, which
patches every submodule; passing `params=` to the forward left an entropy-bottleneck parameter out of
the graph. The tests assert that every trainable network parameter gets an inner gradient.

`second_order=False` (the default, as in Andrychowicz et al.) treats the inner gradients as constants: the
meta-gradient still flows through every parameter update into every later loss, but not through the
Hessian, which on a codec costs a double backward through GDN and the entropy models.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

import higher
import torch

from metaopt.lstm import LSTMOptimizerNet, adam_moments, detach_state, init_state
from metaopt.tasks.base import Task


@dataclass
class TaskState:
    task: Task
    params: list[torch.Tensor]     # all of task.model.parameters(), detached
    opt_state: dict                # LSTM-optimizer state over the flattened net params
    aux_state: dict                # Adam moments of the aux params
    step: int
    horizon: int                   # inner steps after which a new task is sampled
    init_loss: float               # loss at step 0, for the normalised meta-loss
    loss_scale: float              # the inner loss is multiplied by this (random scaling, meta-training only)

    @property
    def done(self) -> bool:
        return self.step >= self.horizon

    # The run in flight is checkpointed whole (meta-training's tasks are small), so a resumed run continues the very
    # same inner run from the very same step and equals an uninterrupted one.
    def state_dict(self) -> dict:
        """Every field but the task, which is sampled again from its seed."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "task"}

    def advanced(self, params: list[torch.Tensor], opt_state: dict, aux_state: dict, steps: int) -> TaskState:
        """This run `steps` further on, at these values, every tensor detached: the next truncation starts from
        leaves."""
        aux = {k: ([t.detach() for t in v] if isinstance(v, list) else v) for k, v in aux_state.items()}
        return TaskState(self.task, [p.detach() for p in params], detach_state(opt_state), aux, self.step + steps,
                         self.horizon, self.init_loss, self.loss_scale)

    @classmethod
    def from_state_dict(cls, saved: dict, task: Task) -> TaskState:
        """`state_dict`'s output (extra keys ignored) back on the task's device."""
        move = lambda x: x.to(task.device) if torch.is_tensor(x) else x  # noqa: E731
        state = {f.name: saved[f.name] for f in fields(cls) if f.name != "task"}
        state["params"] = [move(p) for p in state["params"]]
        state["opt_state"] = {k: move(v) for k, v in state["opt_state"].items()}
        state["aux_state"] = {k: [move(t) for t in v] if isinstance(v, list) else v
                              for k, v in state["aux_state"].items()}
        return cls(task, **state)


def start_task(task: Task, net: LSTMOptimizerNet, horizon: int, loss_scale: float = 1.0) -> TaskState:
    params = [p.detach().clone() for p in task.model.parameters()]
    mask = task.net_mask()
    sizes = [p.numel() for p, m in zip(params, mask) if m]
    ref = params[0]
    with torch.no_grad():
        init_loss = task.loss(task.model, task.batch(0)).item()
    aux = [p for p, m in zip(params, mask) if not m]
    aux_state = {"m": [torch.zeros_like(p) for p in aux], "v": [torch.zeros_like(p) for p in aux], "t": 0}
    return TaskState(task, params, init_state(net.cfg, sizes, ref.device, ref.dtype), aux_state, 0, horizon,
                     init_loss, loss_scale)


def aux_adam(params, grads, state, lr, betas=(0.9, 0.999), eps=1e-8):
    """A plain Adam step on the aux params, outside the meta-graph (returns new detached leaves)."""
    t = state["t"] + 1
    new, ms, vs = [], [], []
    for p, g, m, v in zip(params, grads, state["m"], state["v"]):
        m, v = adam_moments(m, v, g, 1 - betas[0], 1 - betas[1])
        step = lr * (m / (1 - betas[0] ** t)) / ((v / (1 - betas[1] ** t)).sqrt() + eps)
        new.append((p.detach() - step).requires_grad_())
        ms.append(m)
        vs.append(v)
    return new, {"m": ms, "v": vs, "t": t}


def unroll(net: LSTMOptimizerNet, ts: TaskState, K: int, lr: float, meta_loss: str = "log",
           second_order: bool = False, correction_penalty: float = 0.0, chunk_size: int | None = None,
           ) -> tuple[torch.Tensor, TaskState, dict]:
    """Run K LSTM-driven inner steps from `ts`; return (meta-loss, next TaskState (detached), stats).

    meta-loss = mean over the K post-update losses of log(loss/initial loss) ("log": tasks of any scale
    weigh the same, and a diverging step costs log(ratio), not an overflow) or of loss/initial loss
    ("mean"), plus `correction_penalty` * mean squared raw LSTM output (keeps the learned correction small).
    """
    task = ts.task
    mask = task.net_mask()
    fmodel = higher.monkeypatch(task.model, copy_initial_weights=True, track_higher_grads=True)
    fmodel.train()
    params = [p.detach().requires_grad_() for p in ts.params]
    fmodel.update_params(params)
    net_idx = [i for i, m in enumerate(mask) if m]
    aux_idx = [i for i, m in enumerate(mask) if not m]
    state, aux_state = ts.opt_state, ts.aux_state
    terms, penalty, inner_losses = [], 0.0, []
    for k in range(K + 1):
        loss = task.loss(fmodel, task.batch(ts.step + k))
        if k > 0:
            ratio = loss / ts.init_loss
            terms.append(torch.log(ratio.clamp_min(1e-12)) if meta_loss == "log" else ratio)
            inner_losses.append(loss.item())
        if k == K:
            break
        net_params = [params[i] for i in net_idx]
        grads = torch.autograd.grad(loss * ts.loss_scale, net_params, create_graph=second_order, retain_graph=True)
        flat = torch.cat([g.reshape(-1) for g in grads])
        values = torch.cat([p.reshape(-1) for p in net_params]) if "param_scale" in net.cfg.features else None
        update, state, sq = net.step(flat, state, lr, chunk_size, penalty=correction_penalty > 0, params=values,
                                     horizon=ts.horizon)
        penalty = penalty + sq
        new_params = list(params)
        for i, u in zip(net_idx, update.split([p.numel() for p in net_params])):
            new_params[i] = params[i] + u.view_as(params[i])
        aux_loss = task.aux_loss(fmodel) if aux_idx else None
        if aux_loss is not None:
            aux_params = [params[i] for i in aux_idx]
            aux_new, aux_state = aux_adam(aux_params, torch.autograd.grad(aux_loss, aux_params), aux_state,
                                          task.aux_lr)
            for i, p in zip(aux_idx, aux_new):
                new_params[i] = p
        params = new_params
        fmodel.update_params(params)
    total = torch.stack(terms).mean() + correction_penalty * penalty / K
    next_ts = ts.advanced(params, state, aux_state, K)
    finite = all(math.isfinite(x) for x in inner_losses)
    return total, next_ts, {"inner_loss": inner_losses[-1], "finite": finite}
