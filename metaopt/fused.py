"""The learned optimizer's step for *using* it (no autograd), compiled: what `LSTMOptimizerNet.step`
computes, written as per-coordinate arithmetic over 1-D rows, so that torch.compile (inductor) turns each
phase into one vectorised loop over the coordinates that updates the state in place.

Why not torch.compile(net.step): there the small matmuls ([4H, F+H] x [F+H, P], [K, F] x [F, P]) stay separate
GEMM calls whose [*, P] outputs are written to memory and read back, and every step allocates fresh state
tensors. A learned optimizer's per-coordinate network is tiny, so its matmuls are better unrolled into
multiply-adds that the elementwise loop keeps in registers (`linear_rows`); inductor's default heuristics would
still split a loop that long, hence `COMPILE_OPTIONS` (what it gains: docs/speed.md). Meta-training
keeps the eager `step`: it needs autograd through every intermediate.

Only the math of the per-coordinate loop is restated here; features, bias corrections, the output head and the
tensor LSTM are `LSTMOptimizerNet`'s own. tests/metaopt/test_fused.py checks updates and states against `step`.
"""
from __future__ import annotations

import torch

from metaopt.lstm import LSTMOptimizerNet, adam_moments, bias_corrections, tensor_statistics, training_progress

# Let one fused loop hold the whole per-coordinate network (defaults: a node of > 50 ops is written to memory,
# a kernel fuses <= 64 nodes), so no [hidden, P] intermediate is materialised. The first option is named
# realize_cpu_opcount_threshold from torch 2.14 on and realize_opcount_threshold before; inductor refuses names it
# does not know, so only those of the installed torch are passed. The last lets the C++ compiler join a multiply and
# an add into one FMA instruction: the network is mostly multiply-adds (`linear_rows`, the gates' polynomials), and
# inductor's default (off) only exists to match eager results bit for bit, which the update need not (docs/speed.md).
COMPILE_OPTIONS = {"realize_cpu_opcount_threshold": 100_000, "realize_opcount_threshold": 100_000,
                   "max_fusion_size": 100_000, "cpp.enable_floating_point_contract_flag": "fast"}


def compile_options() -> dict:
    from torch._inductor import config  # late: only a compiled step needs inductor

    return {key: value for key, value in COMPILE_OPTIONS.items() if hasattr(config, key)}


def linear_rows(rows: list[torch.Tensor], w: torch.Tensor, b: torch.Tensor | None) -> list[torch.Tensor]:
    """y_o = b_o + sum_i rows_i * w[i, o] as explicit multiply-adds over rows (fused by the compiler)."""
    out = []
    for o in range(w.shape[1]):
        acc = rows[0] * w[0, o] if b is None else b[o] + rows[0] * w[0, o]
        for i in range(1, len(rows)):
            acc = acc + rows[i] * w[i, o]
        out.append(acc)
    return out


# A rational approximation of tanh on [-TANH_CLAMP, TANH_CLAMP], where float32 tanh has not yet rounded to +-1:
# x p(x^2) / q(x^2) with Eigen's coefficients for float tanh (degrees 6 and 3 in x^2).
TANH_NUMERATOR = (4.89352455891786e-03, 6.37261928875436e-04, 1.48572235717979e-05, 5.12229709037114e-08,
                  -8.60467152213735e-11, 2.00018790482477e-13, -2.76076847742355e-16)
TANH_DENOMINATOR = (4.89352518554385e-03, 2.26843463243900e-03, 1.18534705686654e-04, 1.19825839466702e-06)
TANH_CLAMP = 7.99881172180175781


def polynomial(x: torch.Tensor, coefficients: tuple[float, ...]) -> torch.Tensor:
    """sum_k coefficients[k] x^k, by Horner's rule."""
    out = coefficients[-1]
    for c in reversed(coefficients[:-1]):
        out = out * x + c
    return out


def tanh(x: torch.Tensor) -> torch.Tensor:
    """tanh as a ratio of polynomials, within a few float32 roundings of it everywhere. Why not torch.tanh, or
    torch.sigmoid's exp: the coordinate LSTM takes 3 sigmoids and 2 tanh per unit and coordinate each step, and
    inductor's vectorised CPU exp costs more than these multiply-adds and one division (docs/speed.md)."""
    x = x.clamp(-TANH_CLAMP, TANH_CLAMP)
    x2 = x * x
    return x * polynomial(x2, TANH_NUMERATOR) / polynomial(x2, TANH_DENOMINATOR)


