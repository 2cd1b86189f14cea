"""DB-MTL: EMA of log-loss gradients rescaled to the largest norm (docs/weighting.md#dbmtl hand values)."""
from __future__ import annotations

import math

import pytest
import torch
from toys import Toy, one_step

from okd.weighting.base import BoundModel
from okd.weighting.dbmtl import DBMTL

H = torch.tensor([[3.0, 0.0], [0.0, 1.0]])  # h_k = grad log L_k for l = (2, 4), grads (6,0), (0,4)


def bound_method(**kwargs) -> DBMTL:
    method = DBMTL(**kwargs)
    method.bind(BoundModel(["a", "b"], [torch.nn.Parameter(torch.zeros(2))]))
    return method


def test_without_ema():
    d, a = bound_method(beta=0.0).combine(H, torch.zeros(2))
    torch.testing.assert_close(a, torch.tensor([1.0, 3.0]), rtol=1e-6, atol=0)
    torch.testing.assert_close(d, torch.tensor([3.0, 3.0]), rtol=1e-6, atol=0)


def test_ema_first_two_steps():
    method = bound_method()
    d, _ = method.combine(H, torch.zeros(2))
    torch.testing.assert_close(method.grad_ema, 0.1 * H)
    torch.testing.assert_close(d, torch.tensor([0.3, 0.3]), rtol=1e-6, atol=0)
    d, _ = method.combine(H, torch.zeros(2))
    torch.testing.assert_close(method.grad_ema, 0.19 * H)
    torch.testing.assert_close(d, torch.tensor([0.57, 0.57]), rtol=1e-6, atol=0)
    assert int(method.step) == 2


def test_beta_sigma_decays_the_ema_coefficient():
    method = bound_method(beta=0.9, beta_sigma=0.5)
    method.combine(H, torch.zeros(2))  # b_1 = 0.9
    method.combine(H, torch.zeros(2))  # b_2 = 0.9 / sqrt(2)
    b2 = 0.9 / math.sqrt(2)
    torch.testing.assert_close(method.grad_ema, (b2 * 0.1 + (1 - b2)) * H)


def test_backward_differentiates_log_losses():
    theta = torch.nn.Parameter(torch.zeros(2))
    head = torch.nn.Parameter(torch.zeros(2))
    method = DBMTL()
    method.bind(BoundModel(["a", "b"], [theta], [head]))
    # At 0: L = (2, 4), grad_theta L = (6, 0), (0, 4); each task uses one entry of `head`.
    losses = torch.stack([2 + 6 * theta[0] + 3 * head[0], 4 + 4 * theta[1] + 8 * head[1]])
    a = method.backward(losses)
    torch.testing.assert_close(theta.grad, torch.tensor([0.3, 0.3]), rtol=1e-6, atol=0)
    torch.testing.assert_close(head.grad, torch.tensor([3 / 2, 8 / 4]))  # grad log L_k, unweighted
    torch.testing.assert_close(a, torch.tensor([1.0, 3.0]), rtol=1e-6, atol=0)


def test_integration_gradients():
    toy = Toy()
    method = DBMTL()
    method.bind(toy.bound)
    h, head_grads = toy.task_gradients(lambda l: torch.log(l + 1e-8))
    ema = 0.1 * h
    a = ema.norm(dim=1).max() / (ema.norm(dim=1) + 1e-8)
    w, shared, heads = one_step(method, toy)
    torch.testing.assert_close(w, a)
    torch.testing.assert_close(shared, a @ ema, rtol=1e-5, atol=1e-6)
    for k in range(3):
        torch.testing.assert_close(heads[k], head_grads[k], rtol=1e-5, atol=1e-6)


def test_shape_mismatch_is_reported():
    with pytest.raises(ValueError, match="grads must have shape"):
        bound_method().combine(torch.zeros(2, 3), torch.zeros(2))


@pytest.mark.parametrize(
    "kwargs, name", [({"beta": 1.0}, "beta"), ({"beta_sigma": -1.0}, "beta_sigma"), ({"eps": 0.0}, "eps")]
)
def test_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        DBMTL(**kwargs)
