"""The test oracle of `LSTMOptimizerNet.step` (tests/metaopt/test_lstm.py)."""
from __future__ import annotations

import torch
from torch import nn

from metaopt.lstm import LSTMOptimizerNet, bias_corrections, training_progress


def reference_step(net: LSTMOptimizerNet, grads: list[torch.Tensor], states: list[dict], lr: float,
                   params: list[torch.Tensor] | None = None, horizon: int | None = None
                   ) -> tuple[list[torch.Tensor], list[dict]]:
    """The slow, obviously-correct path: one parameter tensor at a time, torch.nn.LSTMCell per layer,
    torch.nn.Linear for the output layer and the MLP, plain means for the tensor statistics.

    Used by the tests to check that the flattened, fused, chunked `LSTMOptimizerNet.step` computes the
    same updates. Each entry of `states` is an `init_state(cfg, [numel])` dict for that tensor.
    """
    cfg = net.cfg
    H = cfg.hidden

    def linear(w: torch.Tensor, b: torch.Tensor | None) -> nn.Linear:
        layer = nn.Linear(w.shape[0], w.shape[1], bias=b is not None).to(w.dtype)
        with torch.no_grad():
            layer.weight.copy_(w.T)
            if b is not None:
                layer.bias.copy_(b)
        return layer

    cells = []
    for layer in range(cfg.layers):
        cell = nn.LSTMCell(net.w[layer].shape[0] - H, H).to(net.w[layer].dtype)
        with torch.no_grad():  # nn.LSTMCell computes x W_ih^T + h W_hh^T + b_ih + b_hh
            cell.weight_ih.copy_(net.w[layer][:-H].T)
            cell.weight_hh.copy_(net.w[layer][-H:].T)
            cell.bias_ih.copy_(net.b[layer])
            cell.bias_hh.zero_()
        cells.append(cell)
    out_layer = linear(net.out_w, net.out_b) if cfg.arch == "coordinate" or cfg.mlp_hidden else None
    updates, new_states = [], []
    for k_tensor, (g, st) in enumerate(zip(grads, states)):
        g = g.reshape(-1)
        p = None if params is None else params[k_tensor].reshape(-1)
        t = st["t"] + 1
        coordinate = cfg.arch == "coordinate"
        m = torch.stack([b * st["m"][k] + (1 - b) * g for k, b in enumerate(cfg.momentum_betas)])
        v = cfg.adam_beta2 * st["v"] + (1 - cfg.adam_beta2) * g * g
        width = g.numel() if coordinate else 1  # LSTM state columns per history (two histories if odd)
        outs, hs, cs = [], [], []
        for k, sign in enumerate((1, -1) if cfg.odd else (1,)):  # odd: the sign-flipped history too
            rows, d = net.feature_rows(sign * g, sign * m, v, *bias_corrections(cfg, t, g), p,
                                       training_progress(cfg, t, horizon, g))
            directions = d if k == 0 else directions
            x = torch.stack(rows, 1)  # [n, F]
            # The LSTM reads each coordinate's features, or this one tensor's feature means and mean squares.
            inp = x if coordinate else torch.cat([x.mean(0), (x * x).mean(0)])[None]
            mine = slice(k * width, (k + 1) * width)
            for layer, cell in enumerate(cells):  # nn.LSTMCell is row-major: [n, H]
                rows_l = slice(layer * H, (layer + 1) * H)
                h, c = cell(inp, (st["h"][rows_l, mine].T, st["c"][rows_l, mine].T))
                hs.append((layer, k, h.T))
                cs.append((layer, k, c.T))
                inp = h
            if coordinate:
                outs.append(out_layer(inp))
            elif cfg.mlp_hidden:
                mlp = linear(net.mlp_w, net.mlp_b)
                outs.append(out_layer(torch.relu(mlp(x))) + linear(net.tensor_out_w, None)(inp))
            else:  # no per-coordinate network: every coordinate gets the tensor's outputs
                outs.append((net.out_b + linear(net.tensor_out_w, None)(inp)).expand(x.shape[0], -1))
        if cfg.odd:  # written out, not via fold_mirrored: the step-size output even, the direct one(s) odd
            seen, mirrored = outs
            odd = (seen - mirrored) / 2
            out = odd if cfg.output == "direct" else torch.stack([(seen + mirrored)[:, 0] / 2, odd[:, 1]], 1)
        else:
            out = outs[0]
        if cfg.output == "directions":  # written out: sum_k (raw_k + [k is Adam's momentum]) * direction_k
            adam_k = 1 + cfg.momentum_betas.index(cfg.adam_beta1)
            weights = out + torch.eye(out.shape[1], dtype=out.dtype)[adam_k]
            updates.append(-lr * (weights * torch.stack(directions, 1)).sum(1))
        else:
            updates.append(-lr * net.head(out.T, directions))
        # state rows: layer by layer; columns: the history as seen, then the mirrored one
        stack = lambda parts: torch.cat([torch.cat([z for l_, k_, z in parts if l_ == layer], 1)  # noqa: E731
                                         for layer in range(cfg.layers)])
        new_states.append({**st, "m": m, "v": v, "h": stack(hs), "c": stack(cs), "t": t})
    return updates, new_states
