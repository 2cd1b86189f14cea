"""GradDrop (okd/weighting/graddrop.py): docs/weighting.md#graddrop hand case, sign statistics and the 3-task toy."""
from __future__ import annotations

import pytest
import torch

from okd.weighting.graddrop import GradDrop, keep_coefficients, sign_purity
from toys import TanhToy, bound_method, t64


# docs/weighting.md#graddrop: B = 1, A = (1, -1), z1 = (3, 2), z2 = (-1, 2) -> S1 = (3, -2), S2 = (-1, -2), P = (0.75, 0).
A = t64([[1.0, -1.0]])
Z = t64([[[3.0, 2.0]], [[-1.0, 2.0]]])


def test_purity_hand_case():
    signed = (torch.sign(A) * Z).sum(dim=1)
    torch.testing.assert_close(signed, t64([[3.0, -2.0], [-1.0, -2.0]]))
    torch.testing.assert_close(sign_purity(signed, 1e-7), t64([0.75, 0.0]), atol=1e-7, rtol=0)


@pytest.mark.parametrize("u, leak, expected, kept", [
    ([0.5, 0.5], 0.0, [3.0, 4.0], [1.0, 0.5]),   # M1 = (1, 1), M2 = (0, 1)
    ([0.5, 0.5], 0.5, [2.5, 4.0], [1.0, 0.75]),
    ([0.9, 0.5], 0.0, [-1.0, 4.0], [0.5, 1.0]),  # M1 = (0, 1), M2 = (1, 1)
])
def test_gradient_into_activation_hand_case(u, leak, expected, kept):
    grad, weights = GradDrop(leak=leak).combine_representation(A, Z, uniform=t64(u))
    torch.testing.assert_close(grad, t64([expected]))
    torch.testing.assert_close(weights, t64(kept))


def test_leak_one_is_plain_sum():
    grad, _ = GradDrop(leak=1.0).combine_representation(A, Z)
    torch.testing.assert_close(grad, Z.sum(0))


def test_sign_of_activation_enters_the_purity():
    # With A = (1, 1) the second position's signed sums are (2, 2): all positive, all kept.
    grad, _ = GradDrop().combine_representation(t64([[1.0, 1.0]]), Z, uniform=t64([0.5, 0.5]))
    torch.testing.assert_close(grad, t64([[3.0, 4.0]]))


def test_mask_is_shared_across_the_batch():
    a = t64([[1.0, -1.0], [1.0, -1.0]])
    z = t64([[[3.0, 2.0], [1.0, 1.0]], [[-1.0, 2.0], [-2.0, 1.0]]])  # S1 = (4, -3), S2 = (-3, -3)
    grad, _ = GradDrop().combine_representation(a, z, uniform=t64([0.5, 0.5]))
    # P = (0.5 * (1 + 1/7), 0) = (0.571, 0) > U at 0 -> keep task 1 there; both kept at 1.
    torch.testing.assert_close(grad, t64([[3.0, 4.0], [1.0, 2.0]]))


def test_consistent_signs_are_always_kept_with_seeded_generator():
    gen_drop = GradDrop(seed=0)
    a = torch.ones(1, 1000, dtype=torch.float64)
    z = torch.stack([torch.full((1, 1000), 2.0), torch.full((1, 1000), 0.5)]).double()
    grad, weights = gen_drop.combine_representation(a, z)
    torch.testing.assert_close(grad, z.sum(0))
    torch.testing.assert_close(weights, torch.ones(2, dtype=torch.float64))


def test_mixed_signs_keep_the_positive_side_with_probability_p():
    drop = GradDrop(seed=0)
    n = 4000
    a = torch.ones(1, n, dtype=torch.float64)
    z = torch.stack([torch.full((1, n), 3.0), torch.full((1, n), -1.0)]).double()  # P = 0.75
    grad, weights = drop.combine_representation(a, z)
    frac_positive = float((grad > 0).double().mean())
    assert abs(frac_positive - 0.75) < 0.03
    # every position keeps exactly one of the two tasks
    assert torch.all((grad == 3.0) | (grad == -1.0))
    torch.testing.assert_close(weights.sum(), torch.tensor(1.0, dtype=torch.float64))
    again, _ = GradDrop(seed=0).combine_representation(a, z)
    assert torch.equal(grad, again)
    different, _ = GradDrop(seed=1).combine_representation(a, z)
    assert not torch.equal(grad, different)


def test_parameter_level_masks_on_rows():
    g = t64([[3.0, -2.0], [-1.0, -2.0]])  # S = g itself, P = (0.75, 0)
    coeffs = keep_coefficients(g, t64([0.5, 0.5]), 0.0, 1e-7)
    torch.testing.assert_close(coeffs, t64([[1.0, 1.0], [0.0, 1.0]]))
    drop = GradDrop(level="parameters", seed=0)
    assert not drop.needs_representation
    d, w = drop.combine(g, t64([1.0, 1.0]))
    u = torch.rand(2, generator=torch.Generator().manual_seed(0)).double()  # the method's first U
    coeffs = keep_coefficients(g, u, 0.0, 1e-7)
    torch.testing.assert_close(d, (coeffs * g).sum(0))
    torch.testing.assert_close(w, coeffs.mean(1))
    assert coeffs[:, 1].tolist() == [1.0, 1.0]  # P = 0 < U: both negative entries kept


def test_bad_arguments_raise():
    for kwargs, name in [({"leak": 1.5}, "leak"), ({"level": "both"}, "level"), ({"eps": 0}, "eps"),
                         ({"seed": "x"}, "seed")]:
        with pytest.raises(ValueError, match=name):
            GradDrop(**kwargs)


def test_needs_representation():
    toy = TanhToy()
    drop = bound_method(GradDrop, toy)
    assert drop.needs_representation
    losses, _ = toy.forward()
    with pytest.raises(ValueError, match="representation"):
        drop.backward(losses)
