"""The LSTM optimizer network, its per-coordinate input features and its state.

Two architectures (`LSTMConfig.arch`); both see the same per-coordinate features and produce the same kind of
output, and all coordinates of all parameter tensors are flattened into one vector of length P:
* ``coordinate`` (default; Andrychowicz et al. 2016): one small LSTM, shared by every coordinate, reads that
  coordinate's features and emits its update; each coordinate keeps its own LSTM state. A step is one
  [4H, F+H] x [F+H, P] matmul per layer and ~40 elementwise passes over [H, P] tensors, optionally over
  column chunks.
* ``tensor`` (the hierarchical idea of Wichrowska et al. 2017 / Metz et al. 2022 in its cheapest
  form): the LSTM steps once per parameter *tensor*, reading the mean and mean square of each feature over
  that tensor, and adds a per-tensor offset to the outputs of a per-coordinate MLP (F -> mlp_hidden -> 2).
  No per-coordinate recurrent state; per coordinate, two tiny matmuls and ~25 elementwise passes, so a step is
  several times cheaper than ``coordinate``'s (docs/speed.md); in training it was faster to the
  target loss, but less stable far past the meta-training horizon (docs/ablation.md). With ``mlp_hidden`` 0
  there is no per-coordinate network at all: every coordinate of a tensor gets that tensor's outputs, a learned
  per-tensor controller of the optimizer's directions (Almeida et al. 2021 learn per-tensor Adam hyperparameters
  in the same spirit), whose step costs little more than Adam's.
Both are feature-major ([F, P]: every per-coordinate quantity, state included, a contiguous row). This eager
`step` is what meta-training differentiates through; metaopt.fused compiles the same update for use.

Design, against the failure mode of learned optimizers run past their meta-training horizon (a direct-output
LSTM that beats tuned Adam inside its horizon and explodes far beyond it, docs/ablation.md):

* Inputs are *stationary*: the Andrychowicz log-magnitude/sign gradient encoding (p=10), the
  Adam-normalised gradient g/sqrt(v) and Adam-normalised momenta m_b/sqrt(v) at several timescales
  b (Wichrowska 2017, Lv 2017). No input depends on the absolute step count, whose values beyond the
  meta-training horizon would be out of distribution. (Adam's bias correction does depend on t, but it
  tends to 1 and is the nominal optimizer's own.) Optional: ``param_scale``, log|p| on the same scale as the
  gradient's log-magnitude (Metz et al. 2020's parameter-value input), so the step can depend on the size of
  the weight it moves; over a tensor (arch ``tensor``) its mean and mean square give the layer's scale.
  Optional: ``progress``, the fraction of the planned training done, t/T clamped to [0, 1] (VeLO's
  training-progress input, Metz et al. 2022): a schedule can be learned, and the input spans the same [0, 1]
  for a 100-step meta-training task and a 10 000-step run. It needs T: `step(..., horizon=T)`.
* Three output parameterisations:
  ``adam_correction`` (Harrison et al. 2022): a nominal Adam step times a bounded learned
  per-coordinate step-size factor, plus a bounded learned direct term,
      update = -lr * (m_hat/(sqrt(v_hat)+eps) * exp(alpha*tanh(s)) + beta*tanh(d)).
  A step is at most e^alpha times Adam's plus beta*lr whatever the LSTM outputs, and with the output layer
  near zero it *is* Adam: stable by construction, and never far from Adam, faster or slower.
  ``direct`` (Andrychowicz 2016): update = -lr * out. Free to be much faster than Adam, and alone it showed the
  failure mode above, postponed rather than removed by the stationary inputs; made ``odd`` (below) it did not,
  which is why direct and odd are LSTMConfig's defaults and v1's, lopt-v1.pt (docs/ablation.md).
  ``directions``: update = -lr * sum_k (w_k + [k is Adam's m]) * d_k over the directions d = (g, m_b for every b)
  divided by sqrt(v_hat), with per-coordinate weights w from a network that reads only sign-free features
  (EVEN_FEATURES: log|g|, |g|/sqrt(v), |m_b|/sqrt(v), sign(g) m_b/sqrt(v), the parameter scale, the progress).
  Flipping the gradient history leaves the weights unchanged and negates every direction, so u(-g) = -u(g) with
  one network pass and one LSTM state (``odd`` below needs two); with the output layer at zero it is Adam.
* ``odd`` (outputs ``direct`` and ``adam_correction``): the network also runs on the sign-flipped gradient history
  (-g, -m: exactly the odd features negated), with its own LSTM state; of the direct output only the part that flips
  with the gradient is kept, of the step-size output the part that does not (it multiplies the odd Adam direction):
  u(-g) = -u(g). Why: without it, meta-training found a constant drift (every coordinate of a tensor moved the same
  way, whatever its gradient) that pays within the horizon and grows linearly with the steps (docs/ablation.md (7),
  experiments/drift.py). Costs a second pass: of the coordinate LSTM (arch ``coordinate``), or of the tensor LSTM
  over T more columns and of the per-coordinate MLP (arch ``tensor``, where the second pass is cheap).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

FEATURES = ("grad_logsign", "adam_grad", "momenta", "param_scale", "progress", "grad_logmag", "adam_grad_abs",
            "momenta_abs", "momenta_agree")
DEFAULT_FEATURES = FEATURES[:3]
# Features that do not change when the gradient history flips sign (g, m -> -g, -m): the only ones the
# "directions" output may read, since its update is odd only if its weights are even.
EVEN_FEATURES = ("param_scale", "progress", "grad_logmag", "adam_grad_abs", "momenta_abs", "momenta_agree")
OUTPUTS = ("adam_correction", "direct", "directions")
ARCHS = ("coordinate", "tensor")


@dataclass
class LSTMConfig:
    arch: str = "coordinate"           # where the LSTM recurs: per coordinate, or per tensor (+ coordinate MLP)
    hidden: int = 8                    # units per layer (Andrychowicz: 20); a step's cost grows with it
    layers: int = 1                    # stacked LSTM layers (Andrychowicz: 2)
    mlp_hidden: int = 8                # arch "tensor": hidden units of the per-coordinate MLP; 0 = no per-coordinate
                                       # network, every coordinate of a tensor gets the tensor LSTM's outputs
    features: list = field(default_factory=lambda: list(DEFAULT_FEATURES))
    momentum_betas: list = field(default_factory=lambda: [0.5, 0.9, 0.99])
    adam_beta1: float = 0.9            # must be one of momentum_betas: its momentum is Adam's m
    adam_beta2: float = 0.999
    eps: float = 1e-8
    preprocess_p: float = 10.0        # Andrychowicz log/sign preprocessing threshold exponent
    output: str = "direct"
    alpha: float = 1.0                 # max log step-size correction: factor in [e^-alpha, e^alpha]
    beta: float = 0.1                  # max direct term, in units of lr
    out_init_std: float = 0.01         # small output layer: small first steps, yet every weight has a gradient
    odd: bool = True                   # update odd in the gradient history: u(-g) = -u(g), so it cannot drift

    def __post_init__(self):
        unknown = [f for f in self.features if f not in FEATURES]
        if unknown or not self.features:
            raise ValueError(f"features must be a non-empty subset of {FEATURES}, got {self.features}")
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {ARCHS}, got {self.arch!r}")
        if self.output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {self.output!r}")
        if self.output == "directions":
            if self.odd:
                raise ValueError('output "directions" is odd by construction: odd must be false')
            flipping = [f for f in self.features if f not in EVEN_FEATURES]
            if flipping:
                raise ValueError(f'output "directions" reads only sign-free features {EVEN_FEATURES}; '
                                 f"{flipping} flip with the gradient")
        if self.adam_beta1 not in self.momentum_betas:
            raise ValueError(f"adam_beta1={self.adam_beta1} must be one of momentum_betas={self.momentum_betas}")
        if self.hidden < 1 or self.layers < 1 or self.mlp_hidden < 0:
            raise ValueError("hidden and layers must be >= 1, mlp_hidden >= 0")
        if self.mlp_hidden == 0 and self.arch != "tensor":
            raise ValueError('mlp_hidden 0 (no per-coordinate network) needs arch "tensor"')

    @property
    def num_features(self) -> int:
        B = len(self.momentum_betas)
        sizes = {"grad_logsign": 2, "adam_grad": 1, "momenta": B, "param_scale": 1, "progress": 1, "grad_logmag": 1,
                 "adam_grad_abs": 1, "momenta_abs": B, "momenta_agree": B}
        return sum(sizes[f] for f in self.features)

    @property
    def num_outputs(self) -> int:
        """Raw outputs per coordinate: (step size, direct term), or one weight per direction (g and each m_b)."""
        return 1 + len(self.momentum_betas) if self.output == "directions" else 2

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, saved: dict) -> LSTMConfig:
        """A config as `to_dict` saved it (lopt.pt files, meta-training checkpoints), however old: a key the file
        lacks takes the value that was in force when it was written (`FORMER_DEFAULTS`), not today's default."""
        return cls(**{**FORMER_DEFAULTS, **saved})


