import higher
import pytest
import torch

from metaopt.lstm import LSTMConfig, LSTMOptimizerNet
from metaopt.tasks.codec import CodecFamily
from metaopt.tasks.quadratic import RegressionFamily
from metaopt.unroll import start_task, unroll


def _codec_task():
    family = CodecFamily(["bmshj2018-hyperprior-deep"], [[8, 8]], 0.01, 0.01, crop=64, batch_size=2)
    return family.sample(0, "train")


def test_every_codec_net_parameter_is_in_the_graph():
    task = _codec_task()
    mask = task.net_mask()
    names = [n for n, _ in task.model.named_parameters()]
    assert [n for n, m in zip(names, mask) if not m] == ["entropy_bottleneck.quantiles"]
    # the inner gradient of the patched model reaches every network parameter
    fmodel = higher.monkeypatch(task.model, copy_initial_weights=True)
    params = [p.detach().clone().requires_grad_() for p in task.model.parameters()]
    fmodel.update_params(params)
    loss = task.loss(fmodel, task.batch(0))
    net_names = [n for n, m in zip(names, mask) if m]
    grads = torch.autograd.grad(loss, [p for p, m in zip(params, mask) if m], allow_unused=True)
    # None = the parameter is not in the graph (zero is legitimate: e.g. a scale below GaussianConditional's bound)
    missing = [n for n, g in zip(net_names, grads) if g is None]
    assert not missing, missing
    assert any(n.startswith("entropy_bottleneck.") for n in net_names)


@pytest.mark.parametrize("arch", ["coordinate", "tensor"])
def test_meta_gradient_reaches_every_lstm_weight_through_a_codec_unroll(arch):
    torch.manual_seed(0)
    task = _codec_task()
    # not odd: an odd update cancels the output bias, which would get no gradient
    net = LSTMOptimizerNet(LSTMConfig(arch=arch, hidden=4, layers=2, output="adam_correction", odd=False))
    ts = start_task(task, net, horizon=6)
    loss, ts1, stats = unroll(net, ts, K=3, lr=1e-3)
    loss.backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert stats["finite"] and ts1.step == 3
    # the carried state is detached: the next truncation starts a fresh graph (memory bounded by K)
    assert all(p.grad_fn is None and not p.requires_grad for p in ts1.params)
    assert all(not v.requires_grad for v in ts1.opt_state.values() if torch.is_tensor(v))
    quantiles = [i for i, m in enumerate(task.net_mask()) if not m][0]
    assert not torch.equal(ts1.params[quantiles], ts.params[quantiles])  # aux Adam did move the quantiles
    moved = [not torch.equal(a, b) for a, b, m in zip(ts1.params, ts.params, task.net_mask()) if m]
    assert all(moved)


@pytest.mark.parametrize("arch,features", [("coordinate", None), ("tensor", None),
                                           ("tensor", ["grad_logsign", "adam_grad", "momenta", "param_scale"])])
def test_meta_gradient_matches_finite_differences(arch, features):
    torch.manual_seed(0)
    task = RegressionFamily(dim=3, hidden=2, batch_size=8, dtype=torch.float64).sample(0, "train")
    net = LSTMOptimizerNet(LSTMConfig(arch=arch, hidden=3, out_init_std=0.3, output="adam_correction", odd=False,
                                      **({"features": features} if features else {}))).double()
    ts = start_task(task, net, horizon=100)
    _, ts, _ = unroll(net, ts, K=2, lr=0.05)  # start mid-run, with non-trivial carried state

    def meta_loss():
        return unroll(net, ts, K=4, lr=0.05, second_order=True, correction_penalty=0.1)[0]

    loss = meta_loss()
    grads = torch.autograd.grad(loss, list(net.parameters()))
    direction = [torch.randn_like(p) for p in net.parameters()]
    analytic = sum((g * d).sum() for g, d in zip(grads, direction)).item()
    eps = 1e-6
    with torch.no_grad():
        for p, d in zip(net.parameters(), direction):
            p.add_(eps * d)
    plus = meta_loss().item()
    with torch.no_grad():
        for p, d in zip(net.parameters(), direction):
            p.sub_(2 * eps * d)
    minus = meta_loss().item()
    numeric = (plus - minus) / (2 * eps)
    assert abs(analytic) > 1e-4
    assert abs(analytic - numeric) <= 1e-6 * max(1.0, abs(numeric)), (analytic, numeric)


def test_first_order_differs_but_stays_finite():
    torch.manual_seed(0)
    task = RegressionFamily(dim=3, hidden=2, batch_size=8, dtype=torch.float64).sample(1, "train")
    net = LSTMOptimizerNet(LSTMConfig(hidden=3, out_init_std=0.3, output="adam_correction", odd=False)).double()
    ts = start_task(task, net, horizon=100)
    g1 = torch.autograd.grad(unroll(net, ts, K=4, lr=0.05, second_order=False)[0], net.out_w)[0]
    g2 = torch.autograd.grad(unroll(net, ts, K=4, lr=0.05, second_order=True)[0], net.out_w)[0]
    assert torch.isfinite(g1).all() and not torch.allclose(g1, g2)
