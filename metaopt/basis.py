"""The coordinates a learned optimizer sees: each tensor as given, or rotated into the eigenbasis of its Shampoo
statistics, the basis in which SOAP runs Adam.

Why: a per-coordinate optimizer (Adam, and a learned one built on Adam's directions) scales each coordinate on its
own, which suits a loss whose curvature is aligned with the coordinates. Shampoo's statistics (an exponential
average of G Gᵀ along each dimension of a tensor's gradient G) estimate where the curvature points; in their
eigenbasis a diagonal rule fits far better, which is why SOAP beats Adam by a wide margin on these codecs
(docs/results.md, "Races"). `ShampooBasis` lets the learned optimizer's per-coordinate network run there too: the
gradient is rotated in, the network's update rotated out. A rotation is linear, so an update that is odd in the
gradient stays odd.

The bookkeeping is pytorch-optimizer's SOAP (its state, eigendecompositions and power-iteration refreshes), driven
here one tensor at a time. Two things are added. SOAP keeps its first moment in the tensor's own coordinates and
re-sorts its second moment when a refresh re-sorts the basis, whereas all of a learned optimizer's state lives in
the basis. So `refresh` reports how the coordinates moved: the new order, and which directions the refresh's QR
turned around (metaopt.optim.follow_basis carries the state over). And the work a step does over every coordinate,
the statistics (`gram_matrices`) and the two rotations (`project`), is SOAP's math in fewer passes over a conv
weight: SOAP's way took over a third of the learned optimizer's own step at paper scale (docs/speed.md).
"""
from __future__ import annotations

import torch

BASES = ("coordinate", "shampoo")
# SOAP's defaults: a new basis every 10 steps from statistics averaged with beta 0.95; a dimension longer than
# max_dim keeps its coordinates.
FREQUENCY, BETA, MAX_DIM = 10, 0.95, 10_000
# The last two dimensions of a tensor of three or more (a conv kernel's) are treated as one when their sizes
# multiply to at most this.
KERNEL = 64


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
                accumulate(g, state)
                state["Q"] = self.soap.get_orthogonal_matrix(state["GG"])
            out.append(project(g, state["Q"]))
        return out

    def unrotate(self, updates: list[torch.Tensor]) -> list[torch.Tensor]:
        return [project(u, self.soap.state[p]["Q"], back=True) for p, u in zip(self.params, updates)]

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
                accumulate(g, self.soap.state[p])
            return None
        orders, signs, offset = [], [], 0
        for p, g in zip(self.params, grads):
            state = self.soap.state[p]
            old_bases = state["Q"]
            state["exp_avg_sq"] = torch.arange(g.numel(), device=g.device).view(g.shape)
            accumulate(g, state)
            state["Q"] = self.soap.get_orthogonal_matrix_qr(state, max_precondition_dim=MAX_DIM)
            order = state.pop("exp_avg_sq").reshape(-1)
            signs.append(torch.where(alignment(state["Q"], old_bases, g.shape, order) < 0, -1.0, 1.0).to(g.dtype))
            orders.append(order + offset)
            offset += g.numel()
        return torch.cat(orders), torch.cat(signs)

    def state_dict(self) -> dict:
        return self.soap.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.soap.load_state_dict(state)


def joins_kernel(shape: torch.Size, has_basis: list[bool]) -> bool:
    """Whether the last two dimensions are handled as one (KERNEL): both have a basis and they are a small kernel."""
    return len(shape) >= 3 and has_basis[-1] and has_basis[-2] and shape[-1] * shape[-2] <= KERNEL


def accumulate(grad: torch.Tensor, state: dict) -> None:
    """Fold a gradient into a tensor's Shampoo statistics (SOAP's state["GG"]: one running average per dimension,
    an empty list where a dimension has none), as SOAP's `update_pre_conditioner` does."""
    grams = gram_matrices(grad, [len(average) > 0 for average in state["GG"]])
    for average, gram in zip(state["GG"], grams):
        if gram is not None:
            average.lerp_(gram, 1 - BETA)


def gram_matrices(tensor: torch.Tensor, wanted: list[bool]) -> list:
    """For each wanted dimension d, the Gram matrix of the tensor's slices along d (the sum over every other index
    of x[.., i, ..] x[.., j, ..]); None elsewhere. SOAP takes each as a tensordot over the other dimensions, which
    copies the tensor twice for every dimension but the first. Here the first and last take no copy, a middle one
    one copy, and a conv kernel's two small dimensions are read off one Gram matrix of their joint index (its two
    partial traces)."""
    shape, dims = tensor.shape, tensor.dim()
    kernel = joins_kernel(shape, wanted)
    grams = [None] * dims
    for dim in range(dims - 2 if kernel else dims):
        if wanted[dim]:
            rows = (tensor.reshape(-1, shape[dim]).T if dim == dims - 1 else
                    tensor.movedim(dim, 0).reshape(shape[dim], -1))
            grams[dim] = rows @ rows.T
    if kernel:
        height, width = shape[-2:]
        columns = tensor.reshape(-1, height * width)
        joint = (columns.T @ columns).view(height, width, height, width)
        grams[-2] = joint.diagonal(dim1=1, dim2=3).sum(-1)
        grams[-1] = joint.diagonal(dim1=0, dim2=2).sum(-1)
    return grams


def project(tensor: torch.Tensor, bases: list, back: bool = False) -> torch.Tensor:
    """The tensor's coordinates in the basis (back: a tensor given in the basis, in its own coordinates): along each
    dimension with a basis Q, Qᵀx (back: Qx); an empty basis leaves its dimension as it is. This is SOAP's
    `project` (one tensordot per dimension, each a pass over the whole tensor) except for a conv kernel: its two small
    dimensions are rotated as one, by the Kronecker product of their bases, in one pass instead of two."""
    sizes, bases = list(tensor.shape), list(bases)
    if joins_kernel(tensor.shape, [len(basis) > 0 for basis in bases]):
        sizes[-2:] = [sizes[-2] * sizes[-1]]
        bases[-2:] = [torch.kron(bases[-2], bases[-1])]
    x = tensor.reshape(sizes)
    for basis in bases:  # each turn moves the first dimension to the end, rotated
        x = torch.tensordot(x, basis, dims=[[0], [1 if back else 0]]) if len(basis) else x.movedim(0, -1)
    return x.reshape(tensor.shape)


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
