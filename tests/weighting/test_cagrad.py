"""CAGrad (okd/weighting/cagrad.py): docs/weighting.md#cagrad hand cases, the primal properties, the toy."""
from __future__ import annotations

import pytest
import torch

from okd.weighting.cagrad import CAGrad, cagrad_weights
from okd.weighting.solvers import gram
from toys import t64


def direction(rows, **kwargs) -> torch.Tensor:
    g = t64(rows)
    return CAGrad(**kwargs).combine(g, torch.ones(g.shape[0], dtype=torch.float64))[0]


@pytest.mark.parametrize("rescale, times_k, expected", [
    (0, False, [0.75, 0.75]),   # (1 + c) g0
    (1, False, [0.6, 0.6]),     # / (1 + c^2)  (LibMTL)
    (1, True, [1.2, 1.2]),      # x K          (official)
    (2, False, [0.5, 0.5]),     # / (1 + c)
])
def test_orthogonal_unit_gradients(rescale, times_k, expected):
    d = direction([[1, 0], [0, 1]], c=0.5, rescale=rescale, times_k=times_k)
    torch.testing.assert_close(d, t64(expected), atol=1e-6, rtol=0)


def test_boundary_solution():
    # w* = (1, 0), c ||g0|| = 0.559017 -> d = g0 + 0.559017 g1
    torch.testing.assert_close(direction([[1, 0], [0, 2]], c=0.5, rescale=0, times_k=False),
                               t64([1.059017, 1.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(direction([[1, 0], [0, 2]], c=0.5, rescale=1, times_k=False),
                               t64([0.847214, 0.8]), atol=1e-6, rtol=0)


def test_interior_solution():
    torch.testing.assert_close(direction([[1, 0], [-0.5, 1]], c=0.5, rescale=0, times_k=False),
                               t64([0.457889, 0.686834]), atol=1e-6, rtol=0)


@pytest.mark.parametrize("times_k, factor", [(False, 1.0), (True, 3.0)])
def test_c_zero_is_the_mean_gradient(times_k, factor):
    g = torch.randn(3, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    d, w = CAGrad(c=0.0, times_k=times_k).combine(g, torch.ones(3))
    torch.testing.assert_close(d, factor * g.mean(0))
    torch.testing.assert_close(w, torch.full((3,), factor / 3, dtype=torch.float64))


def test_ball_radius_and_primal_optimality_on_random_gradients():
    """||d - g0|| = c ||g0|| and no point of the ball has a better worst-task inner product."""
    gen = torch.Generator().manual_seed(1)
    c = 0.4
    for _ in range(10):
        g = torch.randn(3, 4, generator=gen, dtype=torch.float64)
        g0 = g.mean(0)
        d, _ = CAGrad(c=c, rescale=0, times_k=False).combine(g, torch.ones(3))
        assert float((d - g0).norm()) == pytest.approx(c * float(g0.norm()), rel=1e-6)
        best = float((g @ d).min())
        u = torch.randn(2000, 4, generator=gen, dtype=torch.float64)
        ball = g0 + c * g0.norm() * u / u.norm(dim=1, keepdim=True)
        assert float((ball @ g.T).min(dim=1).values.max()) <= best + 1e-7


def test_scale_equivariance():
    g = torch.randn(3, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    d, _ = CAGrad().combine(g, torch.ones(3))
    d_scaled, _ = CAGrad().combine(2e-3 * g, torch.ones(3))
    torch.testing.assert_close(d_scaled, 2e-3 * d, rtol=1e-7, atol=1e-15)


def test_pareto_stationary_guard():
    # 0 = (g1 + g2)/2 is in the hull: g_w = 0 at the optimum -> mean weights, d = g0.
    g = t64([[1, 0], [-1, 0], [0, 1]])
    lam = cagrad_weights(gram(g), 0.5)
    torch.testing.assert_close(lam, torch.full((3,), 1 / 3, dtype=torch.float64))
    # not symmetric: the smoothed dual stops at a tiny g_w whose direction is arbitrary
    g = t64([[1, 0], [-1, 0], [0.1, 1]])
    torch.testing.assert_close(cagrad_weights(gram(g), 0.5), torch.full((3,), 1 / 3, dtype=torch.float64))
    # close to, but not at, a stationary point the correction stays (min_k g_k . d > 0)
    g = t64([[1, 0], [-1, 0.01], [0, 1]])
    d = cagrad_weights(gram(g), 0.5) @ g
    assert float((g @ d).min()) > 1e-3
    # opposite gradients: g0 = 0, nothing to do
    d, w = CAGrad(times_k=False).combine(t64([[1, 2], [-1, -2]]), torch.ones(2))
    torch.testing.assert_close(d, torch.zeros(2, dtype=torch.float64))


def test_bad_arguments_raise():
    for kwargs, name in [({"c": -0.1}, "c"), ({"c": float("inf")}, "c"), ({"rescale": 3}, "rescale"),
                         ({"eps": 0}, "eps")]:
        with pytest.raises(ValueError, match=name):
            CAGrad(**kwargs)
