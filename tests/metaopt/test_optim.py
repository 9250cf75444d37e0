import copy
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn

from metaopt.errors import UserError
from metaopt.lstm import LSTMConfig, LSTMOptimizerNet
from metaopt.optim import PRETRAINED, LSTMOptimizer, fan_in, load_lopt, lopt_blob, save_lopt
from metaopt.optimizers import make_optimizer


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 1))


def _data(step):
    g = torch.Generator().manual_seed(step)
    x = torch.randn(32, 6, generator=g)
    return x, torch.tanh(x[:, :3].sum(1, keepdim=True) / 2)


def _train(model, opt, steps, start=0):
    losses = []
    for step in range(start, start + steps):
        x, y = _data(step)
        opt.zero_grad()
        loss = (model(x) - y).pow(2).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.fixture(params=["coordinate", "tensor", "tensor+param_scale", "controller"])
def lopt_file(tmp_path, request):
    torch.manual_seed(1)
    path = tmp_path / "lopt.pt"
    arch, _, extra = request.param.partition("+")
    features = ["grad_logsign", "adam_grad", "momenta"] + ([extra] if extra else [])
    # adam_correction and directions: untrained, they are (almost) Adam, so these tests can expect them to train
    if arch == "controller":  # the per-tensor controller: no per-coordinate network (configs/meta/v3.yaml)
        cfg = LSTMConfig(arch="tensor", hidden=4, mlp_hidden=0, output="directions", odd=False,
                         features=["grad_logmag", "momenta_agree", "param_scale"])
    else:
        cfg = LSTMConfig(arch=arch, hidden=4, features=features, output="adam_correction", odd=False)
    save_lopt(LSTMOptimizerNet(cfg), path, lr=1e-2)
    return path


def test_trains_a_torch_model(lopt_file):
    model = _model()
    losses = _train(model, LSTMOptimizer(model.parameters(), lopt=lopt_file), 150)
    assert sum(losses[-10:]) / 10 < 0.3 * sum(losses[:10]) / 10


def test_shipped_optimizer_trains_a_torch_model():
    model = _model()
    opt = make_optimizer("lstm", model.parameters(), {"lr": None, "lopt": None})
    assert isinstance(opt, LSTMOptimizer) and opt.blob["lr"] > 0
    # Off its meta-training distribution (a toy MLP, not a codec): measured 0.463 -> 0.027 in 300 steps with the
    # default (v9), where Adam reaches 0.007 at 2e-3 and 0.035 at 5e-4 (v1 at its 2e-3: 0.009, at 1.4e-3: 0.020,
    # lopt-lr5e-4.pt: 0.106, lopt-tensor.pt: 0.015, lopt-bounded.pt: 0.048).
    losses = _train(model, opt, 300)
    assert sum(losses[-10:]) / 10 < 0.15 * sum(losses[:10]) / 10


