"""okd.weighting.qp: the exact non-negative QP solver and UPGrad's bound-constrained QP."""
from __future__ import annotations

import itertools

import pytest
import torch

from okd.weighting.qp import min_quadratic_above, nonnegative_qp
from toys import rows64


def test_one_dimensional_cases():
    # min_s>=0 s^2 - 4 s -> s = 2 ; min_s>=0 s^2 + 4 s -> s = 0.
    torch.testing.assert_close(nonnegative_qp(rows64([2.0]), torch.tensor([-4.0])), rows64(2.0))
    torch.testing.assert_close(nonnegative_qp(rows64([2.0]), torch.tensor([4.0])), rows64(0.0))


def test_hand_case_with_one_active_bound():
    # Q = I, c = (-1, 2): unconstrained optimum (1, -2) -> clipped coordinate-wise to (1, 0).
    torch.testing.assert_close(nonnegative_qp(torch.eye(2), torch.tensor([-1.0, 2.0])), rows64(1.0, 0.0))
    # Coupled: Q = [[2, 1], [1, 2]], c = (-1, 1): s2 = 0 and s1 = 1/2 (gradient of s2: 1/2 + 1 > 0).
    torch.testing.assert_close(nonnegative_qp(rows64([2.0, 1.0], [1.0, 2.0]), rows64(-1.0, 1.0)), rows64(0.5, 0.0))


def _brute_force(q, c):
    """Enumerate the active sets; keep the feasible KKT point of lowest objective."""
    k, best, best_val = c.numel(), None, float("inf")
    for free in itertools.product([False, True], repeat=k):
        idx = [i for i in range(k) if free[i]]
        s = torch.zeros(k, dtype=torch.float64)
        if idx:
            s[idx] = torch.linalg.solve(q[idx][:, idx], -c[idx])
        if (s >= -1e-12).all():
            val = float(0.5 * s @ q @ s + c @ s)
            if val < best_val:
                best, best_val = s, val
    return best


@pytest.mark.parametrize("seed", range(6))
def test_random_problems_satisfy_kkt_and_match_enumeration(seed):
    gen = torch.Generator().manual_seed(seed)
    k = 2 + seed % 4
    a = torch.randn(k + 1, k, generator=gen, dtype=torch.float64)
    q = a.T @ a + 1e-3 * torch.eye(k, dtype=torch.float64)
    c = torch.randn(k, generator=gen, dtype=torch.float64)
    s = nonnegative_qp(q, c)
    grad = q @ s + c
    assert (s >= 0).all()
    assert (grad >= -1e-10).all()
    assert float((s * grad).abs().max()) < 1e-10
    torch.testing.assert_close(s, _brute_force(q, c), rtol=1e-9, atol=1e-10)


def test_singular_matrix_is_allowed():
    # Q = 1 1^T (rank 1), c = (-1, -1): any s >= 0 with s1 + s2 = 1 is optimal.
    s = nonnegative_qp(torch.ones(2, 2), torch.tensor([-1.0, -1.0]))
    assert (s >= 0).all() and abs(float(s.sum()) - 1.0) < 1e-10


def test_min_quadratic_above_projection_case():
    # docs/weighting.md#upgrad: M of g = (1,0), (-1,1); lower bound (1/2, 0) -> v = (1/2, 1/4).
    m = rows64([1.0, -1.0], [-1.0, 2.0])
    torch.testing.assert_close(min_quadratic_above(m, rows64(0.5, 0.0)), rows64(0.5, 0.25))
    torch.testing.assert_close(min_quadratic_above(m, rows64(0.0, 0.5)), rows64(0.5, 0.5))


def test_shape_errors_name_the_problem():
    with pytest.raises(ValueError, match="square"):
        nonnegative_qp(torch.zeros(2, 3), torch.zeros(2))
    with pytest.raises(ValueError, match="shape"):
        min_quadratic_above(torch.eye(2), torch.zeros(3))
