import copy

import pytest
import torch
from torch import nn

from metaopt import basis as basis_module
from metaopt.basis import BETA, FREQUENCY, KERNEL, ShampooBasis, accumulate, alignment, project
from metaopt.errors import UserError
from metaopt.lstm import LSTMConfig, LSTMOptimizerNet
from metaopt.optim import PRETRAINED, LSTMOptimizer, follow_basis, load_lopt, lopt_blob, save_lopt
from metaopt.optimizers import check_optimizer_config

V1 = PRETRAINED.parent / "lopt-v1.pt"  # odd through a second pass: the mirrored LSTM state must follow the basis too


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 6, 3), nn.Tanh(), nn.Flatten(), nn.Linear(6 * 4 * 4, 1))


def _step(model, opt, step):
    g = torch.Generator().manual_seed(step)
    x = torch.randn(16, 2, 6, 6, generator=g)
    y = torch.tanh(x[:, 0, :3, :3].sum((1, 2))[:, None] / 3)
    opt.zero_grad()
    loss = (model(x) - y).pow(2).mean()
    loss.backward()
    opt.step()
    return loss.item()


def test_rotating_an_update_back_is_exact():
    p = nn.Parameter(torch.zeros(5, 3, 2))
    basis = ShampooBasis([p])
    g = torch.randn(5, 3, 2, generator=torch.Generator().manual_seed(0))
    rotated = basis.rotate([g])[0]
    assert not torch.allclose(rotated, g)
    assert torch.allclose(basis.unrotate([rotated])[0], g, atol=1e-5)


@pytest.mark.parametrize("shape, empty", [
    ((6, 4, 5, 5), ()),  # a conv weight: its kernel dimensions rotated as one
    ((6, 4, 5, 5), (2,)),  # a kernel dimension without a basis: each rotated on its own
    ((3, 9, 9), ()),  # the last two multiply past KERNEL
    ((7, 5), (0,)), ((7, 5), (1,)), ((1, 4, 1, 1), ()), ((8,), (0,)), ((2, 3, 4, 2, 2), (1,)),
])
def test_the_rotation_is_soaps_projection(shape, empty):
    from pytorch_optimizer import SOAP

    gen = torch.Generator().manual_seed(0)
    bases = [[] if dim in empty else torch.linalg.qr(torch.randn(n, n, generator=gen))[0]
             for dim, n in enumerate(shape)]
    soap = SOAP([nn.Parameter(torch.zeros(1))])
    x = torch.randn(shape, generator=gen)
    for back, direction in ((False, "forward"), (True, "backward")):
        expected = soap.project(x, {"Q": bases}, project_type=direction)
        assert torch.allclose(project(x, bases, back=back), expected, atol=1e-5)
    assert torch.allclose(project(project(x, bases), bases, back=True), x, atol=1e-5)
    assert 9 * 9 > KERNEL >= 5 * 5


# A dimension longer than 8 keeps no statistics here: (3, 9, 9) and (12, 3, 2) have such dimensions.
@pytest.mark.parametrize("shape", [(6, 4, 5, 5), (3, 9, 9), (12, 3, 2), (5, 3, 1), (7, 5), (1, 4, 1, 1), (8,),
                                   (2, 3, 4, 2, 2)])
def test_the_statistics_are_soaps(shape):
    from pytorch_optimizer import SOAP

    gen = torch.Generator().manual_seed(0)
    soap = SOAP([nn.Parameter(torch.zeros(1))])
    ours, theirs = {}, {}
    for state in (ours, theirs):
        soap.init_pre_conditioner(torch.zeros(shape), state, shampoo_beta=BETA, max_precondition_dim=8)
    for _ in range(2):
        g = torch.randn(shape, generator=gen)
        accumulate(g, ours)
        soap.update_pre_conditioner(g, theirs, step=1, max_precondition_dim=8)
    for mine, expected in zip(ours["GG"], theirs["GG"]):
        assert (not len(mine) and not len(expected)) or torch.allclose(mine, expected, rtol=1e-5, atol=1e-5)


