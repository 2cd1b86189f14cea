"""Simplex / min-norm solvers (okd/weighting/solvers.py) against closed forms and KKT conditions."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from okd.weighting.solvers import (
    gram,
    min_norm_2,
    min_norm_element,
    minimize_on_simplex,
    normalized_gram,
    project_to_simplex,
)
from toys import t64


def test_gram_is_float64_g_gt():
    g = torch.tensor([[1.0, 2.0], [3.0, -1.0]])
    m = gram(g)
    assert m.dtype == torch.float64
    torch.testing.assert_close(m, t64([[5.0, 1.0], [1.0, 10.0]]))
    with pytest.raises(ValueError, match="grads"):
        gram(torch.ones(3))


def test_gram_chunks_give_the_same_matrix():
    g = torch.randn(3, 1001, generator=torch.Generator().manual_seed(0))
    full = g.double() @ g.double().T
    torch.testing.assert_close(gram(g, chunk=64), full, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gram(g, chunk=5000), full, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("v, expected", [
    ([0.5, 0.5], [0.5, 0.5]),
    ([1.0, 1.0], [0.5, 0.5]),
    ([2.0, 0.0], [1.0, 0.0]),
    ([0.2, -1.0, 0.5], [0.35, 0.0, 0.65]),  # theta = -0.15 by hand
])
def test_project_to_simplex_hand_values(v, expected):
    torch.testing.assert_close(project_to_simplex(t64(v)), t64(expected))


def test_project_to_simplex_kkt_on_random_vectors():
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        v = 3 * torch.randn(5, generator=gen, dtype=torch.float64)
        w = project_to_simplex(v)
        assert (w >= 0).all() and abs(w.sum().item() - 1) < 1e-12
        # Projection optimality: v - w = theta on the support and <= theta off it.
        r = v - w
        theta = r[w > 0]
        assert torch.allclose(theta, theta[0].expand_as(theta), atol=1e-12)
        assert (r[w == 0] <= theta[0] + 1e-12).all()


def test_project_to_simplex_rejects_bad_input():
    with pytest.raises(ValueError, match="non-finite"):
        project_to_simplex(t64([1.0, float("nan")]))
    with pytest.raises(ValueError, match="vector"):
        project_to_simplex(torch.ones(2, 2))


def test_min_norm_2_interior_and_ends():
    # g1 = (1,0), g2 = (-1,1): v11 = 1, v12 = -1, v22 = 2 -> gamma = 3/5, cost = |(0.2,0.4)|^2.
    gamma, cost = min_norm_2(1.0, -1.0, 2.0)
    assert gamma == pytest.approx(0.6) and cost == pytest.approx(0.2)
    # g1 = (1,0), g2 = (2,0): all weight on g1; the reference clamps to 0.999.
    assert min_norm_2(1.0, 2.0, 4.0) == (1.0, 1.0)
    assert min_norm_2(1.0, 2.0, 4.0, exact=False) == (0.999, 1.0)
    assert min_norm_2(4.0, 2.0, 1.0) == (0.0, 1.0)
    assert min_norm_2(4.0, 2.0, 1.0, exact=False) == (0.001, 1.0)


@pytest.mark.parametrize("method", ["pgd", "frank_wolfe"])
@pytest.mark.parametrize("rows, expected", [
    ([[1, 0], [0, 1]], [0.5, 0.5]),
    ([[1, 0], [-1, 1]], [0.6, 0.4]),
    ([[1, 0], [2, 0]], [1.0, 0.0]),
    ([[2, 0], [0, 1], [1, 1]], [0.2, 0.8, 0.0]),
])
def test_min_norm_element_zoo_cases(method, rows, expected):
    w = min_norm_element(gram(t64(rows)), method=method)
    torch.testing.assert_close(w, t64(expected), atol=1e-6, rtol=0)


def test_min_norm_element_reference_clamps_within_1e3():
    w = min_norm_element(gram(t64([[1, 0], [2, 0]])), exact=False)
    torch.testing.assert_close(w, t64([0.999, 0.001]), atol=1e-12, rtol=0)


def test_min_norm_element_kkt_on_random_gram():
    """g_k . d >= ||d||^2 for all k, equality where w_k > 0 (d = G^T w, docs/weighting.md#mgda)."""
    gen = torch.Generator().manual_seed(1)
    for _ in range(30):
        k = int(torch.randint(3, 7, (1,), generator=gen))
        g = torch.randn(k, 6, generator=gen, dtype=torch.float64)
        w = min_norm_element(gram(g))
        assert (w >= 0).all() and abs(w.sum().item() - 1) < 1e-12
        d = w @ g
        slack = (g @ d - d @ d) / g.norm(dim=1).max() ** 2
        assert slack.min() > -1e-3
        assert slack[w > 1e-2].abs().max() < 1e-3


def test_min_norm_element_is_scale_free_and_handles_zero():
    g = t64([[2, 0, 1], [0, 1, -1], [1, 1, 1]])
    w = min_norm_element(gram(g))
    torch.testing.assert_close(min_norm_element(gram(1e-4 * g)), w, atol=1e-9, rtol=0)
    torch.testing.assert_close(min_norm_element(torch.zeros(3, 3)), t64([1 / 3] * 3))
    torch.testing.assert_close(min_norm_element(t64([[4.0]])), t64([1.0]))


def test_min_norm_element_rejects_bad_arguments():
    m = torch.eye(2)
    with pytest.raises(ValueError, match="method"):
        min_norm_element(m, method="newton")
    with pytest.raises(ValueError, match="max_iter"):
        min_norm_element(m, max_iter=0)
    with pytest.raises(ValueError, match="square"):
        min_norm_element(torch.ones(2, 3))


def test_normalized_gram_divides_by_largest_diagonal():
    m, s = normalized_gram(t64([[4.0, 1.0], [1.0, 2.0]]))
    assert s == 4.0
    np.testing.assert_allclose(m, [[1.0, 0.25], [0.25, 0.5]])


def test_minimize_on_simplex_quadratic_is_projection():
    target = np.array([0.2, -1.0, 0.5])
    x = minimize_on_simplex(lambda w: float(((w - target) ** 2).sum()), lambda w: 2 * (w - target),
                            np.ones(3) / 3)
    np.testing.assert_allclose(x, [0.35, 0.0, 0.65], atol=1e-10)


def test_minimize_on_simplex_linear_goes_to_best_vertex():
    c = np.array([3.0, -1.0, 2.0])
    x = minimize_on_simplex(lambda w: float(c @ w), lambda w: c, np.ones(3) / 3)
    np.testing.assert_allclose(x, [0.0, 1.0, 0.0], atol=1e-12)
