"""MGDA / MGDA-UB (okd/weighting/mgda.py): docs/weighting.md#mgda hand cases, KKT, and the 3-task toy."""
from __future__ import annotations

import pytest
import torch

from okd.weighting.mgda import MGDA
from okd.weighting.solvers import gram, min_norm_element
from toys import TanhToy, bound_method, step, t64


ONES = t64([1.0, 1.0])


@pytest.mark.parametrize("rows, w, d", [
    ([[1, 0], [0, 1]], [0.5, 0.5], [0.5, 0.5]),
    ([[1, 0], [-1, 1]], [0.6, 0.4], [0.2, 0.4]),
    ([[1, 0], [2, 0]], [1.0, 0.0], [1.0, 0.0]),
    ([[2, 0], [0, 1], [1, 1]], [0.2, 0.8, 0.0], [0.4, 0.8]),
])
def test_min_norm_point_hand_cases(rows, w, d):
    g = t64(rows)
    direction, weights = MGDA().combine(g, torch.ones(len(rows), dtype=torch.float64))
    torch.testing.assert_close(weights, t64(w), atol=1e-6, rtol=0)
    torch.testing.assert_close(direction, t64(d), atol=1e-6, rtol=0)


def test_orthogonal_to_difference_for_two_tasks():
    g = t64([[1, 0], [-1, 1]])
    d, _ = MGDA().combine(g, ONES)
    assert abs(float(d @ (g[0] - g[1]))) < 1e-12


def test_reference_clamps_within_1e3():
    d, w = MGDA(exact_pair=False).combine(t64([[1, 0], [2, 0]]), ONES)
    torch.testing.assert_close(w, t64([0.999, 0.001]), atol=1e-12, rtol=0)  # the clamps
    torch.testing.assert_close(d, t64([1.0, 0.0]), atol=1.001e-3, rtol=0)  # exact d within 1e-3


@pytest.mark.parametrize("apply, d, w", [
    ("original", [1.0, 0.5], [0.5, 0.5]),
    ("libmtl", [0.5, 0.5], [0.25, 0.5]),   # sum w_k g_k/||g_k||: coefficients w / n
    ("nashmtl", [2.0, 1.0], [1.0, 1.0]),
])
def test_l2_normalisation_and_apply_variants(apply, d, w):
    direction, weights = MGDA(normalization="l2", apply=apply, eps=1e-12).combine(t64([[2, 0], [0, 1]]), ONES)
    torch.testing.assert_close(direction, t64(d), atol=1e-9, rtol=0)
    torch.testing.assert_close(weights, t64(w), atol=1e-9, rtol=0)


@pytest.mark.parametrize("apply, d", [("original", [1.6, 0.2]), ("libmtl", [0.4, 0.2])])
def test_loss_plus_normalisation(apply, d):
    mgda = MGDA(normalization="loss+", apply=apply, eps=1e-12)
    direction, _ = mgda.combine(t64([[2, 0], [0, 1]]), t64([2.0, 1.0]))
    torch.testing.assert_close(direction, t64(d), atol=1e-9, rtol=0)
    w, _ = mgda.solve(gram(t64([[2, 0], [0, 1]])), t64([2.0, 1.0]))
    torch.testing.assert_close(w, t64([0.8, 0.2]), atol=1e-9, rtol=0)


def test_loss_normalisation_divides_by_losses():
    # g^ = (2,0)/4, (0,1)/1 -> w = argmin on (0.5,0),(0,1) = (0.8, 0.2)
    d, w = MGDA(normalization="loss", eps=1e-12).combine(t64([[2, 0], [0, 1]]), t64([4.0, 1.0]))
    torch.testing.assert_close(w, t64([0.8, 0.2]), atol=1e-9, rtol=0)


def test_kkt_on_random_gradients():
    gen = torch.Generator().manual_seed(0)
    for _ in range(10):
        g = torch.randn(4, 7, generator=gen, dtype=torch.float64)
        d, w = MGDA().combine(g, torch.ones(4, dtype=torch.float64))
        slack = (g @ d - d @ d) / g.norm(dim=1).max() ** 2
        assert slack.min() > -1e-3 and slack[w > 1e-2].abs().max() < 1e-3


def test_scale_equivariance_without_normalisation():
    g = torch.randn(3, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    losses = torch.ones(3, dtype=torch.float64)
    d, _ = MGDA().combine(g, losses)
    d_scaled, _ = MGDA().combine(3.7 * g, losses)
    torch.testing.assert_close(d_scaled, 3.7 * d, atol=1e-9, rtol=1e-7)


def test_l2_normalisation_is_scale_invariant_per_task():
    g = torch.randn(3, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    losses = torch.ones(3, dtype=torch.float64)
    mgda = MGDA(normalization="l2", apply="libmtl")
    d, _ = mgda.combine(g, losses)
    d_scaled, _ = mgda.combine(g * t64([[5.0], [0.1], [2.0]]), losses)
    torch.testing.assert_close(d_scaled, d, atol=1e-7, rtol=1e-6)


def test_bad_arguments_raise():
    for kwargs, name in [({"normalization": "l1"}, "normalization"), ({"apply": "sum"}, "apply"),
                         ({"rep_gram": "mean"}, "rep_gram"), ({"solver": "cvx"}, "solver"),
                         ({"max_iter": 0}, "max_iter"), ({"tol": 0}, "tol")]:
        with pytest.raises(ValueError, match=name):
            MGDA(**kwargs)


# -- integration on the 3-task toy --------------------------------------------------------------
@pytest.mark.parametrize("apply, weighted", [("original", True), ("libmtl", False), ("nashmtl", True)])
def test_head_rule(apply, weighted):
    # original / nashmtl backpropagate sum w_k L_k: heads weighted; libmtl: raw heads. That backward
    # writes combine's direction and these head weights: tests/weighting/test_properties.py.
    w = t64([0.2, 0.3, 0.5])
    head_w = MGDA(apply=apply).head_weights(w, t64([1.0, 2.0, 3.0]))
    assert head_w is w if weighted else head_w is None


@pytest.mark.parametrize("rep_gram", ["flatten", "batch_sum"])
@pytest.mark.parametrize("apply", ["original", "libmtl"])
def test_mgda_ub_backward(rep_gram, apply):
    toy = TanhToy()
    mgda = bound_method(lambda: MGDA(level="representation", rep_gram=rep_gram, apply=apply), toy)
    assert mgda.needs_representation
    ref = toy.reference()
    z = ref["z"]
    rows = (z.sum(dim=1) if rep_gram == "batch_sum" else z).reshape(3, -1)
    w = min_norm_element(gram(rows))
    returned = step(mgda, toy)
    torch.testing.assert_close(returned, w, atol=1e-12, rtol=0)
    expected = toy.encoder_vjp(torch.tensordot(w, z, dims=1))
    torch.testing.assert_close(toy.shared_grad(), expected, rtol=1e-10, atol=1e-12)
    head_w = w if apply == "original" else torch.ones(3, dtype=torch.float64)
    torch.testing.assert_close(toy.head_grad(), head_w @ ref["heads"], rtol=1e-10, atol=1e-12)


def test_mgda_ub_needs_representation():
    toy = TanhToy()
    mgda = bound_method(lambda: MGDA(level="representation"), toy)
    losses, _ = toy.forward()
    with pytest.raises(ValueError, match="representation"):
        mgda.backward(losses)
