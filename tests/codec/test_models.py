import pytest
import torch
from torch import nn

from codec.models import (MODELS, PAD_MULTIPLE, build_model, is_hyperprior, latent_stride, load_model,
                          split_parameters)
from metaopt.errors import UserError


def count_convs(module):
    return sum(isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) for m in module.modules())


@pytest.mark.parametrize("name", list(MODELS))
def test_forward_aux_update_compress_round_trip(name):
    torch.manual_seed(0)
    model = build_model(name, N=8, M=12)
    x = torch.rand(1, 3, 64, 64)
    out = model(x)
    assert out["x_hat"].shape == x.shape
    assert all(torch.all((lk > 0) & (lk <= 1)) for lk in out["likelihoods"].values())
    aux = model.aux_loss()
    aux.backward()
    net, aux_params = split_parameters(model)
    assert len(aux_params) == 1 and aux_params[0].grad is not None
    assert all(p.grad is None for p in net)  # the aux loss touches only the quantiles
    model.update(force=True)
    model.eval()
    with torch.no_grad():
        coded = model.compress(x)
        decoded = model.decompress(coded["strings"], coded["shape"])
        y_hat = model.g_a(x).round() if "factorized" in name else None
    assert decoded["x_hat"].shape == x.shape
    if y_hat is not None:  # factorized: the decoder must reproduce g_s(round(y)) exactly
        torch.testing.assert_close(decoded["x_hat"], model.g_s(y_hat).clamp(0, 1), atol=1e-5, rtol=0)


@pytest.mark.parametrize("base", ["bmshj2018-factorized", "bmshj2018-hyperprior"])
def test_deepened_variants_insert_one_non_strided_conv_before_every_strided_conv(base):
    shallow, deep = build_model(base, 8, 12), build_model(base + "-deep", 8, 12)
    for transform in ("g_a", "g_s"):
        s, d = getattr(shallow, transform), getattr(deep, transform)
        assert count_convs(d) == 2 * count_convs(s) == 8
        layers = [m for m in d if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
        # alternate: non-strided extra conv, then the original strided one
        assert [m.stride[0] for m in layers] == [1, 2] * 4
    assert count_convs(deep.h_a if hasattr(deep, "h_a") else nn.Sequential()) == count_convs(
        shallow.h_a if hasattr(shallow, "h_a") else nn.Sequential())


@pytest.mark.parametrize("name", list(MODELS))
def test_latent_stride_is_the_downsampling_of_the_deepest_latent(name):
    model, x = build_model(name, N=8, M=12), torch.rand(1, 3, 128, 64)
    assert is_hyperprior(name) == is_hyperprior(model) == ("z" in model(x)["likelihoods"])
    deepest = model.h_a(model.g_a(x)) if is_hyperprior(model) else model.g_a(x)
    assert deepest.shape[-2:] == (128 // latent_stride(name), 64 // latent_stride(name))
    assert PAD_MULTIPLE % latent_stride(model) == 0


def test_build_model_rejects_unknown_names_and_sizes():
    with pytest.raises(UserError, match="unknown model"):
        build_model("bmshj2018-nope", 8, 8)
    with pytest.raises(UserError, match="positive"):
        build_model("bmshj2018-hyperprior", 0, 8)


def test_load_model_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_model(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read"):
        load_model(bad)
