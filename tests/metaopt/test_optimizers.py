import math
import sys

import pytest
import torch
from torch import nn

from metaopt.errors import UserError
from metaopt.optimizers import (OPTIMIZERS, LRSchedule, check_optimizer_config, evaluation_point, make_optimizer,
                                set_mode)


def _model():
    torch.manual_seed(0)  # a conv layer too: SOAP preconditions each dimension of a 4-d weight
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 4 * 4, 1))


def _batch(step):
    g = torch.Generator().manual_seed(step)
    x = torch.randn(16, 2, 4, 4, generator=g)
    return x, torch.tanh(x[:, 0].mean((1, 2)) * 2)[:, None]


def _loss(model, step):
    x, y = _batch(step)
    return (model(x) - y).pow(2).mean()


@torch.no_grad()
def _held_out_loss(model):
    return float(sum(_loss(model, 10_000 + i) for i in range(4)) / 4)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_each_optimizer_lowers_a_loss(name):
    model = _model()
    # One step for all (some defaults, e.g. Adam's 1e-4, are too small for 60 steps); measured: every optimizer
    # ends 30-80x below the start.
    optimizer = make_optimizer(name, model.parameters(), {"lr": 1e-2, "steps": 60})
    before = _held_out_loss(model)
    for step in range(60):
        set_mode(optimizer, "train")
        optimizer.zero_grad()
        _loss(model, step).backward()
        optimizer.step()
        if step % 20 == 19:  # validation in between, as a training loop does it
            set_mode(optimizer, "eval")
            _held_out_loss(model)
    set_mode(optimizer, "eval")
    assert _held_out_loss(model) < 0.2 * before


@pytest.mark.parametrize("name, config, message", [
    ("rmsprop", {}, "unknown optimizer 'rmsprop'; choose one of: adam, sgd, schedulefree, soap, lstm"),
    ("adam", {"lr": -1.0}, "lr must be a positive number"),
    ("adam", {"lr_schedule": "step"}, "unknown lr_schedule 'step'; choose one of: constant, cosine, plateau"),
    ("adam", {"lr_schedule": "cosine"}, "it needs steps > 0, got None"),
    ("soap", {"lr_schedule": "cosine", "steps": 0}, "it needs steps > 0, got 0"),
    ("schedulefree", {"lr_schedule": "plateau", "steps": 10}, "use lr_schedule constant"),
    ("adam", {"warmup_steps": 1.5}, "warmup_steps must be a non-negative integer"),
    ("lstm", {"lopt_horizon": 0}, "lopt_horizon must be a positive integer"),
])
def test_bad_configs_are_refused_before_building(name, config, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        check_optimizer_config(name, config)
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        make_optimizer(name, _model().parameters(), config)


@pytest.mark.parametrize("name, module, pip_name", [("schedulefree", "schedulefree", "schedulefree"),
                                                    ("soap", "pytorch_optimizer", "pytorch-optimizer")])
def test_a_missing_package_is_one_line(monkeypatch, name, module, pip_name):
    monkeypatch.setitem(sys.modules, module, None)  # what an environment without the package sees: ImportError
    with pytest.raises(UserError, match=f"optimizer {name} needs the {pip_name} package.*pip install {pip_name}$"):
        check_optimizer_config(name, {})


def _schedulefree_after_five_steps():
    model = _model()
    optimizer = make_optimizer("schedulefree", model.parameters(), {"lr": 1e-2})
    for step in range(5):
        optimizer.zero_grad()
        _loss(model, step).backward()
        optimizer.step()
    return model, optimizer


def test_schedulefree_evaluates_at_the_average_and_trains_at_its_gradient_point():
    model, optimizer = _schedulefree_after_five_steps()
    y = [p.detach().clone() for p in model.parameters()]
    set_mode(optimizer, "eval")
    x = [p.detach().clone() for p in model.parameters()]
    assert not all(torch.equal(a, b) for a, b in zip(x, y))  # the averaged iterate is another point
    set_mode(optimizer, "eval")  # idempotent
    assert all(torch.equal(a, b) for a, b in zip(x, model.parameters()))
    with pytest.raises(Exception, match="not in train mode"):
        optimizer.step()
    set_mode(optimizer, "train")
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(y, model.parameters()))


