"""GradVac (okd/weighting/gradvac.py): docs/weighting.md#gradvac hand cases, a vector-form reference, the toy."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from okd.weighting.base import BoundModel
from okd.weighting.gradtools import random_orders
from okd.weighting.gradvac import GradVac, vaccine_coefficients
from okd.weighting.pcgrad import PCGrad
from okd.weighting.solvers import gram
from toys import TanhToy, bound_method, t64


def cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()))


@pytest.mark.parametrize("gi, gj, target, expected", [
    ([1, 0], [0, 1], 0.5, [1.0, 1 / math.sqrt(3)]),
    ([2, 0], [1, 1], 0.9, [3.064742, 1.064742]),
])
def test_single_correction_reaches_the_target(gi, gj, target, expected):
    g = t64([gi, gj])
    phi_hat = torch.full((2, 2, 1), target, dtype=torch.float64)
    coeffs, _ = vaccine_coefficients(gram(g)[None], phi_hat, [[1], [0]], beta=0.5)
    gi_prime = coeffs[0, 0] @ g
    torch.testing.assert_close(gi_prime, t64(expected), atol=1e-6, rtol=0)
    assert cos(gi_prime, g[1]) == pytest.approx(target, abs=1e-7)  # eps = 1e-8 in the divisions


def bind_flat(method: GradVac, num_tasks: int, size: int) -> GradVac:
    """Bind to one shared parameter of ``size`` entries (for hand-made gradients)."""
    names = [str(k) for k in range(num_tasks)]
    method.bind(BoundModel(names, [nn.Parameter(torch.zeros(size, dtype=torch.float64))]))
    return method


def test_first_step_two_tasks_and_ema():
    vac = bind_flat(GradVac(beta=0.5), 2, 2)
    d, w = vac.combine(t64([[1, 0], [-1, 1]]), t64([1.0, 1.0]))
    torch.testing.assert_close(d, t64([0.5, 1.5]))
    torch.testing.assert_close(w, t64([2.0, 1.5]))
    expected = torch.zeros(2, 2, 1, dtype=torch.float64)
    expected[0, 1] = expected[1, 0] = -0.5 / math.sqrt(2)  # 0.5 * cos = -0.353553
    torch.testing.assert_close(vac.phi_hat, expected)


def test_no_correction_above_target_but_ema_still_moves():
    g = t64([[1, 0], [1, 1]])
    coeffs, phi_hat = vaccine_coefficients(gram(g)[None], torch.zeros(2, 2, 1, dtype=torch.float64),
                                           [[1], [0]], beta=0.1)
    torch.testing.assert_close(coeffs[0], torch.eye(2, dtype=torch.float64))
    torch.testing.assert_close(phi_hat[0, 1, 0], t64(0.1 / math.sqrt(2)))


def test_target_near_one_stays_finite():
    g = t64([[1, 0], [0, 1]])
    coeffs, _ = vaccine_coefficients(gram(g)[None], torch.ones(2, 2, 1, dtype=torch.float64),
                                     [[1], [0]], beta=0.5)
    assert torch.isfinite(coeffs).all()


def test_first_step_equals_pcgrad_with_the_same_orders():
    g = torch.randn(3, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    vac = bind_flat(GradVac(seed=11), 3, 6)
    d_vac, _ = vac.combine(g, torch.ones(3))
    d_pc, _ = PCGrad(seed=11).combine(g, torch.ones(3))
    torch.testing.assert_close(d_vac, d_pc, rtol=1e-7, atol=1e-12)


def reference_gradvac(g, sizes, phi_hat, orders, beta):
    """LibMTL-style loops on explicit vector slices (independent of the Gram form)."""
    g_prime = g.clone()
    bounds = torch.tensor([0] + sizes).cumsum(0).tolist()
    for i, order in enumerate(orders):
        for j in order:
            for k in range(len(sizes)):
                sl = slice(bounds[k], bounds[k + 1])
                gi, gj = g_prime[i, sl], g[j, sl]
                phi = float(gi @ gj / (gi.norm() * gj.norm()))
                t = float(phi_hat[i, j, k])
                if phi < t:
                    c = gi.norm() * (t * math.sqrt(1 - phi**2) - phi * math.sqrt(1 - t**2)) / (
                        gj.norm() * math.sqrt(1 - t**2))
                    g_prime[i, sl] = gi + c * gj
                phi_hat[i, j, k] = (1 - beta) * phi_hat[i, j, k] + beta * phi
    return g_prime.sum(0)


@pytest.mark.parametrize("group_type", ["whole", "tensor"])
def test_matches_vector_reference_over_steps(group_type):
    toy = TanhToy()
    vac = bound_method(lambda: GradVac(beta=0.3, group_type=group_type, seed=2), toy)
    sizes = [25] if group_type == "whole" else [20, 5]  # shared Linear(4, 5): weight, bias
    assert vac.group_sizes == sizes and vac.phi_hat.shape == (3, 3, len(sizes))
    gen = torch.Generator().manual_seed(2)
    phi_hat = torch.zeros(3, 3, len(sizes), dtype=torch.float64)
    data = torch.Generator().manual_seed(0)
    for _ in range(4):
        g = torch.randn(3, 25, generator=data, dtype=torch.float64)
        g[1] -= 0.8 * g[0]  # conflicts
        expected = reference_gradvac(g, sizes, phi_hat, random_orders(3, gen), 0.3)
        d, _ = vac.combine(g, torch.ones(3))
        torch.testing.assert_close(d, expected, rtol=1e-7, atol=1e-10)
        torch.testing.assert_close(vac.phi_hat, phi_hat, rtol=1e-7, atol=1e-10)


def test_bad_arguments_raise():
    for kwargs, name in [({"beta": 0}, "beta"), ({"beta": 2}, "beta"),
                         ({"group_type": "layer"}, "group_type"),
                         ({"eps": 0}, "eps")]:
        with pytest.raises(ValueError, match=name):
            GradVac(**kwargs)
    toy = TanhToy()
    vac = bound_method(GradVac, toy)
    with pytest.raises(ValueError, match="columns"):
        vac.combine(torch.ones(3, 7), torch.ones(3))