def sigmoid(x: torch.Tensor) -> torch.Tensor:
    """sigmoid(x) = (1 + tanh(x / 2)) / 2, from the exp-free `tanh`."""
    return 0.5 + 0.5 * tanh(0.5 * x)


class FusedStep:
    """`fused(g, state, lr, params) -> update`: the same update as `net.step(g, state, lr, params=params)[0]`,
    with `state` (an `init_state` dict) advanced *in place*. One instance per network and parameter layout."""

    def __init__(self, net: LSTMOptimizerNet, sizes: list[int], device: torch.device):
        self.net, self.cfg = net, net.cfg
        one_minus = [1 - b for b in self.cfg.momentum_betas]
        self.one_minus = torch.tensor(one_minus, device=device)[:, None]
        compile_ = lambda fn: torch.compile(fn, dynamic=False, fullgraph=True, options=compile_options())  # noqa: E731
        if self.cfg.arch == "coordinate":
            self._coordinate = compile_(self._coordinate_loop)
            # odd: the sign-flipped history's pass is a loop of its own. One loop body holding both passes ran
            # slower than two loops, though they re-read the state and features from memory (docs/speed.md).
            self._mirrored = compile_(self._mirrored_loop) if self.cfg.odd else None
        else:
            self.sizes = list(sizes)
            # which tensor each coordinate belongs to: the per-tensor offsets are gathered, not repeated
            self.tensor_of = torch.repeat_interleave(torch.arange(len(sizes), device=device, dtype=torch.int32),
                                                     torch.tensor(sizes, device=device))
            self._features = compile_(self._features_loop)
            self._tensor_update = compile_(self._tensor_update_loop)

    @torch.no_grad()
    def __call__(self, g: torch.Tensor, state: dict, lr: float, params: torch.Tensor | None = None,
                 horizon: int | None = None) -> torch.Tensor:
        if params is None and "param_scale" in self.cfg.features:
            raise ValueError('feature "param_scale" needs the parameter values: fused(..., params=flat params)')
        t = state["t"] + 1
        c1, c2 = bias_corrections(self.cfg, t, g)
        progress = training_progress(self.cfg, t, horizon, g)
        lr = torch.tensor(lr, device=g.device, dtype=g.dtype)  # a tensor: a new lr does not recompile
        one_minus = self.one_minus.to(g.dtype)
        if self.cfg.arch == "coordinate":
            # The state as lists of rows, each its own input: inductor then writes each row back in place within
            # the loop that reads it; handed one [rows, P] tensor, it stages the new rows in temporaries and copies
            # them over in loops of their own (docs/speed.md).
            h, c = state["h"].unbind(), state["c"].unbind()
            P = g.shape[0]
            seen = (lambda rows: [row[:P] for row in rows]) if self.cfg.odd else list  # odd: [as seen | mirrored]
            update = self._coordinate(g, state["m"], state["v"], seen(h), seen(c), one_minus, c1, c2, lr, params,
                                      progress)
            if self.cfg.odd:  # `update` is the raw output rows of the history as seen
                update = self._mirrored(update, g, state["m"], state["v"], [row[P:] for row in h],
                                        [row[P:] for row in c], c1, c2, lr, params, progress)
            state["t"] = t
            return update
        # Per-tensor statistics eagerly, from the compiled features: compiled, each tensor's reductions became kernels
        # of their own, and a codec's ~90 tensors took minutes to compile (docs/results/lopt-v3). `odd`: the features
        # of the sign-flipped history too, whose statistics are the second half of the tensor LSTM's columns.
        features = self._features(g, state["m"], state["v"], one_minus, c1, c2, params, progress)
        stats = torch.cat([tensor_statistics(x, self.sizes) for x in features])
        h_top, h, c = self.net.cell(stats.T, state["h"], state["c"])  # T (odd: 2T) columns: tiny
        state["h"], state["c"] = h, c
        offset = (self.net.tensor_out_w.T @ h_top).split(len(self.sizes), dim=1)  # [outputs, T] per history
        state["t"] = t
        return self._tensor_update(g, state["m"], state["v"], c1, c2, offset, self.tensor_of, lr, params, progress)

    # -- the loops torch.compile fuses ----------------------------------------------------------------
    def _moments_and_features(self, g, m, v, one_minus, c1, c2, params, progress):
        adam_moments(m, v, g, one_minus, 1 - self.cfg.adam_beta2, in_place=True)
        return self.net.feature_rows(g, m, v, c1, c2, params, progress)

    def _lstm_rows(self, inp, h, c):
        """The coordinate LSTM on feature rows, its state h, c (lists of L*H rows [n]) advanced in place -> raw output
        rows."""
        net, H = self.net, self.cfg.hidden
        hs, cs = [], []
        for layer in range(self.cfg.layers):
            gates = linear_rows(inp + [h[layer * H + j] for j in range(H)], net.w[layer], net.b[layer])
            inp = []
            for j in range(H):
                i, f, g_, o = (gates[k * H + j] for k in range(4))
                c_j = sigmoid(f) * c[layer * H + j] + sigmoid(i) * tanh(g_)
                inp.append(sigmoid(o) * tanh(c_j))
                cs.append(c_j)
            hs.extend(inp)
        for row, new in zip(h + c, hs + cs):
            row.copy_(new)
        return linear_rows(inp, net.out_w, net.out_b)

    def _coordinate_loop(self, g, m, v, h, c, one_minus, c1, c2, lr, params, progress):
        """Moments in place, the coordinate LSTM on the history as seen -> the update, or (`odd`) the raw output
        rows [O, P]; h, c: the rows of the LSTM's state, `odd`: of the history as seen (LSTMOptimizerNet.step)."""
        inp, directions = self._moments_and_features(g, m, v, one_minus, c1, c2, params, progress)
        if not self.cfg.odd:
            return -lr * self.net.head(self._lstm_rows(inp, h, c), directions)
        return torch.stack(self._lstm_rows(inp, h, c))

    def _mirrored_loop(self, seen, g, m, v, h, c, c1, c2, lr, params, progress):
        """`odd`: the coordinate LSTM on the sign-flipped history (h, c: its state's rows), folded with the raw rows
        `seen` -> the update."""
        net = self.net
        directions = net.feature_rows(g, m, v, c1, c2, params, progress)[1]
        mirrored = self._lstm_rows(net.feature_rows(-g, -m, v, c1, c2, params, progress)[0], h, c)
        return -lr * net.head(net.fold_mirrored(seen, torch.stack(mirrored)), directions)

    def _features_loop(self, g, m, v, one_minus, c1, c2, params, progress):
        """Moments in place, and the feature rows [F, P] the per-tensor statistics are taken over (`odd`: also those
        of the sign-flipped history)."""
        rows = self._moments_and_features(g, m, v, one_minus, c1, c2, params, progress)[0]
        if not self.cfg.odd:
            return [torch.stack(rows)]
        return [torch.stack(rows), torch.stack(self.net.feature_rows(-g, -m, v, c1, c2, params, progress)[0])]

    def _coordinate_mlp(self, rows, offset, tensor_of):
        """arch "tensor": the per-coordinate MLP on feature rows plus the gathered per-tensor offsets -> raw rows."""
        net = self.net
        if not self.cfg.mlp_hidden:  # the tensor's outputs alone
            return [(net.out_b[k] + offset[k])[tensor_of] for k in range(len(offset))]
        hidden = [torch.relu(x) for x in linear_rows(rows, net.mlp_w, net.mlp_b)]
        return [y + offset[k][tensor_of] for k, y in enumerate(linear_rows(hidden, net.out_w, net.out_b))]

    def _tensor_update_loop(self, g, m, v, c1, c2, offset, tensor_of, lr, params, progress):
        net = self.net
        # The features again, from the updated moments, recomputed in registers (the per-coordinate MLP reads them)
        # rather than read back from the [F, P] the features loop wrote.
        rows, directions = net.feature_rows(g, m, v, c1, c2, params, progress)
        raw = self._coordinate_mlp(rows, offset[0], tensor_of)
        if self.cfg.odd:
            mirrored_rows = net.feature_rows(-g, -m, v, c1, c2, params, progress)[0]
            mirrored = self._coordinate_mlp(mirrored_rows, offset[1], tensor_of)
            raw = net.fold_mirrored(torch.stack(raw), torch.stack(mirrored))
        return -lr * net.head(raw, directions)
