"""`LSTMOptimizer`: a meta-trained LSTM optimizer as a drop-in `torch.optim.Optimizer` for any model.

The `lopt.pt` file format (FORMAT, VERSION) is a dict:
    {"format": "metaopt-lstm", "version": 1, "config": LSTMConfig as dict, "state_dict": network weights,
     "lr": nominal step size it was meta-trained with, "meta": free-form provenance,
     "max_fan_in" (optional): the largest fan-in among the parameters of the tasks it was meta-trained on,
     "basis" (optional, default "coordinate"): the basis it runs in, metaopt.basis.BASES}
Anything else — a missing file, another kind of checkpoint, another version, corrupted bytes, weights that
do not fit the config — is refused with a one-line `UserError`.

Speed: each parameter group is handled as ONE flat vector (one `torch.cat` of the gradients, the LSTM as
a few big matmuls, one `_foreach_add_` back into the parameters); no per-coordinate Python work. With
`compile=True` the step is `metaopt.fused.FusedStep`: the same update, compiled into a few fused loops that
advance the state in place (faster on large models, docs/speed.md; compiling costs a one-off delay
per process).

The fan-in rule (files with "max_fan_in"): a tensor whose fan-in is larger than any the optimizer met in
meta-training moves by max_fan_in / fan_in of its update. Why: a step of fixed size per coordinate (Adam's, and a
learned optimizer's built on Adam's directions) changes each unit's input in proportion to the unit's fan-in, which
is why muP scales Adam's step of hidden weights by 1/fan-in; the stored step, meta-trained on small codecs, diverged
on wide ones (docs/results/lopt-v8). Tensors within the meta-training range move exactly as before.

The basis (a file's "basis", or `basis=`; metaopt.basis): with "shampoo" the network sees each tensor's gradient
rotated into the eigenbasis of its Shampoo statistics, SOAP's basis, and its update is rotated back; its
per-coordinate state lives there and follows each refresh of the basis (`follow_basis`).
"""
from __future__ import annotations

import warnings
from collections import defaultdict
from pathlib import Path

import torch

from metaopt.basis import BASES, ShampooBasis
from metaopt.checkpoint import atomic_save, load
from metaopt.errors import UserError
from metaopt.fused import FusedStep
from metaopt.lstm import EVEN_FEATURES, LSTMConfig, LSTMOptimizerNet, init_state

FORMAT = "metaopt-lstm"
VERSION = 1
STATE_LAYOUT = "feature-major"  # marks optimizer states saved since m, h, c became [features, P]
PRETRAINED = Path(__file__).resolve().parent / "pretrained" / "lopt.pt"


def lopt_blob(net: LSTMOptimizerNet, lr: float, meta: dict | None = None, max_fan_in: int | None = None,
              basis: str | None = None) -> dict:
    blob = {"format": FORMAT, "version": VERSION, "config": net.cfg.to_dict(),
            "state_dict": {k: v.detach().cpu().clone() for k, v in net.state_dict().items()},
            "lr": float(lr), "meta": dict(meta or {})}
    if max_fan_in is not None:
        blob["max_fan_in"] = int(max_fan_in)
    if basis is not None:
        blob["basis"] = basis
    return blob


def save_lopt(net: LSTMOptimizerNet, path: str | Path, lr: float, meta: dict | None = None,
              max_fan_in: int | None = None, basis: str | None = None) -> None:
    atomic_save(lopt_blob(net, lr, meta, max_fan_in, basis), path)


def fan_in(p: torch.Tensor) -> int:
    """Inputs per output unit, counted as torch.nn.init counts them (the elements of one slice along the first
    dimension); 1 for vectors and scalars."""
    return p.numel() // p.shape[0] if p.dim() >= 2 else 1


def largest_fan_in(params) -> int:
    return max((fan_in(p) for p in params), default=1)


def fan_in_scales(params, max_fan_in: int | None) -> list[float]:
    """The fan-in rule's factor on each tensor's update (module docstring): min(1, max_fan_in / fan_in)."""
    return [min(1.0, max_fan_in / fan_in(p)) if max_fan_in else 1.0 for p in params]