def test_state_dict_round_trip_gives_identical_updates(lopt_file, tmp_path):
    model = _model()
    opt = LSTMOptimizer(model.parameters(), lopt=lopt_file)
    _train(model, opt, 5)
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, tmp_path / "ckpt.pt")
    _train(model, opt, 5, start=5)

    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=False)
    resumed = _model()
    resumed.load_state_dict(ckpt["model"])
    opt2 = LSTMOptimizer(resumed.parameters(), lopt=lopt_file, lr=0.5)  # lr comes back from the state dict
    opt2.load_state_dict(ckpt["opt"])
    _train(resumed, opt2, 5, start=5)
    for a, b in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_compiled_step_trains_like_the_eager_one(lopt_file):
    eager_model, fused_model = _model(), _model()
    eager = LSTMOptimizer(eager_model.parameters(), lopt=lopt_file)
    fused = LSTMOptimizer(fused_model.parameters(), lopt=lopt_file, compile=True)
    _train(eager_model, eager, 20)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a fallback to the eager step would warn
        _train(fused_model, fused, 20)
    assert fused.compile and fused.fused
    for a, b in zip(eager_model.parameters(), fused_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_odd_tensor_optimizer_trains_compiled_as_eager(tmp_path):
    path = tmp_path / "odd.pt"
    save_lopt(LSTMOptimizerNet(LSTMConfig(arch="tensor", hidden=4, output="direct", out_init_std=0.5)), path, lr=1e-2)
    eager_model, fused_model = _model(), _model()
    fused = LSTMOptimizer(fused_model.parameters(), lopt=path, compile=True)
    eager_losses = _train(eager_model, LSTMOptimizer(eager_model.parameters(), lopt=path), 150)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a fallback to the eager step would warn
        _train(fused_model, fused, 150)
    assert fused.compile and fused.fused
    assert sum(eager_losses[-10:]) / 10 < 0.3 * sum(eager_losses[:10]) / 10
    for a, b in zip(eager_model.parameters(), fused_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)


def test_a_failed_compile_falls_back_to_the_eager_step_with_the_state_untouched(lopt_file, monkeypatch):
    import metaopt.fused

    def broken(self, *args):  # fails at the *last* compiled loop, after the first one ran (tensor arch)
        raise RuntimeError("no compiler")
    monkeypatch.setattr(metaopt.fused.FusedStep, "_coordinate_loop", broken)
    monkeypatch.setattr(metaopt.fused.FusedStep, "_tensor_update_loop", broken)
    eager_model, fallback_model = _model(), _model()
    _train(eager_model, LSTMOptimizer(eager_model.parameters(), lopt=lopt_file), 3)
    opt = LSTMOptimizer(fallback_model.parameters(), lopt=lopt_file, compile=True)
    with pytest.warns(UserWarning, match="torch.compile failed"):
        _train(fallback_model, opt, 3)
    assert not opt.compile
    for a, b in zip(eager_model.parameters(), fallback_model.parameters()):
        assert torch.equal(a, b)


def test_state_saved_in_the_old_row_major_layout_still_loads(lopt_file):
    model = _model()
    opt = LSTMOptimizer(model.parameters(), lopt=lopt_file)
    _train(model, opt, 3)
    sd = copy.deepcopy(opt.state_dict())
    state = sd["state"][0]
    del state["layout"]  # as saved before: coordinate m [P, B]; both archs h/c [rows, L*H]
    if opt.net.cfg.arch == "coordinate":
        state["m"] = state["m"].T
    state["h"], state["c"] = state["h"].T, state["c"].T
    expected = [p.detach().clone() for p in model.parameters()]
    _train(model, opt, 2, start=3)
    resumed = _model()
    with torch.no_grad():
        for p, e in zip(resumed.parameters(), expected):
            p.copy_(e)
    opt2 = LSTMOptimizer(resumed.parameters(), lopt=lopt_file)
    opt2.load_state_dict(sd)
    _train(resumed, opt2, 2, start=3)
    for a, b in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_params_without_grad_do_not_move(lopt_file):
    model = _model()
    frozen = copy.deepcopy(model[2].weight.detach())
    model[2].weight.requires_grad_(False)
    _train(model, LSTMOptimizer(model.parameters(), lopt=lopt_file), 3)
    assert torch.equal(model[2].weight, frozen)


def test_non_finite_update_is_skipped_and_counted(lopt_file):
    model = _model()
    opt = LSTMOptimizer(model.parameters(), lopt=lopt_file)
    _train(model, opt, 3)
    params = [p.detach().clone() for p in model.parameters()]
    state = {k: v.clone() if torch.is_tensor(v) else v for k, v in opt.state[next(model.parameters())].items()}
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    next(model.parameters()).grad[0, 0] = float("inf")  # an inf gradient with a finite loss
    opt.step()
    assert opt.skipped_updates == 1
    assert all(torch.equal(a, b) for a, b in zip(params, model.parameters()))  # nothing moved
    after = opt.state[next(model.parameters())]
    assert all(torch.equal(after[k], v) if torch.is_tensor(v) else after[k] == v for k, v in state.items())
    losses = _train(model, opt, 5, start=3)  # and it carries on normally
    assert all(torch.isfinite(torch.tensor(losses))) and opt.skipped_updates == 1


def test_make_optimizer_names():
    params = list(_model().parameters())
    assert isinstance(make_optimizer("adam", params, {"lr": None}), torch.optim.Adam)
    sgd = make_optimizer("sgd", params, {"lr": 0.1, "momentum": 0.5})
    assert sgd.defaults["momentum"] == 0.5
    with pytest.raises(UserError, match="unknown optimizer"):
        make_optimizer("rmsprop", params, {})


V2_FEATURES = ["grad_logmag", "adam_grad_abs", "momenta_abs", "momenta_agree", "param_scale"]


def _bad_files(tmp_path, lopt_file):
    corrupted = tmp_path / "corrupted.pt"
    corrupted.write_bytes(lopt_file.read_bytes()[:200])
    foreign = tmp_path / "foreign.pt"
    torch.save({"model": {}, "model_name": "x"}, foreign)
    old = tmp_path / "old.pt"
    blob = torch.load(lopt_file, weights_only=False)
    torch.save({**blob, "version": 0}, old)
    future = tmp_path / "future.pt"
    torch.save({**blob, "version": 2}, future)
    mismatched = tmp_path / "mismatched.pt"
    torch.save({**blob, "config": {**blob["config"], "hidden": 5}}, mismatched)
    # v2 ("directions") files whose feature set does not fit their weights, or names a feature that flips sign
    v2 = lopt_blob(LSTMOptimizerNet(LSTMConfig(hidden=4, output="directions", odd=False, features=V2_FEATURES)), 1e-3)
    fewer, flipping = tmp_path / "v2-fewer-features.pt", tmp_path / "v2-flipping-feature.pt"
    torch.save({**v2, "config": {**v2["config"], "features": V2_FEATURES[:-1]}}, fewer)
    torch.save({**v2, "config": {**v2["config"], "features": ["grad_logsign", *V2_FEATURES[1:]]}}, flipping)
    fan_in = tmp_path / "bad-max-fan-in.pt"
    torch.save({**blob, "max_fan_in": "wide"}, fan_in)
    return {"missing": tmp_path / "nope.pt", "corrupted": corrupted, "foreign": foreign, "old": old,
            "future": future, "mismatched": mismatched, "v2-fewer-features": fewer, "v2-flipping-feature": flipping,
            "bad-max-fan-in": fan_in}


def test_bad_lopt_files_raise_user_error(tmp_path, lopt_file):
    for what, path in _bad_files(tmp_path, lopt_file).items():
        with pytest.raises(UserError) as e:
            load_lopt(path)
        assert "\n" not in str(e.value), what


def test_bad_lopt_on_the_command_line_is_one_line(tmp_path):
    # load_lopt's errors are checked for every arch above; here only that the CLI turns each kind into one
    # line (exit 2), so one arch, and the processes at once (each spends seconds importing torch).
    lopt_file = tmp_path / "lopt.pt"
    save_lopt(LSTMOptimizerNet(LSTMConfig(hidden=4)), lopt_file, lr=1e-2)
    procs = {what: subprocess.Popen([sys.executable, "-m", "codec.train", "--optimizer", "lstm", "--lopt", str(path),
                                     "--steps", "1", "--run-dir", str(tmp_path / f"run-{what}")],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                    env={"WANDB_MODE": "disabled", "PATH": "", "OMP_NUM_THREADS": "1"})
             for what, path in _bad_files(tmp_path, lopt_file).items()}
    for what, proc in procs.items():
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 2, what
        lines = [l for l in stderr.splitlines() if l.strip() and "Warning" not in l and "warnings.warn" not in l]
        assert len(lines) == 1 and lines[0].startswith("error:"), (what, stderr)


# (arch, output, odd) each shipped file was meta-trained with; lopt-tensor.pt and lopt-bounded.pt predate the key
# `odd` (and lopt-bounded.pt `arch`), so they must read as written, whatever today's defaults are.
SHIPPED = {"lopt.pt": ("coordinate", "directions", False), "lopt-v1.pt": ("coordinate", "direct", True),
           "lopt-lr5e-4.pt": ("coordinate", "direct", True),
           "lopt-tensor.pt": ("tensor", "adam_correction", False),
           "lopt-bounded.pt": ("coordinate", "adam_correction", False),
           "lopt-v2.pt": ("coordinate", "directions", False), "lopt-v3.pt": ("tensor", "directions", False),
           "lopt-v6.pt": ("coordinate", "directions", False), "lopt-v8.pt": ("coordinate", "directions", False),
           "lopt-v9.pt": ("coordinate", "directions", False)}


@pytest.mark.parametrize("name", SHIPPED)
def test_pretrained_file_is_small_and_valid(name):
    path = PRETRAINED.parent / name
    assert path.stat().st_size < 5_000_000
    net, blob = load_lopt(path)
    assert blob["meta"], "the shipped file records its provenance"
    assert (net.cfg.arch, net.cfg.output, net.cfg.odd) == SHIPPED[name]


def test_meta_training_by_default_trains_the_network_the_default_descends_from():
    from metaopt.config import parse_config
    from metaopt.meta_train import lstm_config

    # v1's: the default lopt.pt (v9) is v1 distilled into a one-pass network (v6, v8), run in the Shampoo basis
    assert load_lopt(PRETRAINED.parent / "lopt-v1.pt")[0].cfg == LSTMConfig()
    assert lstm_config(parse_config([], "meta/default.yaml", "")) == LSTMConfig()


def test_a_file_without_the_newer_keys_steps_as_it_did_when_written(tmp_path):
    """A config saved before `odd` existed, or while the output defaulted to adam_correction, lacks those keys:
    it must load as what it was, not as today's defaults."""
    torch.manual_seed(0)
    written = LSTMConfig(hidden=4, output="adam_correction", odd=False, out_init_std=0.5)
    save_lopt(LSTMOptimizerNet(written), tmp_path / "new.pt", lr=1e-2)
    blob = torch.load(tmp_path / "new.pt", weights_only=False)
    blob["config"] = {k: v for k, v in blob["config"].items() if k not in ("odd", "output", "arch", "mlp_hidden")}
    torch.save(blob, tmp_path / "old.pt")
    assert load_lopt(tmp_path / "old.pt")[0].cfg == written
    models = [_model(), _model()]
    for model, path in zip(models, ("new.pt", "old.pt")):
        _train(model, LSTMOptimizer(model.parameters(), lopt=tmp_path / path), 3)
    assert all(torch.equal(a, b) for a, b in zip(*(m.parameters() for m in models)))


def test_an_optimizer_reading_training_progress_needs_and_keeps_the_planned_steps(tmp_path):
    net = LSTMOptimizerNet(LSTMConfig(features=["grad_logsign", "progress"], output="direct", odd=True))
    save_lopt(net, tmp_path / "p.pt", lr=1e-3)
    with pytest.raises(UserError, match="planned number of steps"):
        LSTMOptimizer(_model().parameters(), lopt=tmp_path / "p.pt")
    opt = make_optimizer("lstm", _model().parameters(), {"lopt": str(tmp_path / "p.pt"), "steps": 50})
    assert opt.param_groups[0]["horizon"] == 50  # codec.train's --steps
    model = _model()
    opt = LSTMOptimizer(model.parameters(), lopt=tmp_path / "p.pt", horizon=50)
    _train(model, opt, 3)
    state = copy.deepcopy(opt.state_dict())
    longer = LSTMOptimizer(model.parameters(), lopt=tmp_path / "p.pt", horizon=500)
    longer.load_state_dict(state)  # a resumed run with a new plan reads the new plan
    assert longer.param_groups[0]["horizon"] == 500
    _train(model, longer, 1, start=3)


def test_the_fan_in_rule_scales_only_tensors_wider_than_meta_training_saw(tmp_path):
    """_model()'s tensors: weights of fan-in 6 and 16, biases (fan-in 1). With max_fan_in 8 the second weight moves
    by 8/16 of the plain file's update, every other tensor exactly as with the plain file."""
    torch.manual_seed(0)
    net = LSTMOptimizerNet(LSTMConfig(hidden=4, output="directions", odd=False, features=V2_FEATURES[:4]))
    save_lopt(net, tmp_path / "plain.pt", lr=1e-2)
    save_lopt(net, tmp_path / "rule.pt", lr=1e-2, max_fan_in=8)
    assert [fan_in(p) for p in _model().parameters()] == [6, 1, 16, 1]
    models = [_model(), _model()]
    start = [p.detach().clone() for p in models[0].parameters()]
    for model, name in zip(models, ("plain.pt", "rule.pt")):
        _train(model, LSTMOptimizer(model.parameters(), lopt=tmp_path / name), 1)
    moves = [[p.detach() - p0 for p, p0 in zip(m.parameters(), start)] for m in models]
    for k, (plain, ruled) in enumerate(zip(*moves)):
        assert plain.abs().sum() > 0
        torch.testing.assert_close(ruled, plain * (0.5 if k == 2 else 1.0), rtol=1e-5, atol=1e-7)  # rounding of p + u