# The defaults before they became the shipped configuration. `to_dict` writes every key, so a saved config
# without one of these keys predates it, and was written by code that behaved as these values.
FORMER_DEFAULTS = {"output": "adam_correction", "odd": False}


def preprocess_grad(g: torch.Tensor, p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Andrychowicz et al. 2016, App. A: (log|g|/p, sign g) if |g| >= e^-p, else (-1, e^p g). [P] -> 2 x [P].

    Written as two clamps (log max(|g|, e^-p) / p, and clamp(e^p g, -1, 1)), which equal the case split
    exactly and cost 6 elementwise passes instead of 10."""
    log_mag = g.abs().clamp_min(math.exp(-p)).log() / p
    sign = (g * math.exp(p)).clamp(-1.0, 1.0)
    return log_mag, sign


def init_state(cfg: LSTMConfig, sizes: list[int], device=None, dtype=torch.float32) -> dict:
    """State over the flat concatenation of tensors of these sizes, every entry feature-major (each
    per-coordinate quantity one contiguous row): momenta m [B, P], second moment v [P], step t, and the
    LSTM's h, c: [L*H, P] per coordinate, or [L*H, T] per tensor plus the tensors' `sizes` (a list of ints,
    not a tensor: torch.optim's load_state_dict would cast a tensor to the parameters' dtype); twice the
    columns if `cfg.odd` (the LSTM also runs on the sign-flipped history)."""
    P, B = sum(sizes), len(cfg.momentum_betas)
    zeros = lambda *shape: torch.zeros(*shape, device=device, dtype=dtype)  # noqa: E731
    cols = (P if cfg.arch == "coordinate" else len(sizes)) * (2 if cfg.odd else 1)  # odd: [as seen | mirrored]
    state = {"m": zeros(B, P), "v": zeros(P), "h": zeros(cfg.layers * cfg.hidden, cols),
             "c": zeros(cfg.layers * cfg.hidden, cols), "t": 0}
    if cfg.arch == "tensor":
        state["sizes"] = [int(n) for n in sizes]
    return state


def bias_corrections(cfg: LSTMConfig, t: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Adam's bias corrections at step t as tensors: (1 - beta_b^t for each momentum [B, 1], 1 - beta2^t).
    Tensors, not floats, so a compiled step (metaopt.fused) does not specialise on t."""
    betas = torch.tensor(cfg.momentum_betas, dtype=torch.float64)
    c1 = (1 - betas ** t).to(device=like.device, dtype=like.dtype)[:, None]
    return c1, torch.tensor(1 - cfg.adam_beta2 ** t, device=like.device, dtype=like.dtype)


def training_progress(cfg: LSTMConfig, t: int, horizon: int | None, like: torch.Tensor) -> torch.Tensor | None:
    """Feature "progress": t / horizon clamped to 1, as a 0-dim tensor (a compiled step does not specialise on
    it); None when the feature is off."""
    if "progress" not in cfg.features:
        return None
    if not horizon or horizon < 1:
        raise ValueError('feature "progress" needs the planned number of steps: step(..., horizon=T)')
    return torch.tensor(min(t / horizon, 1.0), device=like.device, dtype=like.dtype)


def adam_moments(m: torch.Tensor, v: torch.Tensor, g: torch.Tensor, one_minus_beta1: torch.Tensor | float,
                 one_minus_beta2: float, in_place: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Adam's moment update, m + (1 - beta1)(g - m) and v + (1 - beta2)(g^2 - v), as lerps: one elementwise pass
    each instead of three. `m` may stack several momenta [B, n], with `one_minus_beta1` [B, 1]. Plain tensor math,
    so the compiled step (metaopt.fused) traces it. `in_place` advances m and v (the compiled step's state);
    otherwise new tensors are returned, as autograd through an unroll needs the old ones."""
    if in_place:
        return m.lerp_(g.expand_as(m), one_minus_beta1), v.lerp_(g * g, one_minus_beta2)
    return torch.lerp(m, g.expand_as(m), one_minus_beta1), torch.lerp(v, g * g, one_minus_beta2)


def tensor_statistics(x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Per-tensor mean and mean square of each coordinate feature: x [F, P] -> [T, 2F] (tensors contiguous).

    Two reductions per tensor (2T kernels, no per-coordinate work, no [F, P] temporaries: the mean square is
    a squared vector norm): faster on CPU than torch.segment_reduce over x and x * x, which materialises both."""
    rows = []
    for piece, n in zip(x.split(sizes, dim=1), sizes):
        rows.append(torch.cat([piece.mean(1), torch.linalg.vector_norm(piece, dim=1).pow(2) / n]))
    return torch.stack(rows)


def detach_state(state: dict) -> dict:
    return {k: v.detach() if torch.is_tensor(v) else v for k, v in state.items()}


class LSTMOptimizerNet(nn.Module):
    """Shared weights of the learned optimizer; `step` maps (flat grad, state) -> (flat update, state).

    arch "coordinate" (Andrychowicz 2016): the LSTM runs over every coordinate, reading its features;
    its top h goes through a linear output layer. arch "tensor" (the hierarchical design of Wichrowska
    2017 / Metz 2022, reduced to its cheapest form): the LSTM runs over the *tensors*, reading per-tensor
    statistics of the coordinate features; a small per-coordinate MLP maps each coordinate's features to
    its raw outputs, to which the tensor LSTM adds a per-tensor offset. The per-coordinate work is then
    two tiny matmuls and no recurrent state, which is what makes the step cheap (docs/speed.md).

    `step` is a pure function of its inputs (it never writes to them), so it is differentiable w.r.t. the
    network weights, the gradient and the carried state — which is what the `higher` unroll needs.
    """

    def __init__(self, cfg: LSTMConfig):
        super().__init__()
        self.cfg = cfg
        H, F, K = cfg.hidden, cfg.num_features, cfg.mlp_hidden
        lstm_in = F if cfg.arch == "coordinate" else 2 * F
        # One fused weight per layer over [input, h] -> the 4 gates (i, f, g, o), like nn.LSTMCell's.
        self.w = nn.ParameterList()
        self.b = nn.ParameterList()
        for layer in range(cfg.layers):
            fan_in = (lstm_in if layer == 0 else H) + H
            self.w.append(nn.Parameter(torch.empty(fan_in, 4 * H).uniform_(-1 / math.sqrt(H), 1 / math.sqrt(H))))
            bias = torch.zeros(4 * H)
            bias[H:2 * H] = 1.0  # forget-gate bias 1: remember by default
            self.b.append(nn.Parameter(bias))
        # The output layer reads the LSTM's h (coordinate) or the MLP's hidden layer (tensor). Small, so the
        # optimizer starts as (almost) Adam, yet every weight gets a gradient.
        O = cfg.num_outputs
        if cfg.arch == "coordinate" or K:
            self.out_w = nn.Parameter(torch.randn(H if cfg.arch == "coordinate" else K, O) * cfg.out_init_std)
        self.out_b = nn.Parameter(torch.zeros(O))
        if cfg.arch == "tensor":
            if K:
                self.mlp_w = nn.Parameter(torch.empty(F, K).uniform_(-1 / math.sqrt(F), 1 / math.sqrt(F)))
                self.mlp_b = nn.Parameter(torch.zeros(K))
            self.tensor_out_w = nn.Parameter(torch.randn(H, O) * cfg.out_init_std)
        # "directions": the weight of Adam's direction m_1/sqrt(v) is 1 + its raw output, so the optimizer starts
        # as Adam (the other weights start near 0), as adam_correction does.
        self.register_buffer("direction_base", torch.zeros(O), persistent=False)
        if cfg.output == "directions":
            self.direction_base[1 + cfg.momentum_betas.index(cfg.adam_beta1)] = 1.0

    # -- features ---------------------------------------------------------------------------------
    def feature_rows(self, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor, c1: torch.Tensor, c2: torch.Tensor,
                     p: torch.Tensor | None = None, progress: torch.Tensor | None = None
                     ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(F feature rows [n], the directions the head combines: rows [n]) from the *updated* moments m [B, n],
        v [n], the `bias_corrections` c1, c2, (feature "param_scale" only) the parameter values p [n] and
        (feature "progress" only) the `training_progress`, which the sign-flipped history shares. Rows,
        not one [n, F] tensor: elementwise ops on strided columns are several times slower on CPU, and
        the compiled step (metaopt.fused) fuses rows into one loop. The directions: Adam's m_hat/(sqrt(v_hat)+eps)
        alone, or for output "directions" g and every m_hat_b over sqrt(v_hat), clamped like the features."""
        cfg = self.cfg
        m_hat = m / c1
        denom = (v / c2).sqrt() + cfg.eps
        normalised = (m_hat / denom).clamp(-10, 10)  # [B, n]
        rows = []
        for name in cfg.features:
            if name == "grad_logsign":
                rows.extend(preprocess_grad(g, cfg.preprocess_p))
            elif name == "adam_grad":
                rows.append((g / denom).clamp(-10, 10))
            elif name == "param_scale":  # log|p| on the gradient's log scale: how large the weight is
                rows.append(p.abs().clamp_min(math.exp(-cfg.preprocess_p)).log() / cfg.preprocess_p)
            elif name == "progress":
                rows.append(progress.expand_as(g))
            elif name == "grad_logmag":
                rows.append(preprocess_grad(g, cfg.preprocess_p)[0])
            elif name == "adam_grad_abs":
                rows.append((g.abs() / denom).clamp_max(10))
            elif name == "momenta_abs":
                rows.extend(normalised.abs().unbind())
            elif name == "momenta_agree":  # does each momentum point the way the gradient does: sign(g) m_b
                rows.extend((normalised * torch.sign(g)).unbind())
            else:  # momenta
                rows.extend(normalised.unbind())
        if cfg.output == "directions":
            return rows, [(g / denom).clamp(-10, 10), *normalised.unbind()]
        return rows, [m_hat[cfg.momentum_betas.index(cfg.adam_beta1)] / denom]

    # -- the fused cell ------------------------------------------------------------------------------
    def cell(self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Stacked LSTM over columns, feature-major: x [I, n], h/c [L*H, n] -> (top h [H, n], new h, new c).
        One [4H, I+H] x [I+H, n] matmul per layer; its gates are contiguous row blocks."""
        H = self.cfg.hidden
        hs, cs = [], []
        inp = x
        for layer in range(self.cfg.layers):
            rows = slice(layer * H, (layer + 1) * H)
            gates = torch.addmm(self.b[layer][:, None], self.w[layer].T, torch.cat([inp, h[rows]]))
            i, f, g, o = gates.split(H)
            c_l = torch.sigmoid(f) * c[rows] + torch.sigmoid(i) * torch.tanh(g)
            inp = torch.sigmoid(o) * torch.tanh(c_l)
            hs.append(inp)
            cs.append(c_l)
        return inp, torch.cat(hs), torch.cat(cs)

    def head(self, raw: torch.Tensor | list[torch.Tensor], directions: list[torch.Tensor]) -> torch.Tensor:
        """Raw outputs (`num_outputs` rows [n]) and `feature_rows`' directions -> update direction in units of lr
        [n] (see the module docstring)."""
        output = self.cfg.output
        if output == "direct":
            return raw[0]
        if output == "adam_correction":
            return (directions[0] * torch.exp(self.cfg.alpha * torch.tanh(raw[0]))
                    + self.cfg.beta * torch.tanh(raw[1]))
        update = (raw[0] + self.direction_base[0]) * directions[0]
        for k in range(1, len(directions)):
            update = update + (raw[k] + self.direction_base[k]) * directions[k]
        return update

    def penalty(self, out: torch.Tensor) -> torch.Tensor:
        """Sum of squares of what the correction penalty sees: the bounded outputs, or the raw unbounded ones."""
        return (torch.tanh(out) if self.cfg.output == "adam_correction" else out).pow(2).sum()

    def fold_mirrored(self, seen: torch.Tensor, mirrored: torch.Tensor) -> torch.Tensor:
        """`odd`: raw outputs [2, n] on the gradient history as seen and sign-flipped -> outputs that make the update
        odd in the gradient: the step-size row even (it multiplies the odd Adam direction), the direct row odd."""
        even, odd = (seen + mirrored) / 2, (seen - mirrored) / 2
        return odd if self.cfg.output == "direct" else torch.stack([even[0], odd[1]])

    def coordinate_outputs(self, x: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        """arch "tensor": the per-coordinate MLP, x [F, n] -> raw outputs [O, n], plus the tensor offsets [O, n]."""
        if not self.cfg.mlp_hidden:
            return offset + self.out_b[:, None]
        hidden = torch.addmm(self.mlp_b[:, None], self.mlp_w.T, x).relu_()  # in place: addmm's backward needs no output
        return torch.addmm(offset + self.out_b[:, None], self.out_w.T, hidden)

    # -- one optimizer step over a flat vector -------------------------------------------------------
    def step(self, g: torch.Tensor, state: dict, lr: float | torch.Tensor, chunk_size: int | None = None,
             penalty: bool = True, params: torch.Tensor | None = None, horizon: int | None = None
             ) -> tuple[torch.Tensor, dict, torch.Tensor]:
        """g [P] -> (update [P] to *add* to the parameters, new state, mean squared raw output (0 if not
        `penalty`: the optimizer in use needs no correction penalty, only meta-training does)). `params` [P], the
        flat parameter values, is needed by the "param_scale" feature only, `horizon` (the planned number of
        steps) by "progress" only.

        `chunk_size` coordinates at a time go through the per-coordinate network (None = all at once); the
        results are identical, only the peak memory of the [hidden, n] intermediates is bounded.
        """
        cfg = self.cfg
        if params is None and "param_scale" in cfg.features:
            raise ValueError('feature "param_scale" needs the parameter values: step(..., params=flat params)')
        t = state["t"] + 1
        c1, c2 = bias_corrections(cfg, t, g)
        progress = training_progress(cfg, t, horizon, g)
        one_minus = torch.tensor([1 - b for b in cfg.momentum_betas], dtype=g.dtype, device=g.device)[:, None]
        m, v = adam_moments(state["m"], state["v"], g, one_minus, 1 - cfg.adam_beta2)
        new = {"m": m, "v": v, "t": t}
        P = g.shape[0]
        n = P if not chunk_size or chunk_size >= P else chunk_size
        # `odd`: the network also reads the sign-flipped history (-g, -m: exactly the odd features negated),
        # with its own LSTM state, and `fold_mirrored` combines the two.
        signs = (1, -1) if cfg.odd else (1,)
        flip = lambda sign, *xs: xs if sign == 1 else tuple(-x for x in xs)  # noqa: E731
        if cfg.arch == "tensor":
            new["sizes"] = state["sizes"]
            T = len(state["sizes"])
            # Per-tensor statistics need every coordinate's features first ([F, P], small next to a coordinate
            # LSTM's state); the tensor LSTM then steps once over the T tensors (2T if odd).
            feats = [self.feature_rows(*flip(sign, g, m), v, c1, c2, params, progress) for sign in signs]
            xs, directions = [torch.stack(rows) for rows, _ in feats], feats[0][1]
            stats = torch.cat([tensor_statistics(x, state["sizes"]) for x in xs])
            h_top, new["h"], new["c"] = self.cell(stats.T, state["h"], state["c"])
            repeats = torch.tensor(state["sizes"], device=g.device)
            offsets = [(self.tensor_out_w.T @ h_top[:, k * T:(k + 1) * T]).repeat_interleave(repeats, dim=1,
                                                                                             output_size=P)
                       for k in range(len(signs))]
        dirs, hs, cs, sq = [], [[] for _ in signs], [[] for _ in signs], g.new_zeros(())
        for start in range(0, P, n):
            cols = slice(start, start + n)
            outs, cols_dirs = [], [d[cols] for d in directions] if cfg.arch == "tensor" else None
            for k, sign in enumerate(signs):
                if cfg.arch == "tensor":
                    outs.append(self.coordinate_outputs(xs[k][:, cols], offsets[k][:, cols]))
                else:
                    rows, d = self.feature_rows(*flip(sign, g[cols], m[:, cols]), v[cols], c1, c2,
                                                None if params is None else params[cols], progress)
                    cols_dirs = d if cols_dirs is None else cols_dirs  # the directions of the history as seen
                    mine = slice(k * P + start, k * P + min(start + n, P))
                    h_top, h, c = self.cell(torch.stack(rows), state["h"][:, mine], state["c"][:, mine])
                    outs.append(torch.addmm(self.out_b[:, None], self.out_w.T, h_top))
                    hs[k].append(h)
                    cs[k].append(c)
            out = self.fold_mirrored(*outs) if cfg.odd else outs[0]
            dirs.append(self.head(out, cols_dirs))
            if penalty:
                sq = sq + self.penalty(out)
        cat = lambda parts: parts[0] if len(parts) == 1 else torch.cat(parts, -1)  # noqa: E731
        if cfg.arch == "coordinate":
            new["h"], new["c"] = cat([cat(h) for h in hs]), cat([cat(c) for c in cs])
        return -lr * cat(dirs), new, sq / (2 * max(P, 1))
