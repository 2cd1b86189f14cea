"""IMTL (okd/weighting/imtl.py): docs/weighting.md#imtl hand cases, equal projections, the three modes."""
from __future__ import annotations

import math

import pytest
import torch

from okd.weighting.imtl import IMTL, imtl_g_weights
from okd.weighting.solvers import gram
from toys import TanhToy, bound_method, step, t64


@pytest.mark.parametrize("rows, a, proj", [
    ([[1, 0], [0, 2]], [2 / 3, 1 / 3], 2 / 3),
    ([[1, 0], [1, 1]], [2 - math.sqrt(2), math.sqrt(2) - 1], 1.0),
    ([[1, 0, 0], [0, 2, 0], [1, 1, 1]], [0.775991, 0.387995, -0.163986], 0.612005),
])
def test_hand_cases_equal_projections(rows, a, proj):
    g = t64(rows)
    weights = imtl_g_weights(gram(g))
    torch.testing.assert_close(weights, t64(a), atol=1e-6, rtol=0)
    d = weights @ g
    torch.testing.assert_close(g @ d / g.norm(dim=1), torch.full((len(rows),), proj, dtype=torch.float64),
                               atol=1e-6, rtol=0)


def test_equal_projections_on_random_gradients():
    gen = torch.Generator().manual_seed(0)
    for k in (2, 3, 5):
        g = torch.randn(k, 8, generator=gen, dtype=torch.float64)
        a = imtl_g_weights(gram(g))
        assert abs(float(a.sum()) - 1) < 1e-12
        proj = g @ (a @ g) / g.norm(dim=1)
        torch.testing.assert_close(proj, proj[0].expand(k), rtol=1e-9, atol=1e-12)


def test_dependent_and_opposite_gradients():
    # parallel rows: pinv still gives equal projections (5/3 on the common unit vector)
    a = imtl_g_weights(gram(t64([[1, 0], [2, 0]])))
    torch.testing.assert_close(a, t64([1 / 3, 2 / 3]))
    # opposite rows: 1^T M^+ n = 0 -> zeros
    opposite = imtl_g_weights(gram(t64([[1, 0], [-1, 0]])))
    torch.testing.assert_close(opposite, torch.zeros(2, dtype=torch.float64))


def test_scale_equivariance_mode_g():
    g = torch.randn(3, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    imtl = IMTL(mode="g")
    d, _ = imtl.combine(g, torch.ones(3))
    d_scaled, _ = imtl.combine(1e-3 * g, torch.ones(3))
    torch.testing.assert_close(d_scaled, 1e-3 * d, rtol=1e-9, atol=1e-15)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="mode"):
        IMTL(mode="gl")
    with pytest.raises(ValueError, match="level"):
        IMTL(level="features")


def _set_scales(imtl: IMTL, values) -> torch.Tensor:
    with torch.no_grad():
        imtl.log_scales.copy_(t64(values).float())
    return imtl.log_scales.detach().double().exp()


def test_mode_g_backward():
    toy = TanhToy()
    imtl = bound_method(lambda: IMTL(mode="g"), toy)
    assert imtl.param_groups() == []
    ref = toy.reference()
    expected, a = imtl.combine(ref["G"], ref["losses"])
    torch.testing.assert_close(step(imtl, toy), a)
    torch.testing.assert_close(toy.shared_grad(), expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(toy.head_grad(), ref["heads"].sum(0), rtol=1e-10, atol=1e-12)


def test_mode_l_backward_is_scaled_losses():
    toy = TanhToy()
    imtl = bound_method(lambda: IMTL(mode="l"), toy)
    assert imtl.param_groups()[0]["params"] == [imtl.log_scales]
    scales = _set_scales(imtl, [0.3, -0.2, 0.0])
    ref = toy.reference()
    returned = step(imtl, toy)
    torch.testing.assert_close(returned, scales)
    torch.testing.assert_close(toy.shared_grad(), scales @ ref["G"], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(toy.head_grad(), scales @ ref["heads"], rtol=1e-10, atol=1e-12)
    # grad_s = e^s l - 1 (Section 3.1)
    torch.testing.assert_close(imtl.log_scales.grad.double(), scales * ref["losses"] - 1,
                               rtol=1e-6, atol=1e-6)  # s is a float32 parameter


def test_mode_hybrid_backward():
    toy = TanhToy()
    imtl = bound_method(IMTL, toy)
    scales = _set_scales(imtl, [0.3, -0.2, 0.1])
    ref = toy.reference()
    scaled = ref["G"] * scales[:, None]
    a = imtl_g_weights(gram(scaled))
    returned = step(imtl, toy)
    torch.testing.assert_close(returned, a * scales, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(toy.shared_grad(), a @ scaled, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(toy.head_grad(), scales @ ref["heads"], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(imtl.log_scales.grad.double(), scales * ref["losses"] - 1,
                               rtol=1e-6, atol=1e-6)  # s is a float32 parameter


@pytest.mark.parametrize("mode", ["g", "hybrid"])
def test_representation_level_backward(mode):
    toy = TanhToy()
    imtl = bound_method(lambda: IMTL(mode=mode, level="representation"), toy)
    assert imtl.needs_representation
    scales = torch.ones(3, dtype=torch.float64) if mode == "g" else _set_scales(imtl, [0.2, 0.0, -0.4])
    ref = toy.reference()
    z = ref["z"] * scales.view(3, 1, 1)
    a = imtl_g_weights(gram(z.reshape(3, -1)))
    torch.testing.assert_close(step(imtl, toy), a * scales, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(toy.shared_grad(), toy.encoder_vjp(torch.tensordot(a, z, dims=1)),
                               rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(toy.head_grad(), scales @ ref["heads"], rtol=1e-10, atol=1e-12)
    losses, _ = toy.forward()
    with pytest.raises(ValueError, match="representation"):
        imtl.backward(losses)
