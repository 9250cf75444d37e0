"""The two meta-gradient estimators behind one interface (metaopt/estimators.py)."""
import pytest
import torch

from metaopt.errors import UserError
from metaopt.estimators import TruncatedBPTT, TruncatedPES
from metaopt.lstm import LSTMConfig, LSTMOptimizerNet
from metaopt.tasks.quadratic import RegressionFamily
from metaopt.unroll import TaskState, start_task, unroll

K, LR = 3, 0.05


def _setup():
    torch.manual_seed(0)
    net = LSTMOptimizerNet(LSTMConfig(hidden=4, out_init_std=0.3))
    task = RegressionFamily(batch_size=8).sample(0, "train")
    return net, task, start_task(task, net, horizon=3 * K)


def test_bptt_estimate_is_the_gradient_of_the_truncation():
    net, _, ts = _setup()
    loss, _, _ = unroll(net, ts, K, LR)
    exact = torch.autograd.grad(loss, list(net.parameters()))
    estimate = TruncatedBPTT(unroll=K, lr=LR).estimate(net, ts, seed=0)
    assert estimate.finite and estimate.meta_loss == loss.item() and estimate.state.step == K
    assert all(torch.equal(a, b) for a, b in zip(estimate.grads, exact))


@pytest.mark.parametrize("estimator", [TruncatedBPTT(unroll=K, lr=LR),
                                       TruncatedPES(unroll=K, lr=LR, pairs=2, sigma=0.01)], ids=["bptt", "pes"])
def test_a_saved_run_in_flight_continues_exactly(estimator):
    net, task, ts = _setup()
    first = estimator.estimate(net, estimator.init_state(ts, net), seed=0)
    assert first.finite and [g.shape for g in first.grads] == [p.shape for p in net.parameters()]
    saved = estimator.state_dict(first.state)
    other = TruncatedPES(unroll=K, lr=LR, pairs=1, sigma=0.01) if estimator.name == "bptt" else TruncatedBPTT(K, LR)
    with pytest.raises(UserError):
        other.check_saved(saved)
    estimator.check_saved(saved)
    restored = estimator.load_state(saved, lambda run: TaskState.from_state_dict(run, task))
    a, b = (estimator.estimate(net, state, seed=1) for state in (first.state, restored))
    assert a.meta_loss == b.meta_loss and all(torch.equal(x, y) for x, y in zip(a.grads, b.grads))
