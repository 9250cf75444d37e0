import math

import pytest
import torch

from metaopt.lstm import LSTMConfig, LSTMOptimizerNet, init_state, preprocess_grad, training_progress
from tests.metaopt.reference import reference_step


def test_preprocess_matches_andrychowicz():
    p = 10.0
    g = torch.tensor([1.0, -math.e ** -2, 1e-6, -1e-6, 0.0], dtype=torch.float64)
    out = torch.stack(preprocess_grad(g, p), dim=1)  # [P, 2]
    assert torch.allclose(out[0], torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert torch.allclose(out[1], torch.tensor([-0.2, -1.0], dtype=torch.float64))
    # below e^-p: (-1, e^p * g)
    assert torch.allclose(out[2], torch.tensor([-1.0, math.exp(p) * 1e-6], dtype=torch.float64))
    assert torch.allclose(out[3], torch.tensor([-1.0, -math.exp(p) * 1e-6], dtype=torch.float64))
    assert out[4].tolist() == [-1.0, 0.0]


ALL_FEATURES = ["grad_logsign", "adam_grad", "momenta", "param_scale", "progress"]
EVEN = ["grad_logmag", "adam_grad_abs", "momenta_abs", "momenta_agree", "param_scale", "progress"]
HORIZON = 3  # "progress" reaches its clamp (t/T = 1) within the tests' 4 steps


@pytest.mark.parametrize("arch,layers,output,chunk,features,odd,mlp_hidden", [(*case, 8) for case in [
    ("coordinate", 1, "adam_correction", None, None, False), ("coordinate", 2, "adam_correction", 7, None, False),
    ("coordinate", 2, "direct", 5, None, False), ("coordinate", 1, "adam_correction", 7, ALL_FEATURES, False),
    ("coordinate", 2, "adam_correction", 7, None, True), ("coordinate", 1, "direct", None, None, True),
    ("coordinate", 1, "direct", 7, ALL_FEATURES, True),
    ("tensor", 1, "adam_correction", None, None, False), ("tensor", 2, "adam_correction", 7, None, False),
    ("tensor", 1, "direct", 5, None, False), ("tensor", 1, "adam_correction", None, ALL_FEATURES, False),
    ("tensor", 2, "adam_correction", 7, None, True), ("tensor", 1, "direct", 5, None, True),
    ("coordinate", 2, "directions", 7, EVEN, False), ("tensor", 1, "directions", 5, EVEN, False)]]
    + [("tensor", 1, "directions", 5, EVEN, False, 0)])  # no per-coordinate network: a per-tensor controller
def test_fast_path_equals_reference(arch, layers, output, chunk, features, odd, mlp_hidden):
    """The flat, fused, chunked step == one tensor at a time through torch.nn modules, to rtol 1e-10 in float64."""
    torch.manual_seed(0)
    cfg = LSTMConfig(arch=arch, hidden=6, layers=layers, mlp_hidden=mlp_hidden, output=output, out_init_std=0.5,
                     odd=odd, **({"features": features} if features else {}))
    net = LSTMOptimizerNet(cfg).double()
    shapes = [(3, 4), (5,), (2, 2, 2)]
    sizes = [math.prod(s) for s in shapes]
    flat_state = init_state(cfg, sizes, dtype=torch.float64)
    ref_states = [init_state(cfg, [n], dtype=torch.float64) for n in sizes]
    for _ in range(4):  # several steps, so the carried state (momenta, h, c, t) is compared too
        grads = [torch.randn(s, dtype=torch.float64) * 10 ** torch.randint(-6, 1, ()).item() for s in shapes]
        flat = torch.cat([g.reshape(-1) for g in grads])
        values = [torch.randn(s, dtype=torch.float64) for s in shapes]  # read by "param_scale" only
        with torch.no_grad():
            update, flat_state, _ = net.step(flat, flat_state, 1e-2, chunk_size=chunk,
                                             params=torch.cat([v.reshape(-1) for v in values]), horizon=HORIZON)
            ref_updates, ref_states = reference_step(net, grads, ref_states, 1e-2, values, HORIZON)
        assert torch.allclose(update, torch.cat(ref_updates), rtol=1e-10, atol=1e-14)
        for key in ("m", "v", "h", "c"):  # feature-major: tensors side by side along the last dim
            histories = 2 if odd and key in ("h", "c") else 1  # odd: [all tensors as seen | all mirrored]
            expected = torch.cat([part for k in range(histories) for s in ref_states
                                  for part in [s[key].chunk(histories, -1)[k]]], -1)
            assert torch.allclose(flat_state[key], expected, rtol=1e-10, atol=1e-14)
    assert update.abs().max() > 0


@pytest.mark.parametrize("arch", ["coordinate", "tensor"])
def test_adam_correction_is_bounded_and_starts_near_adam(arch):
    cfg = LSTMConfig(arch=arch, hidden=4, output="adam_correction", alpha=0.5, beta=0.1)
    net = LSTMOptimizerNet(cfg)
    with torch.no_grad():  # saturate the outputs: the step must stay inside the bounds
        for name, p in net.named_parameters():
            if "out_w" in name:
                p.normal_(0, 100.0)
    g = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    g = g + 0.1 * g.sign()  # |g| >= 0.1, so Adam's eps changes |m_hat/(sqrt(v_hat)+eps)| by < 1e-6
    update, _, _ = net.step(g, init_state(cfg, [1000]), lr=1.0)
    # step 1: Adam's direction is sign(g) (|m_hat/sqrt(v_hat)| = 1), so |update| <= e^alpha + beta
    assert update.abs().max() <= math.exp(0.5) + 0.1 + 1e-5
    assert update.abs().min() >= math.exp(-0.5) - 0.1 - 1e-5
    near = LSTMOptimizerNet(LSTMConfig(arch=arch, hidden=4, output="adam_correction", out_init_std=0.0))
    update, _, _ = near.step(g, init_state(near.cfg, [1000]), lr=1.0)
    assert torch.allclose(update, -torch.sign(g), atol=1e-5)  # zero output layer == Adam's first step


def test_bad_config_rejected():
    with pytest.raises(ValueError):
        LSTMConfig(features=["step_count"])
    with pytest.raises(ValueError):
        LSTMConfig(adam_beta1=0.8)
    with pytest.raises(ValueError):
        LSTMConfig(output="sgd")
    with pytest.raises(ValueError):
        LSTMConfig(arch="layer")
    with pytest.raises(ValueError, match="flip with the gradient"):
        LSTMConfig(output="directions", odd=False)  # the default features include the sign of g
    with pytest.raises(ValueError, match="odd by construction"):
        LSTMConfig(output="directions", features=EVEN, odd=True)
    with pytest.raises(ValueError, match="needs arch"):
        LSTMConfig(arch="coordinate", mlp_hidden=0)


@pytest.mark.parametrize("arch", ["coordinate", "tensor"])
def test_param_scale_feature_reads_the_parameter_values(arch):
    cfg = LSTMConfig(arch=arch, hidden=4, out_init_std=0.5, features=ALL_FEATURES[:4])
    net = LSTMOptimizerNet(cfg)
    g = torch.randn(50, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="param_scale"):
        net.step(g, init_state(cfg, [50]), lr=1.0)
    small, _, _ = net.step(g, init_state(cfg, [50]), lr=1.0, params=torch.full((50,), 1e-3))
    large, _, _ = net.step(g, init_state(cfg, [50]), lr=1.0, params=torch.full((50,), 10.0))
    assert not torch.allclose(small, large)  # same gradient, different weights: a different step


@pytest.mark.parametrize("arch", ["coordinate", "tensor"])
def test_progress_feature_reads_the_fraction_of_the_planned_steps(arch):
    cfg = LSTMConfig(arch=arch, hidden=4, out_init_std=0.5, features=["grad_logsign", "progress"])
    net = LSTMOptimizerNet(cfg)
    g = torch.randn(50, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="progress"):
        net.step(g, init_state(cfg, [50]), lr=1.0)
    state = {**init_state(cfg, [50]), "t": 9}  # the 10th step
    early, _, _ = net.step(g, state, lr=1.0, horizon=1000)
    late, _, _ = net.step(g, state, lr=1.0, horizon=10)
    assert not torch.allclose(early, late)  # same gradient and history, another point of the run
    beyond, _, _ = net.step(g, state, lr=1.0, horizon=5)  # past the plan: clamped to 1, like the last step
    torch.testing.assert_close(beyond, late)
    assert training_progress(cfg, 10, 1000, g).item() == pytest.approx(0.01)


@pytest.mark.parametrize("arch,output", [("coordinate", "direct"), ("coordinate", "adam_correction"),
                                         ("tensor", "direct"), ("tensor", "adam_correction")])
def test_odd_update_flips_with_the_gradient_history(arch, output):
    """odd: a sign-flipped gradient history gives exactly the negated updates (so no constant drift), which the
    plain network does not."""
    torch.manual_seed(0)
    grads = [torch.randn(30, dtype=torch.float64) for _ in range(5)]
    for odd in (True, False):
        cfg = LSTMConfig(arch=arch, hidden=4, output=output, out_init_std=0.5, odd=odd)
        net = LSTMOptimizerNet(cfg).double()
        with torch.no_grad():
            net.out_b.fill_(0.3)  # a constant output: what a learned drift looks like
        seen, mirrored = init_state(cfg, [30], dtype=torch.float64), init_state(cfg, [30], dtype=torch.float64)
        gaps = []
        for g in grads:
            with torch.no_grad():
                u, seen, _ = net.step(g, seen, 1e-2)
                u_neg, mirrored, _ = net.step(-g, mirrored, 1e-2)
            gaps.append((u + u_neg).abs().max().item())
        assert (max(gaps) < 1e-15) == odd, (odd, gaps)


@pytest.mark.parametrize("arch,mlp_hidden", [("coordinate", 8), ("tensor", 8), ("tensor", 0)])
def test_directions_output_is_odd_in_one_pass_and_starts_as_adam(arch, mlp_hidden):
    """output "directions": even weights (sign-free features) times odd directions, so u(-g) = -u(g) with one
    network pass and half odd's LSTM state; with a zero output layer it is Adam's step exactly."""
    torch.manual_seed(0)
    grads = [torch.randn(30, dtype=torch.float64) for _ in range(5)]
    cfg = LSTMConfig(arch=arch, hidden=4, mlp_hidden=mlp_hidden, output="directions", features=EVEN[:4], odd=False,
                     out_init_std=0.5)
    net = LSTMOptimizerNet(cfg).double()
    with torch.no_grad():
        net.out_b.fill_(0.3)  # a constant output cannot drift here: it weighs directions that flip with g
    seen, mirrored = init_state(cfg, [30], dtype=torch.float64), init_state(cfg, [30], dtype=torch.float64)
    assert seen["h"].shape[1] == (30 if arch == "coordinate" else 1)  # one history, not two
    for g in grads:
        with torch.no_grad():
            u, seen, _ = net.step(g, seen, 1e-2, params=g, horizon=10)
            u_neg, mirrored, _ = net.step(-g, mirrored, 1e-2, params=g, horizon=10)
        assert (u + u_neg).abs().max().item() < 1e-15 and u.abs().max() > 0

    adam_like = LSTMOptimizerNet(LSTMConfig(arch=arch, hidden=4, mlp_hidden=mlp_hidden, output="directions",
                                            features=EVEN[:4], odd=False, out_init_std=0.0)).double()
    params = torch.zeros(30, dtype=torch.float64, requires_grad=True)
    adam = torch.optim.Adam([params], lr=1e-2, eps=1e-8)
    state = init_state(adam_like.cfg, [30], dtype=torch.float64)
    for g in grads:
        with torch.no_grad():
            u, state, _ = adam_like.step(g, state, 1e-2)
        before = params.detach().clone()
        params.grad = g.clone()
        adam.step()
        torch.testing.assert_close(u, params.detach() - before, rtol=1e-10, atol=1e-14)
