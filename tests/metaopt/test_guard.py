import math

import pytest
import torch

from metaopt.guard import MAX_CONSECUTIVE_ROLLBACKS, SpikeGuard
from metaopt.optim import LSTMOptimizer


def _setup(optimizer: str):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2) if optimizer == "adam" else LSTMOptimizer(model.parameters())
    return model, opt


def _train_step(model, opt, x):
    opt.zero_grad()
    loss = model(x).pow(2).mean()
    loss.backward()
    opt.step()
    return float(loss.detach())


def _flat_state(model, opt) -> list[torch.Tensor]:
    tensors = [p.detach().clone() for p in model.parameters()]
    for state in opt.state.values():
        tensors += [v.clone() for v in state.values() if torch.is_tensor(v)]
    return tensors


def test_a_spike_is_non_finite_or_factor_times_the_median_and_only_after_enough_history():
    guard = SpikeGuard({}, factor=10, min_history=3)
    assert guard.is_spike(math.nan) and guard.is_spike(math.inf)
    assert not guard.is_spike(1e9)  # no history yet: nothing to compare with
    for loss in (1.0, 2.0, 100.0):  # median 2.0, not fooled by one large value
        guard.record(loss, step=1)
    assert not guard.is_spike(19.9) and guard.is_spike(20.1)


@pytest.mark.parametrize("optimizer", ["adam", "lstm"])
def test_rollback_restores_the_older_snapshot_exactly_and_drops_the_newer(optimizer):
    model, opt = _setup(optimizer)
    guard = SpikeGuard({"model": model, "opt": opt}, factor=10, every=2, min_history=1)
    x = torch.randn(8, 4)
    expected = None
    for step in range(1, 6):
        guard.record(_train_step(model, opt, x), step)
        if step == 2:
            expected = _flat_state(model, opt)
    assert [s for s, _ in guard.snapshots] == [2, 4]
    assert guard.rollback() == 2
    assert [s for s, _ in guard.snapshots] == [2]
    restored = _flat_state(model, opt)
    assert len(restored) == len(expected) and all(torch.equal(a, b) for a, b in zip(restored, expected))
    _train_step(model, opt, x)  # the restored state trains on, and the snapshot was not aliased by it
    assert guard.rollback() == 2 and all(torch.equal(a, b) for a, b in zip(_flat_state(model, opt), expected))


def test_gives_up_after_consecutive_rollbacks_and_a_new_snapshot_resets_the_count():
    model, opt = _setup("adam")
    guard = SpikeGuard({"model": model, "opt": opt}, factor=10, every=1)
    assert guard.rollback() is None  # no snapshot yet: the step is only dropped
    guard.record(1.0, step=1)
    for _ in range(MAX_CONSECUTIVE_ROLLBACKS):
        assert not guard.gave_up
        guard.rollback()
    assert guard.gave_up and guard.rollbacks == MAX_CONSECUTIVE_ROLLBACKS + 1
    guard.record(1.0, step=2)
    assert not guard.gave_up


def test_state_dict_round_trip():
    model, opt = _setup("adam")
    guard = SpikeGuard({"model": model, "opt": opt}, factor=5, every=1)
    for step in range(1, 4):
        guard.record(_train_step(model, opt, torch.randn(8, 4)), step)
    guard.rollback()
    other = SpikeGuard({"model": model, "opt": opt}, factor=5, every=1)
    other.load_state_dict(guard.state_dict())
    assert list(other.losses) == list(guard.losses) and other.rollbacks == 1 and other.consecutive == 1
    assert [s for s, _ in other.snapshots] == [2]


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        SpikeGuard({}, factor=1.0)
    with pytest.raises(ValueError):
        SpikeGuard({}, factor=10, history=5, min_history=6)