def test_a_refresh_reports_how_it_reordered_the_coordinates():
    p = nn.Parameter(torch.zeros(3, 3))
    basis = ShampooBasis([p])
    basis.rotate([torch.diag(torch.tensor([3.0, 2.0, 1.0]))])  # first basis: directions sorted 1, 2, 3
    probe = torch.randn(3, 3)
    before = basis.rotate([probe])[0].reshape(-1)
    flipped = torch.diag(torch.tensor([1.0, 2.0, 5.0]))  # now direction 3 dominates: the refresh re-sorts
    orders = [basis.refresh([flipped]) for _ in range(FREQUENCY)]
    assert all(order is None for order in orders[:-1])
    order, sign = orders[-1]
    assert set(sign.tolist()) <= {-1.0, 1.0}
    assert sorted(order.tolist()) == list(range(9)) and order.tolist() != list(range(9))
    after = basis.rotate([probe])[0].reshape(-1)
    assert torch.allclose(after, before[order] * sign, atol=1e-5)


def test_a_refresh_of_a_four_dimensional_tensor_reports_each_coordinates_turn(monkeypatch):
    """The signs are worked out per dimension and broadcast: check them coordinate by coordinate, on a conv-shaped
    tensor whose refresh re-sorts and turns directions along several dimensions."""
    calls = []
    monkeypatch.setattr(basis_module, "alignment", lambda *args: calls.append(args) or alignment(*args))
    gen = torch.Generator().manual_seed(0)
    shape = (3, 4, 2, 5)
    basis = ShampooBasis([nn.Parameter(torch.zeros(shape))])
    basis.rotate([torch.randn(shape, generator=gen)])
    scales = torch.tensor([1.0, 9.0, 0.2])[:, None, None, None] * torch.linspace(3, 0.1, 5)  # new dominant directions
    order, sign = [basis.refresh([torch.randn(shape, generator=gen) * scales]) for _ in range(FREQUENCY)][-1]
    moved = order.view(shape)
    assert not torch.equal(moved[:, 0, 0, 0], torch.arange(3) * 40) and not torch.equal(moved[0, 0, 0], torch.arange(5))
    new_bases, old_bases, _, _ = calls[-1]
    new_index, old_index = torch.unravel_index(torch.arange(order.numel()), shape), torch.unravel_index(order, shape)
    expected = torch.ones(order.numel())
    for dim, (new, old) in enumerate(zip(new_bases, old_bases)):
        expected *= (new.T @ old)[new_index[dim], old_index[dim]]
    assert (expected < 0).any() and (expected > 0).any()
    assert torch.equal(sign, torch.where(expected < 0, -1.0, 1.0))


def test_the_learned_optimizer_in_the_basis_trains_and_stays_odd():
    model = _model()
    opt = LSTMOptimizer(model.parameters(), lopt=V1, basis="shampoo", lr=1e-2)
    losses = [_step(model, opt, step) for step in range(100)]
    assert sum(losses[-5:]) < 0.25 * sum(losses[:5])
    # odd: the negated gradient history gives the negated updates, basis refreshes included
    a, b = nn.Parameter(torch.zeros(4, 3)), nn.Parameter(torch.zeros(4, 3))
    opt_a, opt_b = LSTMOptimizer([a], lopt=V1, basis="shampoo"), LSTMOptimizer([b], lopt=V1, basis="shampoo")
    for step in range(2 * FREQUENCY + 1):
        g = torch.randn(4, 3, generator=torch.Generator().manual_seed(step))
        a.grad, b.grad = g.clone(), -g
        opt_a.step()
        opt_b.step()
    assert torch.allclose(a, -b, atol=1e-6) and a.abs().sum() > 0


@pytest.mark.parametrize("lopt", ["lopt-v1.pt", "lopt-v8.pt"])  # odd; sign-free features
def test_which_way_a_basis_direction_points_changes_no_update(lopt):
    """Turning one basis direction around, its coordinates' state carried over by follow_basis, leaves every later
    update as it was, across the refresh that follows (which reports its own turns)."""
    a, b = nn.Parameter(torch.zeros(4, 3)), nn.Parameter(torch.zeros(4, 3))
    opt_a = LSTMOptimizer([a], lopt=PRETRAINED.parent / lopt, basis="shampoo")
    opt_b = LSTMOptimizer([b], lopt=PRETRAINED.parent / lopt, basis="shampoo")
    for step in range(FREQUENCY + 5):
        g = torch.randn(4, 3, generator=torch.Generator().manual_seed(step))
        a.grad, b.grad = g.clone(), g.clone()
        opt_a.step()
        opt_b.step()
        if step == 4:
            opt_b.bases[0].soap.state[b]["Q"][0][:, 1] *= -1  # the second direction of the first dimension
            sign = torch.ones(4, 3)
            sign[1] = -1  # the coordinates (1, j) lie along it
            follow_basis(opt_b.state[b], torch.arange(12), sign.reshape(-1))
    assert torch.allclose(a, b, atol=1e-6)


