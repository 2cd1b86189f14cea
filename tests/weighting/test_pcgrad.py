"""PCGrad (okd/weighting/pcgrad.py): docs/weighting.md#pcgrad hand cases, properties and the 3-task toy."""
from __future__ import annotations

import pytest
import torch

from okd.weighting.gradtools import random_orders
from okd.weighting.pcgrad import PCGrad, pcgrad_coefficients
from okd.weighting.solvers import gram
from toys import TanhToy, bound_method, copy_state, t64


def projected(rows, orders) -> torch.Tensor:
    g = t64(rows)
    return pcgrad_coefficients(gram(g), orders) @ g  # rows g_i'


def test_two_conflicting_gradients():
    g_prime = projected([[1, 0], [-1, 1]], [[1], [0]])
    torch.testing.assert_close(g_prime, t64([[0.5, 0.5], [0.0, 1.0]]))
    d, w = PCGrad().combine(t64([[1, 0], [-1, 1]]), t64([1.0, 1.0]))
    torch.testing.assert_close(d, t64([0.5, 1.5]))
    # g1' = g1 + 0.5 g2, g2' = g2 + g1: effective coefficients (2, 1.5)
    torch.testing.assert_close(w, t64([2.0, 1.5]))


def test_no_conflict_is_plain_sum_and_mean_reduction():
    g = t64([[1, 0], [1, 1]])
    torch.testing.assert_close(PCGrad().combine(g, t64([1.0, 1.0]))[0], t64([2.0, 1.0]))
    torch.testing.assert_close(PCGrad(reduction="mean").combine(g, t64([1.0, 1.0]))[0], t64([1.0, 0.5]))


def test_order_dependence_k3():
    rows = [[1, 0, 0], [-0.5, 1, 0], [-0.5, -0.5, 1]]
    d = projected(rows, [[1, 2], [0, 2], [0, 1]]).sum(0)
    torch.testing.assert_close(d, t64([7 / 30, 14 / 15, 26 / 15]))
    d_rev = projected(rows, [[2, 1], [2, 0], [1, 0]]).sum(0)
    torch.testing.assert_close(d_rev, t64([0.6, 11 / 12, 1.5]))


def test_no_pairwise_conflict_after_projection_for_two_tasks():
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        g = torch.randn(2, 5, generator=gen, dtype=torch.float64)
        g_prime = pcgrad_coefficients(gram(g), [[1], [0]]) @ g
        # >= 0 up to the eps = 1e-8 added to ||g_j||^2
        tol = 1e-7 * float(g.norm(dim=1).prod())
        assert float(g_prime[0] @ g[1]) > -tol and float(g_prime[1] @ g[0]) > -tol


def test_scale_equivariance():
    g = torch.randn(3, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    losses = torch.ones(3, dtype=torch.float64)
    d, _ = PCGrad(seed=4).combine(g, losses)
    d_scaled, _ = PCGrad(seed=4).combine(3.7 * g, losses)
    # exact up to the absolute eps = 1e-8 on ||g_j||^2 (reference behaviour)
    torch.testing.assert_close(d_scaled, 3.7 * d, rtol=1e-7, atol=1e-12)


def test_orders_are_seeded_and_cover_the_other_tasks():
    orders = random_orders(4, torch.Generator().manual_seed(0))
    assert [sorted(o) for o in orders] == [[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]]
    assert orders == random_orders(4, torch.Generator().manual_seed(0))


def test_generator_state_round_trip_on_order_dependent_case():
    rows = t64([[1, 0, 0], [-0.5, 1, 0], [-0.5, -0.5, 1]])
    toy = TanhToy()  # only to bind: combine itself sees the hand-made rows
    first = bound_method(lambda: PCGrad(seed=7), toy)
    for _ in range(3):
        first.combine(rows, torch.ones(3))
    second = bound_method(lambda: PCGrad(seed=7), toy)
    copy_state(first, second)
    fresh = bound_method(lambda: PCGrad(seed=7), toy)
    seq_first = [first.combine(rows, torch.ones(3))[0] for _ in range(8)]
    seq_second = [second.combine(rows, torch.ones(3))[0] for _ in range(8)]
    seq_fresh = [fresh.combine(rows, torch.ones(3))[0] for _ in range(8)]
    for a, b in zip(seq_first, seq_second):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert any(not torch.equal(a, b) for a, b in zip(seq_first, seq_fresh))


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="reduction"):
        PCGrad(reduction="max")
    with pytest.raises(ValueError, match="seed"):
        PCGrad(seed=1.5)
    with pytest.raises(ValueError, match="eps"):
        PCGrad(eps=-1)
