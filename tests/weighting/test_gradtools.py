"""Gradient plumbing and the owned generator (okd/weighting/gradtools.py)."""
from __future__ import annotations

import pytest
import torch

from okd.weighting.gradtools import (
    OwnedGenerator,
    accumulate_heads,
    backward_through_representation,
    random_orders,
    representation_gradients,
    require_representation,
    task_gradients,
    weighted_sum,
)
from toys import TanhToy


def test_task_gradients_match_autograd_and_free_the_graph():
    toy = TanhToy()
    ref = toy.reference()
    losses, _ = toy.forward()
    grads, heads = task_gradients(losses, toy.bound.shared_parameters, toy.bound.task_parameters)
    torch.testing.assert_close(grads, ref["G"])
    flat_heads = torch.stack([
        torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                   for g, p in zip(row, toy.bound.task_parameters)]) for row in heads
    ])
    torch.testing.assert_close(flat_heads, ref["heads"])
    with pytest.raises(RuntimeError):  # the last pass did not retain the graph
        losses.sum().backward()


def test_representation_gradients_keep_the_encoder_graph():
    toy = TanhToy()
    ref = toy.reference()
    losses, z = toy.forward()
    rows, heads = representation_gradients(losses, z, toy.bound.task_parameters)
    torch.testing.assert_close(rows, ref["z"])
    toy.zero_grad()
    w = torch.tensor([0.5, 2.0, -1.0], dtype=torch.float64)
    backward_through_representation(z, weighted_sum(w, rows))  # still possible: encoder graph alive
    torch.testing.assert_close(toy.shared_grad(), w @ ref["G"])
    accumulate_heads(toy.bound.task_parameters, heads, w)
    torch.testing.assert_close(toy.head_grad(), w @ ref["heads"])


def test_accumulate_heads_unweighted_adds_to_existing_grad():
    toy = TanhToy()
    ref = toy.reference()
    losses, _ = toy.forward()
    _, heads = task_gradients(losses, toy.bound.shared_parameters, toy.bound.task_parameters)
    toy.zero_grad()
    for p in toy.bound.task_parameters:
        p.grad = torch.ones_like(p)
    accumulate_heads(toy.bound.task_parameters, heads)
    torch.testing.assert_close(toy.head_grad(), ref["heads"].sum(0) + 1)


def test_require_representation_messages():
    with pytest.raises(ValueError, match="X: representation .* got None"):
        require_representation(None, "X")
    with pytest.raises(ValueError, match="requires_grad"):
        require_representation(torch.ones(2), "X")


def test_weighted_sum_casts_weights_to_rows():
    rows = torch.ones(2, 3, dtype=torch.float32)
    out = weighted_sum(torch.tensor([1.0, 2.0], dtype=torch.float64), rows)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, torch.full((3,), 3.0))


def test_owned_generator_state_round_trip():
    first = OwnedGenerator(3, "T")
    torch.rand(5, generator=first.get())
    state = first.state()
    expected = torch.rand(5, generator=first.get())
    # loaded before the first draw and after one: both continue from the saved state
    fresh, used = OwnedGenerator(0, "T"), OwnedGenerator(0, "T")
    torch.rand(1, generator=used.get())
    fresh.load(state)
    used.load(state)
    assert fresh.seed == 3
    torch.testing.assert_close(torch.rand(5, generator=fresh.get()), expected, rtol=0, atol=0)
    torch.testing.assert_close(torch.rand(5, generator=used.get()), expected, rtol=0, atol=0)
    # a state saved before any draw restarts from the seed
    unused = OwnedGenerator(9, "T").state()
    restored = OwnedGenerator(0, "T")
    restored.load(unused)
    torch.testing.assert_close(torch.rand(3, generator=restored.get()),
                               torch.rand(3, generator=torch.Generator().manual_seed(9)))


def test_owned_generator_rejects_bad_seed():
    with pytest.raises(ValueError, match="seed"):
        OwnedGenerator(True, "T")


def test_random_orders_single_task():
    assert random_orders(1, torch.Generator().manual_seed(0)) == [[]]
