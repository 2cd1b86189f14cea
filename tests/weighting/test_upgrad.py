"""UPGrad: projections onto the dual cone {x : G x >= 0}, mean; docs/weighting.md#upgrad hand values."""
from __future__ import annotations

import pytest
import torch
from toys import Toy, one_step, rows64

from okd.weighting.base import BoundModel
from okd.weighting.upgrad import UPGrad, upgrad_weights


def combine(g, **kwargs):
    method = UPGrad(**kwargs)
    method.bind(BoundModel([f"t{i}" for i in range(len(g))], [torch.nn.Parameter(torch.zeros(1))]))
    return method.combine(g, torch.zeros(len(g)))


def test_two_conflicting_gradients():
    # pi(g1) = (0.5, 0.5), pi(g2) = (0, 1): w = (1, 0.75), d = (0.25, 0.75).
    g = rows64([1, 0], [-1, 1])
    d, w = combine(g, reg_eps=0.0)
    torch.testing.assert_close(w, rows64(1.0, 0.75))
    torch.testing.assert_close(d, rows64(0.25, 0.75))
    d, w = combine(g)  # default reg_eps 1e-4: within 1e-3 of the exact values
    torch.testing.assert_close(d, rows64(0.25, 0.75), atol=1e-3, rtol=0)


def test_orthogonal_gradients_give_the_mean():
    g = rows64([1, 0, 0], [0, 2, 0], [0, 0, 3])
    d, w = combine(g, reg_eps=0.0)
    torch.testing.assert_close(w, torch.full((3,), 1 / 3, dtype=torch.float64))
    torch.testing.assert_close(d, g.mean(0))


def test_positively_spanning_gradients_give_zero():
    d, w = combine(rows64([1, 0], [-1, 1], [0, -1]))
    torch.testing.assert_close(w, torch.ones(3, dtype=torch.float64), atol=1e-3, rtol=0)
    torch.testing.assert_close(d, torch.zeros(2, dtype=torch.float64), atol=1e-6, rtol=0)


def test_three_task_case_with_and_without_regularisation():
    g = rows64([1, 0, 0], [-0.5, 1, 0], [-0.5, -0.5, 1])
    d, w = combine(g, reg_eps=0.0)
    torch.testing.assert_close(w, rows64(0.816667, 0.660920, 0.604598), atol=1e-6, rtol=0)
    torch.testing.assert_close(d, rows64(0.183908, 0.358621, 0.604598), atol=1e-6, rtol=0)
    torch.testing.assert_close(g @ d, rows64(0.183908, 0.266667, 0.333333), atol=1e-6, rtol=0)
    _, w = combine(g)
    torch.testing.assert_close(w, rows64(0.816393, 0.660753, 0.604479), atol=1e-6, rtol=0)


@pytest.mark.parametrize("seed", range(3))
def test_two_tasks_equal_pcgrad_mean(seed):
    g = torch.randn(2, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    g[1] = g[1] - 2 * (g[0] @ g[1]).abs() / (g[0] @ g[0]) * g[0]  # make them conflict
    assert g[0] @ g[1] < 0
    proj = [g[i] - (g[i] @ g[1 - i]) / (g[1 - i] @ g[1 - i]) * g[1 - i] for i in range(2)]
    d, _ = combine(g, reg_eps=0.0)
    torch.testing.assert_close(d, (proj[0] + proj[1]) / 2)


@pytest.mark.parametrize("seed", range(4))
def test_no_task_conflicts_with_the_direction(seed):
    gen = torch.Generator().manual_seed(seed)
    k = 3 + seed % 3
    g = torch.randn(k, 4, generator=gen, dtype=torch.float64)
    d, _ = combine(g, reg_eps=0.0)
    assert (g @ d >= -1e-10).all()
    d, _ = combine(g)  # the regulariser allows about -reg_eps * tr(M) w_k
    assert (g @ d >= -1e-3 * float((g * g).sum())).all()


def test_scale_equivariance():
    g = torch.randn(3, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    d, w = combine(g)
    d_s, w_s = combine(1e3 * g)
    torch.testing.assert_close(w_s, w)
    torch.testing.assert_close(d_s, 1e3 * d)


def test_tiny_gram_trace_falls_back_to_the_mean():
    # tr(M) < norm_eps: torchjd zeroes the normalised Gram matrix, so v = u and d = mean.
    g = rows64([1e-3, 0], [-1e-3, 1e-3])
    d, w = combine(g)
    torch.testing.assert_close(w, rows64(0.5, 0.5))
    torch.testing.assert_close(d, g.mean(0))


def test_preference_vector():
    g = rows64([1, 0], [0, 1])
    w = upgrad_weights(g @ g.T, pref_vector=[0.2, 0.8], reg_eps=0.0)
    torch.testing.assert_close(w, rows64(0.2, 0.8))


def test_integration_gradients():
    toy = Toy()
    method = UPGrad()
    method.bind(toy.bound)
    g, head_grads = toy.task_gradients()
    w_ref = upgrad_weights(g.double() @ g.double().T)
    w, shared, heads = one_step(method, toy)
    torch.testing.assert_close(w, w_ref)
    torch.testing.assert_close(shared, w_ref.float() @ g, rtol=1e-5, atol=1e-6)
    assert (g @ shared >= -1e-3 * float((g * g).sum())).all()
    for k in range(3):
        torch.testing.assert_close(heads[k], head_grads[k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, name",
    [({"norm_eps": -1.0}, "norm_eps"), ({"reg_eps": -1.0}, "reg_eps"),
     ({"pref_vector": [-1.0, 1.0]}, "pref_vector")],
)
def test_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        UPGrad(**kwargs)


def test_pref_vector_length_is_checked_at_bind():
    with pytest.raises(ValueError, match="pref_vector"):
        combine(rows64([1, 0], [0, 1], [1, 1]), pref_vector=[0.5, 0.5])
