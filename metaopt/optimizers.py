"""`make_optimizer(name, params, config)`: the one factory every training loop uses for the optimizer under study.

Config keys: `lr` (None = the optimizer's default: 1e-4 for Adam, CompressAI's; 1e-2 for SGD; the
meta-trained nominal step for the LSTM), `momentum` (SGD), `lopt` (LSTM checkpoint path; None = the
shipped `metaopt/pretrained/lopt.pt`), `lopt_compile` (LSTM: the torch.compile'd step of metaopt.fused), `steps`
(LSTM: the planned number of steps, read by an optimizer with the "progress" feature).
"""
from __future__ import annotations

import torch

from metaopt.errors import UserError
from metaopt.optim import LSTMOptimizer

OPTIMIZERS = ("adam", "sgd", "lstm")
DEFAULT_LR = {"adam": 1e-4, "sgd": 1e-2}


def make_optimizer(name: str, params, config: dict) -> torch.optim.Optimizer:
    if name not in OPTIMIZERS:
        raise UserError(f"unknown optimizer {name!r}; choose one of: {', '.join(OPTIMIZERS)}")
    lr = config.get("lr")
    if lr is not None and not float(lr) > 0:
        raise UserError(f"lr must be positive, got {lr}")
    if name == "lstm":
        return LSTMOptimizer(params, lopt=config.get("lopt"), lr=None if lr is None else float(lr),
                             compile=bool(config.get("lopt_compile", False)), horizon=config.get("steps"))
    lr = DEFAULT_LR[name] if lr is None else float(lr)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    momentum = config.get("momentum")
    return torch.optim.SGD(params, lr=lr, momentum=0.9 if momentum is None else float(momentum))
