"""Rate–distortion losses: rate (bits per pixel from the likelihoods) + λ·D, D ∈ {MSE, RMSE, MS-SSIM}.

MSE follows CompressAI: loss = bpp + λ·255²·MSE, λ ∈ MSE_LAMBDAS for qualities 1–8.

RMSE scaling (the research point). With loss = bpp + κ·255·RMSE, the marginal price of distortion is
d loss / d MSE₂₅₅ = κ / (2·RMSE₂₅₅), whereas for the MSE loss it is the constant λ. Requiring the two
to agree at the RMSE r₀(λ) that an MSE-trained model reaches at λ gives κ = 2·λ·r₀(λ): an RMSE model trained
with the same λ lands at (to first order) the same operating point, so λ keeps meaning "quality".
r₀(λ) = 2.40·(λ/0.18)^-0.324 is a power-law fit to the Ballé-2018 hyperprior on Kodak (CompressAI's
published points, 8-bit RMSE 10.67 / 7.20 / 4.80 / 2.40 at λ = 0.0018 / 0.0067 / 0.025 / 0.18).
RMSE is taken per image, then averaged over the batch, so a batch is not dominated by its worst image.

MS-SSIM follows CompressAI: loss = bpp + λ·(1 − MS-SSIM) with its own λ scale (e.g. 2.40 … 220.0).
"""
from __future__ import annotations

import math

import torch
from pytorch_msssim import ms_ssim, ssim
from torch import nn

from metaopt.errors import UserError

MSE_LAMBDAS = {1: 0.0018, 2: 0.0035, 3: 0.0067, 4: 0.0130, 5: 0.0250, 6: 0.0483, 7: 0.0932, 8: 0.18}
DISTORTIONS = ("mse", "rmse", "ms-ssim")


def reference_rmse(lmbda: float) -> float:
    """8-bit RMSE an MSE-trained hyperprior reaches at λ (power-law fit, see module docstring)."""
    return 2.40 * (lmbda / 0.18) ** -0.324


def rmse_weight(lmbda: float) -> float:
    """κ such that bpp + κ·RMSE₂₅₅ has the same operating point as bpp + λ·MSE₂₅₅."""
    return 2.0 * lmbda * reference_rmse(lmbda)


def psnr(mse: torch.Tensor | float, data_range: float = 1.0) -> torch.Tensor | float:
    if isinstance(mse, torch.Tensor):
        return 10 * torch.log10(data_range**2 / mse.clamp_min(1e-12))
    return 10 * math.log10(data_range**2 / max(mse, 1e-12))


def ms_ssim_any_size(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """MS-SSIM per image; crops too small for the standard 11-px window use the largest window that fits.

    pytorch-msssim needs min side > 16·(win-1): 161 px for the standard window. Training crops are often
    64–128 px, so there the window shrinks (and below 33 px single-scale SSIM is used). Evaluation on
    full images always gets the standard definition.
    """
    side = min(x.shape[-2:])
    if side > 160:
        return ms_ssim(x, y, data_range=data_range, size_average=False)
    if side > 32:
        win = (side - 1) // 16 + 1
        win -= 1 - win % 2  # largest odd window with 16·(win−1) < side
        return ms_ssim(x, y, data_range=data_range, size_average=False, win_size=max(win, 3))
    return ssim(x, y, data_range=data_range, size_average=False, win_size=min(11, side - (1 - side % 2)))


def bits_per_pixel(likelihoods: dict[str, torch.Tensor], num_pixels: int) -> torch.Tensor:
    return sum(torch.log(lk).sum() for lk in likelihoods.values()) / (-math.log(2) * num_pixels)


def distortion_weight(lmbda: float, distortion: str) -> float:
    """The factor of the distortion term in the loss: λ, or κ for RMSE (see module docstring)."""
    return rmse_weight(lmbda) if distortion == "rmse" else lmbda


def coded_rd_loss(bpp: float, mse: float, ms_ssim: float | None, lmbda: float, distortion: str) -> float | None:
    """The training objective of one image measured on a real bitstream: `bpp` from its bytes, `mse` (of [0, 1]
    pixels) and `ms_ssim` of the decoded 8-bit image. None for MS-SSIM on an image too small for its window."""
    if distortion == "ms-ssim":
        return None if ms_ssim is None else bpp + lmbda * (1 - ms_ssim)
    value = 255**2 * mse if distortion == "mse" else 255 * math.sqrt(mse)
    return bpp + distortion_weight(lmbda, distortion) * value


class RateDistortionLoss(nn.Module):
    def __init__(self, lmbda: float, distortion: str = "mse"):
        super().__init__()
        if distortion not in DISTORTIONS:
            raise UserError(f"unknown distortion {distortion!r}; choose one of: {', '.join(DISTORTIONS)}")
        if not lmbda > 0:
            raise UserError(f"lmbda must be positive, got {lmbda}")
        self.lmbda, self.distortion = lmbda, distortion

    def forward(self, output: dict, target: torch.Tensor) -> dict[str, torch.Tensor]:
        n, _, h, w = target.shape
        bpp = bits_per_pixel(output["likelihoods"], n * h * w)
        x_hat = output["x_hat"]
        mse_per_image = (x_hat - target).pow(2).mean(dim=(1, 2, 3))
        mse = mse_per_image.mean()
        if self.distortion == "mse":
            distortion = 255**2 * mse
        elif self.distortion == "rmse":
            # the epsilon keeps d sqrt/dx finite at a perfect reconstruction
            distortion = 255 * (mse_per_image + 1e-10).sqrt().mean()
        else:
            distortion = 1 - ms_ssim_any_size(x_hat.clamp(0, 1), target).mean()
        loss = bpp + distortion_weight(self.lmbda, self.distortion) * distortion
        return {"loss": loss, "bpp": bpp, "mse": mse, "distortion": distortion, "psnr": psnr(mse.detach())}
