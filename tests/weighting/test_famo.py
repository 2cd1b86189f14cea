"""FAMO: step weights, the post-step Adam update on xi (docs/weighting.md#famo hand values), fallback, state."""
from __future__ import annotations

import math

import pytest
import torch
from toys import Toy, one_step, roundtrip, train

from okd.weighting.base import BoundModel
from okd.weighting.famo import FAMO


def bound_method(k: int = 2, **kwargs) -> FAMO:
    method = FAMO(**kwargs)
    method.bind(BoundModel([f"t{i}" for i in range(k)], [torch.nn.Parameter(torch.zeros(1))]))
    return method


def test_step_weights_and_objective_value():
    method = bound_method()
    losses = torch.tensor([1.0, 4.0], requires_grad=True)
    total, w = method.objective(losses)
    # z = (1/2, 1/2), c = 1/2 + 1/8: lambda = (0.8, 0.2); loss = (log 1 + log 4) / 2 / c.
    torch.testing.assert_close(w, torch.tensor([0.8, 0.2]))
    assert abs(float(total.detach()) - 1.109035) < 1e-6
    total.backward()
    torch.testing.assert_close(losses.grad, torch.tensor([0.8, 0.2]))  # d total / d L_k = lambda_k


def test_post_step_update_matches_hand_computation():
    method = bound_method(gamma=0.01)
    old, new = torch.tensor([1.0, 4.0]), torch.tensor([0.5, 3.0])
    # delta = (log 2, log 4/3); xi.grad = z * (delta - z.delta) = (0.101366, -0.101366).
    delta = torch.tensor([math.log(2.0), math.log(4.0 / 3.0)])
    grad = 0.5 * (delta - 0.5 * delta.sum())
    torch.testing.assert_close(grad, torch.tensor([0.101366, -0.101366]), atol=1e-6, rtol=0)
    method.after_step(old, lambda: new)
    # First Adam step moves every coordinate by lr * sign(grad) (xi = 0, so gamma plays no role).
    torch.testing.assert_close(method.xi, torch.tensor([-0.025, 0.025]), atol=1e-7, rtol=0)
    z = torch.softmax(method.xi, 0)
    torch.testing.assert_close(z, torch.tensor([0.487503, 0.512497]), atol=1e-6, rtol=0)


def test_adam_with_weight_decay_matches_torch_adam():
    method = bound_method(3, w_lr=0.025, gamma=0.01)
    xi = torch.zeros(3, requires_grad=True)
    ref = torch.optim.Adam([xi], lr=0.025, weight_decay=0.01)
    gen = torch.Generator().manual_seed(0)
    for _ in range(4):
        old, new = torch.rand(3, generator=gen) + 0.5, torch.rand(3, generator=gen) + 0.5
        z = torch.softmax(xi.detach(), 0)
        delta = torch.log(old + 1e-8) - torch.log(new + 1e-8)
        xi.grad = torch.autograd.functional.vjp(lambda x: torch.softmax(x, 0), xi.detach(), delta)[1]
        torch.testing.assert_close(xi.grad, z * (delta - (z * delta).sum()))
        ref.step()
        method.after_step(old, lambda: new)
        torch.testing.assert_close(method.xi, xi.detach(), atol=1e-7, rtol=1e-6)


def test_fallback_uses_the_next_steps_losses():
    method = bound_method()
    method.after_step(torch.tensor([1.0, 4.0]))  # nothing to compare with yet
    torch.testing.assert_close(method.xi, torch.zeros(2))
    method.after_step(torch.tensor([0.5, 3.0]))  # delta between consecutive steps
    torch.testing.assert_close(method.xi, torch.tensor([-0.025, 0.025]), atol=1e-7, rtol=0)
    torch.testing.assert_close(method.prev_losses, torch.tensor([0.5, 3.0]))


def test_losses_at_or_below_min_losses_stay_finite():
    method = bound_method(min_losses=[0.5, 0.0])
    w = method.weights(torch.tensor([0.2, 0.0]))  # D = eps for both: equal weights
    torch.testing.assert_close(w, torch.tensor([0.5, 0.5]))
    method.after_step(torch.tensor([0.2, 1.0]), lambda: torch.tensor([0.0, 0.5]))
    assert torch.isfinite(method.xi).all()
    # D_k = L_k - l*_k + eps above the floor: weights (1/1, 1/2) normalised.
    torch.testing.assert_close(bound_method(min_losses=[0.5, 0.0]).weights(torch.tensor([1.5, 2.0])),
                               torch.tensor([2 / 3, 1 / 3]))


def test_integration_gradients_and_no_learnable_parameters():
    toy = Toy()
    method = FAMO()
    method.bind(toy.bound)
    assert method.param_groups() == []  # xi is updated by FAMO's own Adam, not the model's
    g, head_grads = toy.task_gradients()
    losses = toy.recompute()
    lam = (1 / 3 / losses) / (1 / 3 / losses).sum()
    w, shared, heads = one_step(method, toy)
    torch.testing.assert_close(w, lam)
    torch.testing.assert_close(shared, lam @ g, rtol=1e-5, atol=1e-6)
    for k in range(3):
        torch.testing.assert_close(heads[k], lam[k] * head_grads[k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("recompute", [True, False])
def test_training_decreases_every_loss(recompute):
    toy = Toy(seed=3)
    method = FAMO()
    method.bind(toy.bound)
    first, last = train(method, toy, steps=40, lr=0.1, recompute=recompute)
    assert (last < first).all(), (first, last)
    assert not torch.equal(method.xi, torch.zeros(3))


def test_checkpoint_round_trip():
    toy = Toy(seed=4)
    method = FAMO(gamma=0.01)
    method.bind(toy.bound)
    train(method, toy, steps=3, recompute=False)
    fresh = FAMO(gamma=0.01)
    roundtrip(method, fresh, toy)
    assert fresh.has_prev
    for name in ("xi", "exp_avg", "exp_avg_sq", "adam_step", "prev_losses", "min_losses"):
        torch.testing.assert_close(getattr(fresh, name), getattr(method, name))
    new = torch.tensor([1.0, 2.0, 3.0])
    method.after_step(new)
    fresh.after_step(new)
    torch.testing.assert_close(fresh.xi, method.xi)


@pytest.mark.parametrize(
    "kwargs, name",
    [({"w_lr": 0.0}, "w_lr"), ({"gamma": -1.0}, "gamma"), ({"eps": 0.0}, "eps"),
     ({"betas": (0.9, 1.0)}, "betas"), ({"adam_eps": 0.0}, "adam_eps")],
)
def test_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        FAMO(**kwargs)


def test_min_losses_length_is_checked_at_bind():
    with pytest.raises(ValueError, match="min_losses"):
        bound_method(3, min_losses=[0.0, 0.0])
