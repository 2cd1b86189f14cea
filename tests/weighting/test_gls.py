"""GLS: geometric mean of the losses; effective weights L / (K l_k) (docs/weighting.md#gls hand values)."""
from __future__ import annotations

import pytest
import torch
from toys import Toy, one_step

from okd.weighting.base import BoundModel
from okd.weighting.gls import GLS


def bound_method(k: int = 2) -> GLS:
    method = GLS()
    method.bind(BoundModel([f"t{i}" for i in range(k)], [torch.nn.Parameter(torch.zeros(1))]))
    return method


@pytest.mark.parametrize("l, geo", [((1.0, 4.0), 2.0), ((2.0, 8.0), 4.0)])
def test_zoo_cases(l, geo):
    losses = torch.tensor(l, requires_grad=True)
    total, w = bound_method().objective(losses)
    torch.testing.assert_close(w, torch.tensor([1.0, 0.25]))
    assert abs(float(total.detach()) - geo) < 1e-6  # sum_k lambda_k l_k = L
    total.backward()
    # The gradient is that of the geometric mean sqrt(l1 l2): (l2, l1) / (2 sqrt(l1 l2)).
    torch.testing.assert_close(losses.grad, torch.tensor([l[1], l[0]]) / (2 * geo))


def test_no_overflow_where_the_plain_product_overflows():
    losses = torch.full((3,), 1e30)  # product 1e90 is inf in float32
    w = bound_method(3).weights(losses)
    torch.testing.assert_close(w, torch.full((3,), 1 / 3))


def test_zero_loss_is_clamped_not_nan():
    w = bound_method().weights(torch.tensor([0.0, 4.0]))
    assert torch.isfinite(w).all()
    # l = (1e-8, 4): L = 2e-4, lambda = L / (2 l) = (1e4, 2.5e-5).
    torch.testing.assert_close(w, torch.tensor([1e4, 2.5e-5]), rtol=1e-4, atol=0)


def test_integration_gradients():
    toy = Toy()
    method = GLS()
    method.bind(toy.bound)
    g, head_grads = toy.task_gradients()
    l = toy.recompute()
    lam = torch.exp(torch.log(l).mean()) / (3 * l)
    w, shared, heads = one_step(method, toy)
    torch.testing.assert_close(w, lam)
    torch.testing.assert_close(shared, lam @ g, rtol=1e-5, atol=1e-6)
    for k in range(3):
        torch.testing.assert_close(heads[k], lam[k] * head_grads[k], rtol=1e-5, atol=1e-6)


def test_bad_eps():
    with pytest.raises(ValueError, match="eps"):
        GLS(eps=0.0)
