"""Ballé-style learned image codecs, built from CompressAI's layers and entropy models.

Four models, registered by name:

    bmshj2018-factorized        Ballé et al. 2017, factorized prior (CompressAI's FactorizedPrior)
    bmshj2018-hyperprior        Ballé et al. 2018, scale hyperprior  (CompressAI's ScaleHyperprior)
    bmshj2018-factorized-deep   the same, *deepened*: one extra non-strided 3x3 conv + GDN (IGDN in the
    bmshj2018-hyperprior-deep   synthesis) before every strided (de)conv of g_a and g_s

The deepened variants only replace the analysis/synthesis transforms `g_a`/`g_s`; the hyper transforms and
entropy models are CompressAI's, so `forward`, `aux_loss`, `update`, `compress` and `decompress` are the
library's own code paths.
"""
from __future__ import annotations

from pathlib import Path

import torch
from compressai.layers import GDN
from compressai.models import FactorizedPrior, ScaleHyperprior
from compressai.models.utils import conv, deconv
from torch import nn

from metaopt.errors import UserError


def _extra(in_ch: int, out_ch: int, inverse: bool) -> list[nn.Module]:
    """The non-strided layer pair the deepened models insert before each strided conv."""
    return [conv(in_ch, out_ch, kernel_size=3, stride=1), GDN(out_ch, inverse=inverse)]


def deep_analysis(N: int, M: int) -> nn.Sequential:
    return nn.Sequential(
        *_extra(3, N, inverse=False), conv(N, N), GDN(N),
        *_extra(N, N, inverse=False), conv(N, N), GDN(N),
        *_extra(N, N, inverse=False), conv(N, N), GDN(N),
        *_extra(N, N, inverse=False), conv(N, M),
    )


def deep_synthesis(N: int, M: int) -> nn.Sequential:
    return nn.Sequential(
        *_extra(M, M, inverse=True), deconv(M, N), GDN(N, inverse=True),
        *_extra(N, N, inverse=True), deconv(N, N), GDN(N, inverse=True),
        *_extra(N, N, inverse=True), deconv(N, N), GDN(N, inverse=True),
        *_extra(N, N, inverse=True), deconv(N, 3),
    )


class DeepFactorizedPrior(FactorizedPrior):
    def __init__(self, N: int, M: int, **kwargs):
        super().__init__(N, M, **kwargs)
        self.g_a = deep_analysis(N, M)
        self.g_s = deep_synthesis(N, M)


class DeepScaleHyperprior(ScaleHyperprior):
    def __init__(self, N: int, M: int, **kwargs):
        super().__init__(N, M, **kwargs)
        self.g_a = deep_analysis(N, M)
        self.g_s = deep_synthesis(N, M)


MODELS = {
    "bmshj2018-factorized": FactorizedPrior,
    "bmshj2018-hyperprior": ScaleHyperprior,
    "bmshj2018-factorized-deep": DeepFactorizedPrior,
    "bmshj2018-hyperprior-deep": DeepScaleHyperprior,
}

# Every model's input is padded to a multiple of this before coding: the largest `latent_stride`.
PAD_MULTIPLE = 64


def is_hyperprior(model: nn.Module | str) -> bool:
    """Whether a model (or a registered model name) has a hyperprior: a second latent z, coded before y."""
    return issubclass(MODELS[model] if isinstance(model, str) else type(model), ScaleHyperprior)


def latent_stride(model: nn.Module | str) -> int:
    """Spatial downsampling of the deepest latent (2^4 in g_a, 2^2 more in a hyperprior's h_a): training crops
    must be a multiple of it."""
    return 64 if is_hyperprior(model) else 16


def build_model(name: str, N: int, M: int) -> nn.Module:
    if name not in MODELS:
        raise UserError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    if N <= 0 or M <= 0:
        raise UserError(f"model sizes must be positive, got N={N}, M={M}")
    return MODELS[name](N=N, M=M)


def split_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(network parameters, auxiliary parameters).

    The entropy bottleneck's `quantiles` are fitted by CompressAI's aux loss on their own optimizer; every
    other parameter is a network parameter and goes to the optimizer under study.
    """
    net, aux = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (aux if name.endswith(".quantiles") else net).append(p)
    return net, aux


def resolve_device(name: str) -> torch.device:
    """`auto` -> CUDA when available, else CPU; an unavailable or unknown device is a UserError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda requested but no CUDA device is available")
    if name not in ("cpu", "cuda"):
        raise UserError(f"--device must be auto, cpu or cuda, got {name!r}")
    return torch.device(name)


def load_model(checkpoint: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild a model from a training checkpoint (`checkpoint.pt` or `best.pt` of `codec.train`).

    Returns (model in eval mode, checkpoint dict without the heavy optimizer states).
    """
    path = Path(checkpoint)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means the same thing to the user
        raise UserError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from None
    if not isinstance(ckpt, dict) or "model_name" not in ckpt or "model" not in ckpt:
        raise UserError(f"{path} is not a codec checkpoint (no model_name/model entries)")
    model = build_model(ckpt["model_name"], **ckpt["model_config"])
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise UserError(f"checkpoint {path} does not match model {ckpt['model_name']}: {e}") from None
    model.to(device).eval()
    meta = {k: v for k, v in ckpt.items() if k not in ("model", "optimizer", "aux_optimizer")}
    return model, meta
