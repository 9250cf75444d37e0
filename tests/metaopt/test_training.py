import pytest
import torch

from metaopt.training import train_step


def test_train_step_zeroes_clips_steps_and_fits_the_aux_parameters():
    net, aux = torch.nn.Parameter(torch.tensor([1.0, 2.0])), torch.nn.Parameter(torch.tensor([5.0]))
    net.grad = torch.full_like(net, 100.0)  # stale gradient from elsewhere: must not leak into the update
    opt, aux_opt = torch.optim.SGD([net], lr=0.1), torch.optim.SGD([aux], lr=0.5)
    terms = train_step(opt, lambda: {"loss": (net ** 2).sum() * 10, "extra": net.sum()}, grad_clip=1.0,
                       aux_optimizer=aux_opt, aux_loss_fn=lambda: aux.sum() * 2)
    assert set(terms) == {"loss", "extra"} and terms["loss"].item() == pytest.approx(50.0)
    gradient = torch.tensor([20.0, 40.0])
    assert torch.allclose(net.detach(), torch.tensor([1.0, 2.0]) - 0.1 * gradient / gradient.norm())  # clipped to 1
    assert aux.item() == pytest.approx(5.0 - 0.5 * 2)


def test_train_step_without_clipping_or_aux():
    w = torch.nn.Parameter(torch.tensor([3.0]))
    train_step(torch.optim.SGD([w], lr=0.1), lambda: {"loss": (w ** 2).sum()})
    assert w.item() == pytest.approx(3.0 - 0.1 * 6.0)
