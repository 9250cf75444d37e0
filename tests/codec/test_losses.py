import math

import pytest
import torch

from codec.losses import (MSE_LAMBDAS, RateDistortionLoss, coded_rd_loss, ms_ssim_any_size, reference_rmse,
                          rmse_weight)
from codec.models import build_model
from metaopt.errors import UserError


def test_rmse_is_sqrt_of_per_image_mse_and_matches_the_mse_operating_point():
    x = torch.rand(2, 3, 32, 32)
    x_hat = x + 0.1 * torch.randn_like(x)
    out = {"x_hat": x_hat, "likelihoods": {"y": torch.full((2, 4, 2, 2), 0.5)}}
    terms = RateDistortionLoss(0.0067, "rmse")(out, x)
    per_image = ((x_hat - x) ** 2).mean(dim=(1, 2, 3)).sqrt()
    torch.testing.assert_close(terms["distortion"], 255 * per_image.mean())
    # 2*4*2*2 symbols of 1 bit over 2*32*32 pixels
    assert terms["bpp"].item() == pytest.approx(32 / 2048)
    # the RMSE weight makes d loss / d MSE_255 equal λ at the reference RMSE
    lmbda = 0.0067
    r0 = reference_rmse(lmbda)
    assert rmse_weight(lmbda) / (2 * r0) == pytest.approx(lmbda)
    # fit reproduces the published hyperprior points within 10%
    for q, psnr_db in ((1, 27.58), (3, 30.96), (5, 34.51), (8, 40.49)):
        assert reference_rmse(MSE_LAMBDAS[q]) == pytest.approx(255 * 10 ** (-psnr_db / 20), rel=0.1)


@pytest.mark.parametrize("distortion", ["mse", "rmse", "ms-ssim"])
def test_gradients_are_finite_for_every_distortion(distortion):
    torch.manual_seed(0)
    model = build_model("bmshj2018-hyperprior", 8, 12)
    x = torch.rand(2, 3, 64, 64)
    terms = RateDistortionLoss(0.0130, distortion)(model(x), x)
    terms["loss"].backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_rmse_gradient_is_finite_at_a_perfect_reconstruction():
    x = torch.rand(1, 3, 16, 16)
    x_hat = x.clone().requires_grad_(True)
    terms = RateDistortionLoss(0.01, "rmse")({"x_hat": x_hat, "likelihoods": {"y": torch.ones(1)}}, x)
    terms["loss"].backward()
    assert torch.isfinite(x_hat.grad).all()


def test_ms_ssim_any_size_handles_small_and_large_images():
    for side in (16, 64, 200):
        x = torch.rand(1, 3, side, side)
        assert ms_ssim_any_size(x, x).item() == pytest.approx(1.0, abs=1e-4)
        assert ms_ssim_any_size(x, (x + 0.2 * torch.randn_like(x)).clamp(0, 1)).item() < 0.99


def test_bad_loss_settings():
    with pytest.raises(UserError, match="unknown distortion"):
        RateDistortionLoss(0.01, "l1")
    with pytest.raises(UserError, match="positive"):
        RateDistortionLoss(-1.0, "mse")
    assert not math.isnan(rmse_weight(0.18))


@pytest.mark.parametrize("distortion", ["mse", "rmse", "ms-ssim"])
def test_the_loss_of_a_coded_image_is_the_training_loss_of_its_numbers(distortion):
    x = torch.rand(1, 3, 192, 192)
    x_hat = (x + 0.05 * torch.randn_like(x)).clamp(0, 1)
    out = {"x_hat": x_hat, "likelihoods": {"y": torch.full((1, 4, 12, 12), 0.5)}}
    terms = RateDistortionLoss(0.0130, distortion)(out, x)
    ms_ssim = float(ms_ssim_any_size(x_hat, x))
    value = coded_rd_loss(float(terms["bpp"]), float(terms["mse"]), ms_ssim, 0.0130, distortion)
    assert value == pytest.approx(float(terms["loss"]), rel=1e-5)
    assert (coded_rd_loss(0.1, 0.01, None, 0.0130, distortion) is None) == (distortion == "ms-ssim")