def load_lopt(lopt: str | Path | dict | None) -> tuple[LSTMOptimizerNet, dict]:
    """Path (None = the shipped pretrained file) or blob dict -> (network, blob with "lr" a float and "basis" filled
    in). UserError if unusable."""
    if lopt is None:
        lopt = PRETRAINED
    name = "learned optimizer" if isinstance(lopt, dict) else f"learned optimizer {lopt}"
    blob = lopt if isinstance(lopt, dict) else load(lopt, what="learned optimizer file")
    if blob.get("format") != FORMAT:
        raise UserError(f"{name} is not a learned-optimizer file (expected format {FORMAT!r}; "
                        f"did you pass a training checkpoint? use RUN_DIR/lopt.pt from metaopt.meta_train)")
    if blob.get("version") != VERSION:
        raise UserError(f"{name} has format version {blob.get('version')!r}; this code reads version {VERSION}")
    try:
        net = LSTMOptimizerNet(LSTMConfig.from_dict(blob["config"]))
        net.load_state_dict(blob["state_dict"])
        lr = float(blob["lr"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise UserError(f"{name} is incompatible with this code ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if not all(torch.isfinite(p).all() for p in net.parameters()):
        raise UserError(f"{name} contains non-finite weights")
    max_fan_in = blob.get("max_fan_in")
    if max_fan_in is not None and (isinstance(max_fan_in, bool) or not isinstance(max_fan_in, int) or max_fan_in < 1):
        raise UserError(f"{name} has max_fan_in {max_fan_in!r}; expected a positive integer")
    basis = blob.get("basis", "coordinate")  # files written before bases existed run in the coordinate basis
    if basis not in BASES:
        raise UserError(f"{name} has basis {basis!r}; this code knows {', '.join(BASES)}")
    return net, {**blob, "lr": lr, "basis": basis}


class LSTMOptimizer(torch.optim.Optimizer):
    """Train any model with a meta-trained LSTM optimizer.

    LSTMOptimizer(model.parameters(), lopt=None|path|blob, lr=None, chunk_size=2**20, compile=False, horizon=None,
                  basis=None)

    `lr` is the nominal (Adam) step size of the `adam_correction` output; None = the one it was meta-trained
    with; a file with "max_fan_in" applies the fan-in rule (module docstring) on top. `horizon` is the planned
    number of steps, which an optimizer with the "progress" feature needs
    (it reads t / horizon); the constructor's value holds after `load_state_dict` too. `compile` uses the
    torch.compile'd step (`metaopt.fused`); if compiling fails (e.g. no C++ compiler) it warns once and keeps
    the eager step. `basis`: None = the file's; "shampoo" runs the network in SOAP's eigenbasis (module
    docstring). Parameters whose `.grad` is None at a step are not moved (their coordinates still see a zero
    gradient, as the flat state covers the whole group). The whole
    group's state lives, flat, in `self.state[first param of the group]`, so the stock `state_dict` /
    `load_state_dict` save and restore it; the network weights are saved alongside under "lopt" so a checkpoint
    is self-contained."""

    def __init__(self, params, lopt=None, lr: float | None = None, chunk_size: int | None = 2**20,
                 compile: bool = False, horizon: int | None = None, basis: str | None = None):
        self.net, self.blob = load_lopt(lopt)
        if basis is None:
            basis = self.blob["basis"]
        if basis not in BASES:
            raise UserError(f"basis must be one of {', '.join(BASES)}, got {basis!r}")
        if basis != "coordinate" and "param_scale" in self.net.cfg.features:
            raise UserError('a learned optimizer that reads the parameters ("param_scale") runs in their own basis '
                            'only (basis "coordinate")')
        if basis != "coordinate" and not (self.net.cfg.odd or set(self.net.cfg.features) <= set(EVEN_FEATURES)):
            # its state at a coordinate whose direction a basis refresh flips would have no counterpart (follow_basis)
            raise UserError(f'basis {basis!r} needs a learned optimizer that is odd or reads sign-free features only '
                            f'({", ".join(EVEN_FEATURES)}); this one reads {", ".join(self.net.cfg.features)}')
        self.basis = basis
        self.net.requires_grad_(False)
        if "progress" in self.net.cfg.features and not (horizon and horizon > 0):
            raise UserError("this learned optimizer reads the training progress: give the planned number of steps "
                            "(LSTMOptimizer(..., horizon=T); codec.train passes --steps)")
        self.horizon = horizon
        if lr is None:
            lr = self.blob["lr"]
        if not lr > 0:
            raise UserError(f"lr must be positive, got {lr}")
        self.chunk_size = chunk_size
        self.compile = compile
        self.fused: dict[int, FusedStep] = {}  # per param group; rebuilt after load_state_dict
        self.bases: list[ShampooBasis] = []  # one per param group (add_param_group), so a resume can restore them
        super().__init__(params, {"lr": lr, "horizon": horizon})

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        if self.basis == "shampoo":
            self.bases.append(ShampooBasis(self.param_groups[-1]["params"]))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for index, group in enumerate(self.param_groups):
            params = group["params"]
            if not params:
                continue
            has_grad = [p.grad is not None for p in params]
            if not any(has_grad):
                continue
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
            if any(g.is_complex() or g.is_sparse for g in grads):
                raise UserError("LSTMOptimizer supports dense real gradients only")
            state = self.state[params[0]]
            # A non-finite gradient (inf with a finite loss) would poison the moments and LSTM state for good:
            # skip the whole step and keep the old state. Per-tensor sums, so the check costs no copy of the
            # gradient. (A finite gradient gives a finite update: the features are clamped and the outputs bounded.)
            if not torch.isfinite(torch.stack([g.sum() for g in grads]).sum()):
                state["skipped"] = state.get("skipped", 0) + 1
                continue
            basis = self.bases[index] if self.bases else None
            flat = torch.cat([g.reshape(-1) for g in (basis.rotate(grads) if basis is not None else grads)])
            sizes = [p.numel() for p in params]
            if "t" not in state:
                state.update(init_state(self.net.cfg, sizes, flat.device, flat.dtype), layout=STATE_LAYOUT)
                self.net.to(device=flat.device, dtype=flat.dtype)
            values = torch.cat([p.reshape(-1) for p in params]) if "param_scale" in self.net.cfg.features else None
            update = (self._fused_update(index, flat, state, sizes, group["lr"], values, group["horizon"])
                      if self.compile else None)
            if update is None:
                update, new, _ = self.net.step(flat, state, group["lr"], self.chunk_size, penalty=False, params=values,
                                               horizon=group["horizon"])
                state.update(new)
            updates = [u.view_as(p) for p, u in zip(params, update.split(sizes))]
            if basis is not None:
                updates = basis.unrotate(updates)
                turned = basis.refresh(grads)
                if turned is not None:
                    follow_basis(state, *turned)
            # One fused add per distinct fan-in factor (a handful), so the rule costs no extra pass over the update.
            moved: defaultdict[float, tuple[list, list]] = defaultdict(lambda: ([], []))
            scales = fan_in_scales(params, self.blob.get("max_fan_in"))
            for p, u, ok, scale in zip(params, updates, has_grad, scales):
                if ok:
                    ps, us = moved[scale]
                    ps.append(p)
                    us.append(u)
            for scale, (ps, us) in moved.items():
                torch._foreach_add_(ps, us, alpha=scale)
        return loss

    def _fused_update(self, index: int, flat: torch.Tensor, state: dict, sizes: list[int], lr: float,
                      values: torch.Tensor | None, horizon: int | None):
        """The compiled step's update (state advanced in place), or None if compiling it failed."""
        if index in self.fused:
            return self.fused[index](flat, state, lr, values, horizon)
        self.fused[index] = FusedStep(self.net, sizes, flat.device)
        # The first call compiles, loop by loop: run it on a copy, so a failure halfway (one loop compiled and
        # run, the next not) leaves the real state untouched for the eager step.
        trial = {key: value.clone() if torch.is_tensor(value) else value for key, value in state.items()}
        try:
            update = self.fused[index](flat, trial, lr, values, horizon)
        except Exception as e:
            warnings.warn(f"LSTMOptimizer: torch.compile failed ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                          "using the eager step")
            self.compile = False
            self.fused.clear()
            return None
        state.update(trial)
        return update

    @property
    def skipped_updates(self) -> int:
        """Steps skipped because the gradient was non-finite (kept in the state, so it survives a resume)."""
        return sum(self.state[g["params"][0]].get("skipped", 0) for g in self.param_groups if g["params"])

    def state_dict(self):
        sd = super().state_dict()
        sd["lopt"] = self.blob
        if self.bases:
            sd["bases"] = [basis.state_dict() for basis in self.bases]
        return sd

    def load_state_dict(self, state_dict):
        state_dict = dict(state_dict)
        blob = state_dict.pop("lopt", None)
        bases = state_dict.pop("bases", None)
        if (bases is not None) != bool(self.bases):
            raise UserError(f"optimizer state was saved with another basis than this run's ({self.basis})")
        for basis, saved in zip(self.bases, bases or []):
            basis.load_state_dict(saved)
        if blob is not None:
            if blob.get("config") != self.blob.get("config"):
                raise UserError("optimizer state was saved with a learned optimizer of another architecture")
            self.net, self.blob = load_lopt(blob)
            self.net.requires_grad_(False)
        super().load_state_dict(state_dict)
        self.fused.clear()
        cfg = self.net.cfg
        for group in self.param_groups:  # keep the network on the parameters' device/dtype
            group["horizon"] = self.horizon  # this run's plan (older states saved none)
            if group["params"]:
                p = group["params"][0]
                self.net.to(device=p.device, dtype=p.dtype)
                state = self.state[p]
                if "t" in state and "layout" not in state:  # saved before the state became feature-major
                    keys = ("m", "h", "c") if cfg.arch == "coordinate" else ("h", "c")  # were [P, B], [rows, L*H]
                    state.update({key: state[key].T.contiguous() for key in keys}, layout=STATE_LAYOUT)


def follow_basis(state: dict, order: torch.Tensor, sign: torch.Tensor) -> None:
    """Carry the per-coordinate state over a basis refresh (ShampooBasis.refresh: new coordinate j is old coordinate
    order[j] turned by sign[j]), in place. The momenta turn with the direction; the second moment does not. The
    LSTM state of a flipped coordinate: an odd network keeps one for the history as seen and one for it mirrored,
    which swap; a network reading sign-free features only has the same state either way (the basis takes no
    other: LSTMOptimizer). A per-tensor LSTM's state is per tensor and stays."""
    # index_select, not advanced indexing: the same gather, about 4x faster on CPU
    P = order.numel()
    state["m"].copy_(state["m"].index_select(1, order).mul_(sign))
    state["v"].copy_(state["v"].index_select(0, order))
    if "sizes" in state:
        return
    if state["h"].shape[1] == 2 * P:  # odd: columns [as seen | mirrored]
        flipped = sign < 0
        columns = torch.cat([torch.where(flipped, order + P, order), torch.where(flipped, order, order + P)])
    else:
        columns = order
    for key in ("h", "c"):
        state[key].copy_(state[key].index_select(1, columns))
