"""The optimizer under study, for every training loop: `make_optimizer`, its step-size schedule `LRSchedule`, and
`evaluation_point` / `set_mode` for the schedule-free optimizer's two points.

Optimizers: `adam` (torch), `sgd` (torch, with momentum), `schedulefree` (schedule-free AdamW, the `schedulefree`
package), `soap` (Adam in Shampoo's eigenbasis, `pytorch-optimizer`'s SOAP), `lstm` (the meta-trained LSTM,
metaopt.optim). Schedules: `constant`, `cosine` (to zero at `steps`), `plateau` (CompressAI's recipe), each after
an optional linear warmup.

Config keys: `lr` (None = the optimizer's default: 1e-4 for Adam, CompressAI's; 1e-2 for SGD; the package's for
schedulefree and soap; the meta-trained nominal step for the LSTM), `momentum` (SGD), `lopt` (LSTM checkpoint
path; None = the shipped `metaopt/pretrained/lopt.pt`), `lopt_compile` (LSTM: the torch.compile'd step of
metaopt.fused), `lopt_basis` (LSTM: "coordinate" or "shampoo", metaopt.basis; None = the file's), `steps` (the
planned number of steps: cosine's length; the LSTM's horizon if it has the "progress" feature), `lopt_horizon`
(LSTM: another horizon than `steps`, None = `steps`), `lr_schedule`, `warmup_steps`.

A loop builds both before loading any checkpoint; validates, and saves the weights to use, inside
`with evaluation_point(optimizer, params)` (its resumable checkpoint keeps the training point); calls
`schedule.set_lr(step)` before each update and `schedule.validated(val_loss)` after each validation; and keeps
`schedule.state_dict()` in its checkpoint.
"""
from __future__ import annotations

import importlib
import math
from contextlib import contextmanager

import torch

from metaopt.basis import BASES
from metaopt.errors import UserError
from metaopt.optim import LSTMOptimizer, load_lopt

OPTIMIZERS = ("adam", "sgd", "schedulefree", "soap", "lstm")
LR_SCHEDULES = ("constant", "cosine", "plateau")
DEFAULT_LR = {"adam": 1e-4, "sgd": 1e-2}
# The packages of the optimizers torch lacks: (module, pip name). Both are plain dependencies of the project (pure
# Python, no compiling); the check below still turns an environment that lacks one into one line, not a traceback.
# SOAP comes from pytorch-optimizer rather than heavyball: heavyball is compile-first (torch.compile, slow to start
# and in need of a C++ compiler on CPU) and requires numpy >= 2.3, which this project's pin excludes;
# pytorch-optimizer is released often, needs only torch and numpy, and runs its SOAP eagerly on CPU and GPU.
PACKAGES = {"schedulefree": ("schedulefree", "schedulefree"), "soap": ("pytorch_optimizer", "pytorch-optimizer")}


def check_optimizer_config(name: str, config: dict) -> None:
    """Refuse, with one UserError line, everything `make_optimizer` and `LRSchedule` would: a study checks each
    planned run with it before the first one starts."""
    if name not in OPTIMIZERS:
        raise UserError(f"unknown optimizer {name!r}; choose one of: {', '.join(OPTIMIZERS)}")
    lr = config.get("lr")
    if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0):
        raise UserError(f"lr must be a positive number (or null for the optimizer's default), got {lr!r}")
    schedule = config.get("lr_schedule") or "constant"
    if schedule not in LR_SCHEDULES:
        raise UserError(f"unknown lr_schedule {schedule!r}; choose one of: {', '.join(LR_SCHEDULES)}")
    steps = config.get("steps")
    if schedule == "cosine" and not (isinstance(steps, int) and steps > 0):
        raise UserError(f"lr_schedule cosine decays to zero at the last step: it needs steps > 0, got {steps!r}")
    if name == "schedulefree" and schedule != "constant":
        raise UserError(f"schedulefree replaces the lr schedule by its iterate averaging: use lr_schedule constant "
                        f"(a warmup is fine), got {schedule!r}")
    horizon = config.get("lopt_horizon")
    if horizon is not None and not (isinstance(horizon, int) and not isinstance(horizon, bool) and horizon > 0):
        raise UserError(f"lopt_horizon must be a positive integer (or null for steps), got {horizon!r}")
    basis = config.get("lopt_basis")
    if basis is not None and basis not in BASES:
        raise UserError(f"unknown lopt_basis {basis!r}; choose one of: {', '.join(BASES)}")
    warmup = config.get("warmup_steps") or 0
    if not (isinstance(warmup, int) and warmup >= 0):
        raise UserError(f"warmup_steps must be a non-negative integer, got {warmup!r}")
    if name in PACKAGES:
        module, pip_name = PACKAGES[name]
        try:
            importlib.import_module(module)
        except ImportError:
            raise UserError(f"optimizer {name} needs the {pip_name} package, a dependency of metaopt-codec that "
                            f"this environment lacks: pip install {pip_name}") from None
    if name == "lstm":
        load_lopt(config.get("lopt"))  # a missing or foreign file fails here, not after the other runs