def test_a_param_group_added_later_gets_its_own_basis():
    first, second = nn.Parameter(torch.zeros(4, 3)), nn.Parameter(torch.zeros(3, 2))
    opt = LSTMOptimizer([first], lopt=V1, basis="shampoo")
    opt.add_param_group({"params": [second]})
    first.grad, second.grad = torch.randn(4, 3), torch.randn(3, 2)
    opt.step()
    assert len(opt.bases) == 2 and opt.bases[1].params == [second] and second.abs().sum() > 0


def test_resuming_across_a_basis_refresh_is_exact():
    model = _model()
    opt = LSTMOptimizer(model.parameters(), lopt=V1, basis="shampoo")
    for step in range(7):
        _step(model, opt, step)
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    for step in range(7, 2 * FREQUENCY + 3):
        _step(model, opt, step)
    resumed = _model()
    resumed.load_state_dict(saved_model)
    resumed_opt = LSTMOptimizer(resumed.parameters(), lopt=V1, basis="shampoo")
    resumed_opt.load_state_dict(saved_opt)
    for step in range(7, 2 * FREQUENCY + 3):
        _step(resumed, resumed_opt, step)
    for x, y in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(x, y)
    with pytest.raises(UserError, match="another basis"):
        LSTMOptimizer(_model().parameters(), lopt=V1).load_state_dict(saved_opt)


def test_bad_basis_settings_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="basis must be one of"):
        LSTMOptimizer(_model().parameters(), basis="eigen")
    with pytest.raises(UserError, match="unknown lopt_basis"):
        check_optimizer_config("lstm", {"lopt": str(PRETRAINED), "lopt_basis": "eigen"})
    cfg = LSTMConfig(arch="coordinate", hidden=2, features=["adam_grad", "param_scale"], output="adam_correction",
                     odd=False)
    save_lopt(LSTMOptimizerNet(cfg), tmp_path / "lopt.pt", lr=1e-3)
    with pytest.raises(UserError, match="param_scale"):
        LSTMOptimizer(_model().parameters(), lopt=tmp_path / "lopt.pt", basis="shampoo")
    cfg = LSTMConfig(arch="coordinate", hidden=2, features=["adam_grad"], output="adam_correction", odd=False)
    save_lopt(LSTMOptimizerNet(cfg), tmp_path / "lopt.pt", lr=1e-3)
    with pytest.raises(UserError, match="sign-free"):
        LSTMOptimizer(_model().parameters(), lopt=tmp_path / "lopt.pt", basis="shampoo")


def test_a_file_can_store_the_basis_it_runs_in(tmp_path):
    net, blob = load_lopt(V1)
    save_lopt(net, tmp_path / "lopt.pt", lr=blob["lr"], basis="shampoo")
    assert LSTMOptimizer(_model().parameters(), lopt=tmp_path / "lopt.pt").bases
    assert not LSTMOptimizer(_model().parameters(), lopt=tmp_path / "lopt.pt", basis="coordinate").bases
    assert not LSTMOptimizer(_model().parameters(), lopt=V1).bases  # a file without the key: coordinates as given
    assert "basis" not in torch.load(V1, weights_only=False) and blob["basis"] == "coordinate"  # loading fills it in
    with pytest.raises(UserError, match="has basis 'eigen'"):
        load_lopt(lopt_blob(net, 1e-3, basis="eigen"))


def test_the_default_is_v9_run_in_the_basis_at_its_stored_step():
    assert PRETRAINED.read_bytes() == (PRETRAINED.parent / "lopt-v9.pt").read_bytes()
    _, blob = load_lopt(None)
    opt = LSTMOptimizer(_model().parameters())
    assert opt.basis == "shampoo" and opt.param_groups[0]["lr"] == blob["lr"] and blob["max_fan_in"] == 800
