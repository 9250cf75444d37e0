"""PES (metaopt/pes.py): the estimate points along the true meta-gradient, and its noise persists per particle."""
import torch
from torch.nn.utils import parameters_to_vector

from metaopt.lstm import LSTMConfig, LSTMOptimizerNet
from metaopt.pes import pes_step, start_particles
from metaopt.tasks.quadratic import RegressionFamily
from metaopt.unroll import start_task, unroll

K, LR = 4, 0.05


def _setup(seed=0):
    torch.manual_seed(seed)
    net = LSTMOptimizerNet(LSTMConfig(hidden=4, out_init_std=0.3, output="direct", odd=False))
    task = RegressionFamily(batch_size=16).sample(seed, "train")
    return net, start_task(task, net, horizon=2 * K)


def test_the_estimate_agrees_with_backpropagation_on_one_truncation():
    """From a fresh task the accumulated noise is this truncation's own, so PES is plain antithetic ES of the
    truncation loss: it must point along the exact (second-order) gradient of that loss."""
    net, ts = _setup()
    loss, _, _ = unroll(net, ts, K, LR, "mean", second_order=True)
    exact = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(net.parameters()))])
    estimate, _, _, _ = pes_step(net, start_particles(ts, 256, net), K, LR, sigma=1e-3, seed=0, meta_loss="mean")
    cosine = torch.nn.functional.cosine_similarity(estimate, exact, dim=0).item()
    assert cosine > 0.5, cosine  # measured 0.76 (256 pairs, 186 dimensions); a random direction: |cos| ~ 0.07
    noise_only, _, _, _ = pes_step(net, start_particles(ts, 256, net), K, LR, sigma=1e-3, seed=1, meta_loss="mean")
    assert torch.nn.functional.cosine_similarity(estimate, noise_only, dim=0).item() > 0.5  # not seed noise


def test_noise_accumulates_per_particle_until_the_task_ends():
    net, ts = _setup()
    particles = start_particles(ts, 2, net)
    _, _, after_one, _ = pes_step(net, particles, K, LR, sigma=0.01, seed=10)
    _, _, after_two, stats = pes_step(net, after_one, K, LR, sigma=0.01, seed=11)
    dim = parameters_to_vector(net.parameters()).numel()
    first = torch.randn(2, dim, generator=torch.Generator().manual_seed(10)) * 0.01
    second = torch.randn(2, dim, generator=torch.Generator().manual_seed(11)) * 0.01
    torch.testing.assert_close(after_two.xi, first + second)
    assert after_two.done and stats["finite"]  # horizon 2K: two truncations
    plus, minus = after_two.states[0].params[0], after_two.states[2].params[0]
    assert not torch.equal(plus, minus)  # each particle carries its own inner run
    assert all(s.step == 2 * K for s in after_two.states)
