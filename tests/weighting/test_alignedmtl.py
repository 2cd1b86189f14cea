"""Aligned-MTL(-UB): B G has orthogonal rows of equal norm; docs/weighting.md#alignedmtl hand values; the UB path."""
from __future__ import annotations

import math

import pytest
import torch
from toys import Toy, one_step, rows64

from okd.weighting.alignedmtl import AlignedMTL, alignment_matrix


@pytest.mark.parametrize(
    "g, mode, alpha, d",
    [
        (rows64([2, 0], [0, 1]), "min", rows64(0.5, 1.0), rows64(1.0, 1.0)),
        (rows64([2, 0], [0, 1]), "median", rows64(0.5, 1.0), rows64(1.0, 1.0)),  # lower median of 2 = min
        (rows64([2, 0], [0, 1]), "rmse", rows64(0.790569, 1.581139), rows64(1.581139, 1.581139)),
        (rows64([1, 0], [1, 1]), "min", rows64(0.552786, 0.276393), rows64(0.829180, 0.276393)),
        (rows64([3, 0, 0], [0, 2, 0], [0, 0, 1]), "min", rows64(1 / 3, 1 / 2, 1.0), rows64(1.0, 1.0, 1.0)),
        (rows64([3, 0, 0], [0, 2, 0], [0, 0, 1]), "median", rows64(2 / 3, 1.0, 2.0), rows64(2.0, 2.0, 2.0)),
        (rows64([3, 0, 0], [0, 2, 0], [0, 0, 1]), "rmse", 2.160247 * rows64(1 / 3, 1 / 2, 1.0),
         2.160247 * rows64(1.0, 1.0, 1.0)),
    ],
)
def test_zoo_cases(g, mode, alpha, d):
    direction, weights = AlignedMTL(scale_mode=mode).combine(g, torch.zeros(len(g)))
    torch.testing.assert_close(weights, alpha, atol=1e-6, rtol=0)
    torch.testing.assert_close(direction, d, atol=1e-6, rtol=0)


def test_aligned_rows_are_orthogonal_with_equal_norm():
    # g = (1,0), (1,1): lambda = (2.618034, 0.381966); rows of B G have norm sqrt(0.381966) = 0.618034.
    g = rows64([1, 0], [1, 1])
    bg = alignment_matrix(g @ g.T) @ g
    torch.testing.assert_close(bg @ bg.T, 0.381966 * torch.eye(2, dtype=torch.float64), atol=1e-6, rtol=0)
    for seed, mode in enumerate(("min", "median", "rmse")):
        g = torch.randn(3, 7, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        lam = torch.linalg.eigvalsh(g @ g.T)
        sigma = {"min": lam[0], "median": lam[1], "rmse": lam.mean()}[mode]
        bg = alignment_matrix(g @ g.T, mode) @ g
        torch.testing.assert_close(bg @ bg.T, sigma * torch.eye(3, dtype=torch.float64))


def test_rank_deficient_gradients_use_the_spanned_directions():
    # Three gradients in a plane (rank 2): alpha = B 1 with B built from the 2 kept eigenpairs.
    g = rows64([1, 0], [0, 1], [1, 1])
    b = alignment_matrix(g @ g.T)
    lam, v = torch.linalg.eigh(g @ g.T)
    vr, lr = v[:, 1:], lam[1:]
    torch.testing.assert_close(b, lr.min().sqrt() * (vr / lr.sqrt()) @ vr.T)
    bg = b @ g  # B G B G^T = sigma * (projector on the span of V_r)
    torch.testing.assert_close(bg @ bg.T, lr.min() * vr @ vr.T)


def test_zero_gradients_give_zero():
    d, alpha = AlignedMTL().combine(torch.zeros(3, 4), torch.zeros(3))
    assert torch.equal(d, torch.zeros(4)) and torch.equal(alpha, torch.zeros(3, dtype=torch.float64))


def test_mean_reduction_and_scale():
    g = torch.randn(3, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    d_sum, a_sum = AlignedMTL().combine(g, torch.zeros(3))
    d_mean, _ = AlignedMTL(reduction="mean").combine(g, torch.zeros(3))
    torch.testing.assert_close(d_mean, d_sum / 3)
    d_big, a_big = AlignedMTL().combine(1e3 * g, torch.zeros(3))
    torch.testing.assert_close(a_big, a_sum)  # B is scale-free
    torch.testing.assert_close(d_big, 1e3 * d_sum)


def test_integration_gradients():
    toy = Toy()
    method = AlignedMTL()
    method.bind(toy.bound)
    g, head_grads = toy.task_gradients()
    alpha = alignment_matrix(g.double() @ g.double().T).sum(1)
    w, shared, heads = one_step(method, toy)
    torch.testing.assert_close(w, alpha)
    torch.testing.assert_close(shared, alpha.float() @ g, rtol=1e-5, atol=1e-6)
    for k in range(3):  # heads: raw gradients
        torch.testing.assert_close(heads[k], head_grads[k], rtol=1e-5, atol=1e-6)


def test_ub_integration_gradients():
    toy = Toy(seed=1)
    method = AlignedMTL(level="representation")
    method.bind(toy.bound)
    assert method.needs_representation
    # Independent reference: rep grads z_k, alpha from their Gram, then back through the trunk.
    losses, z = toy.forward()
    zk = torch.stack([torch.autograd.grad(losses[k], z, retain_graph=True)[0].reshape(-1) for k in range(3)])
    alpha = alignment_matrix(zk.double() @ zk.double().T).sum(1)
    v = (alpha.float() @ zk).view_as(z)
    expected = torch.cat([p.reshape(-1) for p in torch.autograd.grad(z, list(toy.shared.parameters()), v)])
    _, head_grads = toy.task_gradients()
    w, shared, heads = one_step(method, toy)
    torch.testing.assert_close(w, alpha)
    torch.testing.assert_close(shared, expected, rtol=1e-5, atol=1e-6)
    for k in range(3):
        torch.testing.assert_close(heads[k], head_grads[k], rtol=1e-5, atol=1e-6)


def test_ub_requires_the_representation():
    toy = Toy()
    method = AlignedMTL(level="representation")
    method.bind(toy.bound)
    with pytest.raises(ValueError, match="representation"):
        method.backward(toy.losses())


@pytest.mark.parametrize(
    "kwargs, name", [({"scale_mode": "max"}, "scale_mode"), ({"reduction": "avg"}, "reduction")]
)
def test_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        AlignedMTL(**kwargs)


def test_single_task_is_the_identity():
    # K = 1: B = 1, d = g whatever the mode.
    g = rows64([3.0, 4.0])
    for mode in ("min", "median", "rmse"):
        d, alpha = AlignedMTL(scale_mode=mode).combine(g, torch.zeros(1))
        torch.testing.assert_close(d, g[0])
        assert math.isclose(float(alpha[0]), 1.0, rel_tol=1e-12)
