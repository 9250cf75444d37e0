"""The compiled step (metaopt.fused) against the eager LSTMOptimizerNet.step it restates."""
import pytest
import torch

from metaopt.fused import TANH_CLAMP, FusedStep, sigmoid, tanh
from metaopt.lstm import LSTMConfig, LSTMOptimizerNet, init_state

# float32; the fused loops reassociate sums and take sigmoid and tanh from a ratio of polynomials, so agreement
# is to float32 rounding over a few steps, not bitwise.
RTOL, ATOL = 1e-5, 1e-7


ALL_FEATURES = ["grad_logsign", "adam_grad", "momenta", "param_scale", "progress"]


# Each case compiles its own loops (seconds each), so the cases cover every branch once rather than every
# combination: both archs, 1 and 2 layers, every output, odd with both of its outputs, the default and all features.
@pytest.mark.parametrize("arch,layers,output,features,odd,mlp_hidden", [
    ("coordinate", 1, "adam_correction", ALL_FEATURES, False, 3), ("coordinate", 1, "adam_correction", None, True, 3),
    ("coordinate", 2, "direct", None, True, 3), ("coordinate", 1, "direct", ALL_FEATURES, True, 3),
    ("tensor", 1, "adam_correction", ALL_FEATURES, False, 3), ("tensor", 2, "direct", None, False, 3),
    ("tensor", 1, "direct", ALL_FEATURES, True, 3), ("tensor", 1, "adam_correction", None, True, 0),
    ("coordinate", 1, "directions", ["grad_logmag", "adam_grad_abs", "momenta_abs", "momenta_agree"], False, 3),
    ("tensor", 1, "directions", ["grad_logmag", "momenta_agree", "param_scale", "progress"], False, 0)])
def test_fused_step_equals_eager_step(arch, layers, output, features, odd, mlp_hidden):
    sizes = [12, 5, 40, 1]
    for seed in (0, 1):  # a second network reuses the compiled loops: its weights must not be baked in
        torch.manual_seed(seed)
        cfg = LSTMConfig(arch=arch, hidden=3, mlp_hidden=mlp_hidden, layers=layers, output=output, out_init_std=0.5,
                         odd=odd, **({"features": features} if features else {}))
        net = LSTMOptimizerNet(cfg).requires_grad_(False)
        fused, eager_state = FusedStep(net, sizes, torch.device("cpu")), init_state(cfg, sizes)
        fused_state = init_state(cfg, sizes)
        for step in range(4):  # carried state (momenta, h, c, t) and a changing lr are compared too
            g = torch.randn(sum(sizes)) * 10.0 ** (-step)
            values = torch.randn(sum(sizes))  # read by "param_scale" only
            lr = 1e-2 / (step + 1)
            with torch.no_grad():
                expected, eager_state, _ = net.step(g, eager_state, lr, penalty=False, params=values, horizon=3)
            update = fused(g, fused_state, lr, values, horizon=3)  # "progress" reaches its clamp at step 3
            torch.testing.assert_close(update, expected, rtol=RTOL, atol=ATOL * lr)
            assert fused_state["t"] == eager_state["t"] == step + 1
            for key in ("m", "v", "h", "c"):
                torch.testing.assert_close(fused_state[key], eager_state[key], rtol=RTOL, atol=ATOL)
        assert update.abs().max() > 0


def test_exp_free_tanh_and_sigmoid_are_within_a_few_float32_roundings_everywhere():
    x = torch.cat([torch.linspace(-30, 30, 600_001), torch.logspace(-30, 1, 3001), -torch.logspace(-30, 1, 3001),
                   torch.tensor([0.0, TANH_CLAMP, -TANH_CLAMP, 1e4, -1e4])])
    got, exact = tanh(x).double(), torch.tanh(x.double())
    assert (got - exact).abs().max() < 4e-7
    assert ((got - exact).abs() / exact.abs().clamp_min(1e-38)).max() < 4e-7  # relative too, where tanh is tiny
    assert got.abs().max() <= 1.0
    assert (sigmoid(x).double() - torch.sigmoid(x.double())).abs().max() < 3e-7
    infinities = torch.tensor([float("inf"), -float("inf")])
    torch.testing.assert_close(tanh(infinities), torch.tensor([1.0, -1.0]), rtol=0, atol=4e-7)
    torch.testing.assert_close(sigmoid(infinities), torch.tensor([1.0, 0.0]), rtol=0, atol=3e-7)