def make_optimizer(name: str, params, config: dict) -> torch.optim.Optimizer:
    check_optimizer_config(name, config)
    lr = config.get("lr")
    if name == "lstm":
        return LSTMOptimizer(params, lopt=config.get("lopt"), lr=None if lr is None else float(lr),
                             compile=bool(config.get("lopt_compile", False)),
                             horizon=config.get("lopt_horizon") or config.get("steps"),
                             basis=config.get("lopt_basis"))
    if name == "adam":
        return torch.optim.Adam(params, lr=DEFAULT_LR["adam"] if lr is None else float(lr))
    if name == "sgd":
        momentum = config.get("momentum")
        return torch.optim.SGD(params, lr=DEFAULT_LR["sgd"] if lr is None else float(lr),
                               momentum=0.9 if momentum is None else float(momentum))
    step = {} if lr is None else {"lr": float(lr)}
    # No weight decay, as for Adam: the race compares update rules, not regularizers (SOAP's default is 0.01).
    if name == "schedulefree":
        from schedulefree import AdamWScheduleFree

        optimizer = AdamWScheduleFree(params, weight_decay=0.0, **step)
        optimizer.train()  # built ready to step, like the others (the package builds it in eval mode)
        return optimizer
    from pytorch_optimizer import SOAP

    return SOAP(params, weight_decay=0.0, **step)


def set_mode(optimizer: torch.optim.Optimizer, mode: str) -> None:
    """Put the parameters where `mode` ("train" or "eval") wants them.

    A schedule-free optimizer takes its gradients at one point (y) and guarantees its averaged iterate (x): its
    `eval()` moves the parameters to x, to validate or save them, and `train()` back to y before the next update
    (its `step` refuses to run in eval mode). Every other optimizer has one point: a no-op.
    """
    if mode not in ("train", "eval"):
        raise ValueError(f"mode must be 'train' or 'eval', got {mode!r}")
    switch = getattr(optimizer, mode, None)
    if callable(switch):
        switch()


@contextmanager
def evaluation_point(optimizer: torch.optim.Optimizer, params):
    """`with evaluation_point(optimizer, model.parameters()):` the parameters are at the point to validate or keep
    (a schedule-free optimizer's average x, set_mode "eval"); after it, exactly back at the training point.

    The schedule-free round trip y -> x -> y rounds, which would make a run's trajectory depend on when it was
    evaluated (and a resumed run differ from an uninterrupted one): the training point is copied and put back.
    """
    if not callable(getattr(optimizer, "eval", None)):  # one point: nothing to move
        yield
        return
    params = list(params)
    saved = [p.detach().clone() for p in params]
    set_mode(optimizer, "eval")
    try:
        yield
    finally:
        set_mode(optimizer, "train")
        with torch.no_grad():
            for p, value in zip(params, saved):
                p.copy_(value)


class LRSchedule:
    """The step size before each update: the optimizer's initial lr x a linear warmup x the schedule.

    `constant` and `cosine` are functions of the step counter: nothing to save, and a loss-spike rollback (which
    restores the optimizer's state, its lr included) cannot desync them. `plateau` is CompressAI's recipe,
    torch's `ReduceLROnPlateau(optimizer, "min")` stepped with each validation loss (the lr x 0.1 after 10
    validations without improvement): it holds state, so `state_dict()` belongs in the checkpoint. Build it before
    the optimizer's state is loaded: the lr it finds then is the initial one, not a warmed-up fraction.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, config: dict):
        self.optimizer = optimizer
        self.schedule = config.get("lr_schedule") or "constant"
        self.warmup_steps = config.get("warmup_steps") or 0
        self.steps = config.get("steps")
        self.initial_lrs = [group["lr"] for group in optimizer.param_groups]
        self.plateau = (torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, "min")
                        if self.schedule == "plateau" else None)

    @property
    def active(self) -> bool:
        """False when the step size never changes: the loop can skip `set_lr`."""
        return bool(self.warmup_steps) or self.schedule != "constant"

    def factor(self, step: int) -> float:
        """The multiplier of the (plateau-reduced) initial lr before update `step + 1`."""
        factor = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        if self.schedule == "cosine":
            factor *= 0.5 * (1 + math.cos(math.pi * step / self.steps))
        return factor

    def set_lr(self, step: int) -> None:
        """Set every param group's lr for update `step + 1`."""
        factor = self.factor(step)
        for group, peak in zip(self.optimizer.param_groups, self._peak_lrs()):
            group["lr"] = peak * factor

    def validated(self, val_loss: float) -> None:
        """Feed a validation loss to the plateau rule (a no-op for the other schedules)."""
        if self.plateau is None:
            return
        # The rule reduces the lr it finds in the groups: give it the peak, not this step's warmed-up fraction.
        for group, peak in zip(self.optimizer.param_groups, self._peak_lrs()):
            group["lr"] = peak
        self.plateau.step(val_loss)

    def _peak_lrs(self) -> list[float]:
        if self.plateau is not None:
            return self.plateau.get_last_lr()  # the initial lr after the reductions so far
        return self.initial_lrs

    def state_dict(self) -> dict:
        return {"plateau": self.plateau.state_dict()} if self.plateau is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.plateau is not None:
            if "plateau" not in state:
                raise UserError("cannot resume: the checkpoint was saved without the plateau schedule's state")
            self.plateau.load_state_dict(state["plateau"])
