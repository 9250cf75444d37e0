"""Per-image distortion metrics shared by the evaluation of our codec (`codec.eval`) and of the classical
baselines (`codec.baselines`), so both curves are measured by the same code."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from pytorch_msssim import ms_ssim

from codec import bitstream
from codec.losses import psnr

MS_SSIM_MIN_SIDE = 161  # pytorch-msssim with the standard window needs a short side > 16·(11-1)
METRICS = ("bpp", "psnr-rgb", "ms-ssim-rgb", "ms-ssim-rgb-db", "encoding_time", "decoding_time")


def image_metrics(original: torch.Tensor, decoded_uint8: torch.Tensor) -> dict:
    """Distortion of one decoded image. `original` [3, H, W] float in [0, 1] (rounded to 8 bit here),
    `decoded_uint8` [H, W, 3] uint8 — the pixels a user actually gets."""
    ref = bitstream.to_uint8(original).permute(2, 0, 1)[None].double()
    rec = decoded_uint8.permute(2, 0, 1)[None].double()
    if ref.shape != rec.shape:
        raise ValueError(f"decoded size {tuple(rec.shape)} != original {tuple(ref.shape)}")
    out = {"psnr-rgb": float(psnr(((ref - rec) ** 2).mean().item(), 255.0)),
           "ms-ssim-rgb": None, "ms-ssim-rgb-db": None}
    if min(ref.shape[-2:]) >= MS_SSIM_MIN_SIDE:
        value = ms_ssim(ref.float(), rec.float(), data_range=255).item()
        out["ms-ssim-rgb"] = value
        out["ms-ssim-rgb-db"] = -10 * math.log10(max(1 - value, 1e-10))
    return out


def mean_of(records: Sequence[dict]) -> dict:
    """Mean of every numeric key over the records that have it (None where no record has a value)."""
    keys = [k for k, v in records[0].items() if isinstance(v, (int, float)) or v is None]
    out = {}
    for key in keys:
        values = [r[key] for r in records if isinstance(r.get(key), (int, float))]
        out[key] = sum(values) / len(values) if values else None
    return out
