"""EW (okd/weighting/ew.py): the backward pass is the gradient of sum_k L_k (+ extra loss)."""
from __future__ import annotations

import torch
from torch import nn

from okd.weighting.base import BoundModel
from okd.weighting.ew import EW


def _toy():
    g = torch.Generator().manual_seed(0)
    shared, heads = nn.Linear(3, 4), nn.ModuleList([nn.Linear(4, 1), nn.Linear(4, 2)])
    with torch.no_grad():
        for p in [*shared.parameters(), *heads.parameters()]:
            p.copy_(torch.randn(p.shape, generator=g))
    x = torch.randn(5, 3, generator=g)

    def losses_and_extra():
        z = torch.relu(shared(x))
        losses = torch.stack([heads[0](z).pow(2).mean(), heads[1](z).abs().mean()])
        return losses, 0.1 * z.pow(2).sum()

    bound = BoundModel(["a", "b"], list(shared.parameters()), list(heads.parameters()))
    return [*shared.parameters(), *heads.parameters()], bound, losses_and_extra


def test_backward_is_the_gradient_of_the_plain_sum():
    params, bound, losses_and_extra = _toy()
    losses, extra = losses_and_extra()
    expected = torch.autograd.grad(losses[0] + losses[1] + extra, params)
    ew = EW()
    ew.bind(bound)
    losses, extra = losses_and_extra()
    used = ew.backward(losses, extra_loss=extra)
    for p, g in zip(params, expected):
        torch.testing.assert_close(p.grad, g)
    assert torch.equal(used, torch.ones(2)) and not used.requires_grad


def test_backward_without_extra_loss():
    params, bound, losses_and_extra = _toy()
    losses, _ = losses_and_extra()
    expected = torch.autograd.grad(losses.sum(), params)
    ew = EW()
    ew.bind(bound)
    losses, _ = losses_and_extra()
    ew.backward(losses)
    for p, g in zip(params, expected):
        torch.testing.assert_close(p.grad, g)


def test_no_learnable_state_and_round_trip():
    _, bound, _ = _toy()
    ew = EW()
    ew.bind(bound)
    assert ew.param_groups() == []
    restored = EW()
    restored.bind(bound)
    restored.load_checkpoint_state(ew.checkpoint_state())
    assert torch.equal(restored.weights(torch.ones(2)), torch.ones(2))
