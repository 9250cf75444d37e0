"""The coordinates a learned optimizer sees: each tensor as given, or rotated into the eigenbasis of its Shampoo
statistics, the basis in which SOAP runs Adam.

Why: a per-coordinate optimizer (Adam, and a learned one built on Adam's directions) scales each coordinate on its
own, which suits a loss whose curvature is aligned with the coordinates. Shampoo's statistics (an exponential
average of G Gᵀ along each dimension of a tensor's gradient G) estimate where the curvature points; in their
eigenbasis a diagonal rule fits far better, which is why SOAP beats Adam by a wide margin on these codecs
(docs/results.md, "Races"). `ShampooBasis` lets the learned optimizer's per-coordinate network run there too: the
gradient is rotated in, the network's update rotated out. A rotation is linear, so an update that is odd in the
gradient stays odd.

The bookkeeping is pytorch-optimizer's SOAP (its statistics, eigendecompositions, power-iteration refreshes and
projections), driven here one tensor at a time; nothing of it is restated. Only one thing is added: SOAP keeps its
first moment in the tensor's own coordinates and re-sorts its second moment when a refresh re-sorts the basis,
whereas all of a learned optimizer's state lives in the basis. So `refresh` reports how the coordinates moved: the
new order, and which directions the refresh's QR turned around (metaopt.optim.follow_basis carries the state over).
"""
from __future__ import annotations

import torch

BASES = ("coordinate", "shampoo")
# SOAP's defaults: a new basis every 10 steps from statistics averaged with beta 0.95; a dimension longer than
# max_dim keeps its coordinates.
FREQUENCY, BETA, MAX_DIM = 10, 0.95, 10_000


class ShampooBasis:
    """rotate(grads) -> the gradients in the basis; unrotate(updates) -> updates back in parameter coordinates;
    refresh(grads) after each step -> how a refreshed basis moved the flat coordinates, (order, sign), or None
    when the basis was kept. `state_dict` / `load_state_dict` carry the statistics, bases and step count."""

    def __init__(self, params):
        from pytorch_optimizer import SOAP  # late: only this basis needs the package

        self.params = list(params)
        # Never stepped: it holds the per-tensor statistics and bases, and its methods maintain them.
        self.soap = SOAP(self.params, lr=1.0, betas=(BETA, BETA), shampoo_beta=BETA, weight_decay=0.0,
                         precondition_frequency=FREQUENCY, max_precondition_dim=MAX_DIM)
        self.soap.param_groups[0]["step"] = 0

    def rotate(self, grads: list[torch.Tensor]) -> list[torch.Tensor]:
        out = []
        for p, g in zip(self.params, grads):
            state = self.soap.state[p]
            if not state:  # the first basis comes from the first gradient's statistics (an eigendecomposition)
                self.soap.init_pre_conditioner(g, state, precondition_frequency=FREQUENCY, shampoo_beta=BETA,
                                               max_precondition_dim=MAX_DIM)
                self.soap.update_pre_conditioner(g, state, step=0, max_precondition_dim=MAX_DIM)
            out.append(self.soap.project(g, state, max_precondition_dim=MAX_DIM))
        return out

    def unrotate(self, updates: list[torch.Tensor]) -> list[torch.Tensor]:
        return [self.soap.project(u, self.soap.state[p], max_precondition_dim=MAX_DIM, project_type="backward")
                for p, u in zip(self.params, updates)]

    def refresh(self, grads: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Fold this step's gradients into the statistics; every FREQUENCY steps, one power iteration refreshes each
        basis and re-sorts its directions by eigenvalue. Then -> (order, sign) over the flat coordinates: new
        coordinate j follows old coordinate order[j], its direction turned by sign[j] (±1: a QR may flip a
        direction). SOAP applies the re-sorting to the tensor it keeps under "exp_avg_sq"; handing it each
        coordinate's index there reads the order back."""
        group = self.soap.param_groups[0]
        group["step"] += 1
        step = group["step"]
        if step % FREQUENCY:
            for p, g in zip(self.params, grads):
                self.soap.update_pre_conditioner(g, self.soap.state[p], step=step, max_precondition_dim=MAX_DIM)
            return None
        orders, signs, offset = [], [], 0
        for p, g in zip(self.params, grads):
            state = self.soap.state[p]
            old_bases = state["Q"]
            state["exp_avg_sq"] = torch.arange(g.numel(), device=g.device).view(g.shape)
            self.soap.update_pre_conditioner(g, state, step=step, max_precondition_dim=MAX_DIM)
            order = state.pop("exp_avg_sq").reshape(-1)
            signs.append(torch.where(alignment(state["Q"], old_bases, g.shape, order) < 0, -1.0, 1.0).to(g.dtype))
            orders.append(order + offset)
            offset += g.numel()
        return torch.cat(orders), torch.cat(signs)

    def state_dict(self) -> dict:
        return self.soap.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.soap.load_state_dict(state)


def alignment(new_bases: list, old_bases: list, shape: torch.Size, order: torch.Tensor) -> torch.Tensor:
    """<new basis vector j, old basis vector order[j]> for each flat coordinate j of a tensor of this shape. A
    tensor's basis vectors are products of one column per dimension (an empty basis: the identity there), and a
    refresh re-sorts each dimension on its own, so the inner product is a product of one factor per dimension that
    depends on the coordinate's index along that dimension alone: computed per dimension, then broadcast (taking
    every coordinate's indices apart with integer divisions cost more than the rest of a refresh)."""
    grid = order.view(shape)
    product = torch.ones([1] * len(shape), device=order.device)
    for dim, (new, old) in enumerate(zip(new_bases, old_bases)):
        if len(new):
            # the old index along `dim` of the coordinates (0, .., i, .., 0): this dimension's re-sorting
            line = grid[tuple(slice(None) if d == dim else 0 for d in range(len(shape)))]
            moved = torch.div(line, grid.stride(dim), rounding_mode="floor") % shape[dim]
            factor = (new.T @ old)[torch.arange(shape[dim], device=order.device), moved]
            product = product * factor.view([-1 if d == dim else 1 for d in range(len(shape))])
    return product.expand(shape).reshape(-1)
