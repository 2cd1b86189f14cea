"""Nash-MTL: the bargaining system alpha_k g_k . d = 1, scale behaviour, clipping, heads alpha-weighted."""
from __future__ import annotations

import math

import pytest
import torch
from toys import Toy, one_step, rows64

from okd.weighting.base import BoundModel
from okd.weighting.nashmtl import NashMTL, solve_nash_system


def bound_method(k: int, **kwargs) -> NashMTL:
    method = NashMTL(**kwargs)
    method.bind(BoundModel([f"t{i}" for i in range(k)], [torch.nn.Parameter(torch.zeros(1))]))
    return method


@pytest.mark.parametrize(
    "g, alpha, d",
    [
        # Orthogonal: alpha_k = 1 / ||g_k||.
        (rows64([1, 0], [0, 2]), rows64(1.0, 0.5), rows64(1.0, 1.0)),
        (rows64([1, 0], [1, 1]), rows64(math.sqrt(2 - math.sqrt(2)), math.sqrt(2 - math.sqrt(2)) / math.sqrt(2)),
         rows64(1.306563, 0.541196)),
        (rows64([1, 0], [-0.5, 1]), rows64(1.344997, 1.203002), rows64(0.743496, 1.203002)),
    ],
)
def test_zoo_cases(g, alpha, d):
    method = bound_method(2, max_norm=None)
    direction, weights = method.combine(g, torch.ones(2))
    torch.testing.assert_close(weights, alpha, atol=1e-6, rtol=0)
    torch.testing.assert_close(direction, d, atol=1e-6, rtol=0)
    torch.testing.assert_close(weights * (g @ direction), torch.ones(2, dtype=torch.float64))


@pytest.mark.parametrize("seed", range(4))
def test_random_gradients_satisfy_the_optimality_condition(seed):
    gen = torch.Generator().manual_seed(seed)
    k = 2 + seed
    g = torch.randn(k, 12, generator=gen, dtype=torch.float64)
    method = bound_method(k, max_norm=None)
    d, alpha = method.combine(g, torch.ones(k))
    assert (alpha > 0).all() and method.last_solve_ok
    torch.testing.assert_close(alpha * (g @ d), torch.ones(k, dtype=torch.float64), atol=1e-6, rtol=0)


@pytest.mark.parametrize("scale", [1e-3, 1e3])
def test_scale_divides_alpha_and_keeps_direction(scale):
    g = torch.randn(3, 7, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    d, alpha = bound_method(3, max_norm=None).combine(g, torch.ones(3))
    d_s, alpha_s = bound_method(3, max_norm=None).combine(scale * g, torch.ones(3))
    torch.testing.assert_close(alpha_s, alpha / scale, rtol=1e-6, atol=0)
    torch.testing.assert_close(d_s, d, rtol=1e-6, atol=1e-12)


def test_warm_start_is_the_previous_solution():
    g = rows64([1, 0], [0, 2])
    method = bound_method(2, max_norm=None)
    method.combine(g, torch.ones(2))
    torch.testing.assert_close(method.alpha, rows64(1.0, 0.5))
    # The optimum is a fixed point: starting there the solver returns it unchanged.
    alpha, ok = solve_nash_system(g @ g.T, method.alpha, max_iter=1)
    assert ok
    torch.testing.assert_close(alpha, rows64(1.0, 0.5))


def test_pareto_stationary_point_keeps_previous_alpha():
    method = bound_method(2, max_norm=None)
    method.combine(rows64([1, 0], [0, 2]), torch.ones(2))
    _, alpha = method.combine(rows64([1, 0], [-1, 0]), torch.ones(2))  # g2 = -g1: no solution
    assert not method.last_solve_ok
    torch.testing.assert_close(alpha, rows64(1.0, 0.5))
    _, alpha = method.combine(torch.zeros(2, 3, dtype=torch.float64), torch.ones(2))
    torch.testing.assert_close(alpha, rows64(1.0, 0.5))


def test_clipping_of_the_combined_direction():
    d, _ = bound_method(2, max_norm=1.0).combine(rows64([1, 0], [0, 2]), torch.ones(2))
    torch.testing.assert_close(d, rows64(1.0, 1.0) / (math.sqrt(2) + 1e-6))
    d, _ = bound_method(2, max_norm=10.0).combine(rows64([1, 0], [0, 2]), torch.ones(2))
    torch.testing.assert_close(d, rows64(1.0, 1.0))  # below max_norm: unchanged


def test_integration_shared_and_head_gradients():
    toy = Toy()
    method = NashMTL()
    method.bind(toy.bound)
    g, head_grads = toy.task_gradients()
    w, shared, heads = one_step(method, toy)
    alpha = w.double()
    d = alpha @ g.double()
    ones = torch.ones(3, dtype=torch.float64)
    torch.testing.assert_close(alpha * (g.double() @ d), ones, atol=1e-5, rtol=0)
    expected = d * min(1.0, 1.0 / (float(d.norm()) + 1e-6))
    torch.testing.assert_close(shared, expected.float(), rtol=1e-5, atol=1e-6)
    for k in range(3):  # heads: alpha_k grad L_k, not clipped
        torch.testing.assert_close(heads[k], w[k] * head_grads[k], rtol=1e-5, atol=1e-6)


def test_update_every_two_steps_reuses_alpha_with_one_backward():
    toy = Toy(seed=1)
    method = NashMTL(update_weights_every=2, max_norm=None)
    method.bind(toy.bound)
    w1, _, _ = one_step(method, toy)
    with torch.no_grad():
        toy.shared.weight.add_(0.1)  # new gradients, same alpha expected
    g, head_grads = toy.task_gradients()
    w2, shared, heads = one_step(method, toy)
    torch.testing.assert_close(w2, w1)
    torch.testing.assert_close(shared, w1 @ g, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(heads[1], w1[1] * head_grads[1], rtol=1e-5, atol=1e-6)
    assert method.step == 2


@pytest.mark.parametrize(
    "kwargs, name",
    [({"update_weights_every": 0}, "update_weights_every"), ({"optim_niter": 0}, "optim_niter"),
     ({"max_norm": 0.0}, "max_norm"), ({"tol": 1.0}, "tol")],
)
def test_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        NashMTL(**kwargs)