def test_an_evaluation_point_leaves_the_training_point_bit_for_bit():
    model, optimizer = _schedulefree_after_five_steps()
    y = [p.detach().clone() for p in model.parameters()]
    with evaluation_point(optimizer, model.parameters()):
        x = [p.detach().clone() for p in model.parameters()]
    assert not all(torch.equal(a, b) for a, b in zip(x, y))  # evaluated at the average
    assert all(torch.equal(a, b) for a, b in zip(y, model.parameters()))  # and back exactly
    optimizer.step()  # in train mode again


def test_set_mode_leaves_other_optimizers_alone():
    model = _model()
    optimizer = make_optimizer("adam", model.parameters(), {})
    before = [p.detach().clone() for p in model.parameters()]
    set_mode(optimizer, "eval")
    set_mode(optimizer, "train")
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    with pytest.raises(ValueError, match="mode must be"):
        set_mode(optimizer, "test")


def test_warmup_then_cosine():
    optimizer = make_optimizer("adam", _model().parameters(), {"lr": 1e-2})
    schedule = LRSchedule(optimizer, {"lr_schedule": "cosine", "warmup_steps": 4, "steps": 100})
    lrs = []
    for step in (0, 3, 50, 99):
        schedule.set_lr(step)
        lrs.append(optimizer.param_groups[0]["lr"])
    assert lrs[0] == pytest.approx(1e-2 / 4)  # first warmup step
    assert lrs[1] == pytest.approx(1e-2 * 0.5 * (1 + math.cos(math.pi * 3 / 100)))  # warmup done; cosine from step 0
    assert lrs[2] == pytest.approx(0.5e-2)  # halfway down
    assert 0 < lrs[3] < 1e-5  # near zero at the end


def _plateau(warmup_steps=0):
    optimizer = make_optimizer("adam", _model().parameters(), {"lr": 1e-2})
    return optimizer, LRSchedule(optimizer, {"lr_schedule": "plateau", "warmup_steps": warmup_steps})


def test_plateau_reduces_the_lr_after_ten_validations_without_improvement():
    optimizer, schedule = _plateau(warmup_steps=100)
    schedule.set_lr(9)  # mid-warmup: the rule must see the peak lr, not this fraction of it
    losses = [1.0] + [1.0] * 10
    for loss in losses:
        schedule.validated(loss)
        schedule.set_lr(200)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-2)
    schedule.validated(1.0)  # the 11th validation without improvement
    schedule.set_lr(200)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)
    schedule.set_lr(9)  # the warmup scales the reduced lr
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * 10 / 100)


def test_plateau_state_round_trips():
    optimizer, schedule = _plateau()
    for loss in [1.0] + [1.0] * 6:  # 6 bad validations so far
        schedule.validated(loss)
    resumed_optimizer, resumed = _plateau()
    resumed_optimizer.load_state_dict(optimizer.state_dict())
    resumed.load_state_dict(schedule.state_dict())
    fresh_optimizer, fresh = _plateau()  # without the state: its count starts over
    fresh.validated(1.0)
    lrs = {"original": [], "resumed": [], "fresh": []}
    for _ in range(20):
        for key, (opt, sched) in {"original": (optimizer, schedule), "resumed": (resumed_optimizer, resumed),
                                  "fresh": (fresh_optimizer, fresh)}.items():
            sched.validated(1.0)
            sched.set_lr(0)
            lrs[key].append(opt.param_groups[0]["lr"])
    assert lrs["resumed"] == lrs["original"]
    assert lrs["original"].index(pytest.approx(1e-3)) == 4  # the 11th bad validation
    assert lrs["fresh"] != lrs["original"]
    with pytest.raises(UserError, match="without the plateau schedule's state"):
        resumed.load_state_dict({})


def test_the_learned_optimizer_reads_lopt_horizon_else_steps():
    params = list(_model().parameters())
    assert make_optimizer("lstm", params, {"steps": 1000}).horizon == 1000
    assert make_optimizer("lstm", params, {"steps": 1000, "lopt_horizon": 100}).horizon == 100
