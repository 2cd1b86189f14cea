"""Plumbing shared by the gradient-manipulation methods that need more than ``combine``.

:class:`~okd.weighting.base.GradientWeighting` covers the common case (combine the per-task
gradients of the shared parameters, heads get their raw gradient). Some methods' reference
behaviour needs a variation, built here from the same pieces and without a second forward pass:

* per-task gradients of the heads kept apart, so they can be weighted (MGDA ``original``);
* per-task gradients of the shared representation Z, ``z_k = dL_k/dZ`` (MGDA-UB, IMTL on
  features, GradDrop; docs/weighting.md#representation-level): one autograd pass per task through the heads only, after which
  one ``Z.backward(combined)`` carries the combination through the encoder;
* a seeded random generator owned by a method, saved in its checkpoint (docs/weighting.md#randomness).
"""
from __future__ import annotations

import warnings
from typing import Sequence

import torch
from torch import Tensor, nn

from okd.weighting.base import _accumulate, _flatten

HeadGrads = list[tuple[Tensor | None, ...]]


def require_representation(representation: Tensor | None, owner: str) -> Tensor:
    """Check, before any backward work, that the trainer passed the shared representation Z."""
    if representation is None:
        raise ValueError(f"{owner}: representation must be the shared representation Z the heads "
                         "consume (needs_representation is True), got None")
    if not representation.requires_grad:
        raise ValueError(f"{owner}: representation must be part of the autograd graph "
                         "(requires_grad=True)")
    return representation


def random_orders(num_tasks: int, generator: torch.Generator) -> list[list[int]]:
    """For every task i, a fresh random order of the other tasks (PCGrad, GradVac; CPU draws)."""
    orders = []
    for i in range(num_tasks):
        others = [j for j in range(num_tasks) if j != i]
        perm = torch.randperm(len(others), generator=generator).tolist()
        orders.append([others[p] for p in perm])
    return orders


def task_gradients(
    losses: Tensor, shared: Sequence[nn.Parameter], task_params: Sequence[nn.Parameter]
) -> tuple[Tensor, HeadGrads]:
    """Rows g_k = dL_k/d theta_shared (K x P) and, per task, dL_k/d theta_heads (kept apart).

    K autograd passes; the graph is retained only until the last one.
    """
    shared, task_params = list(shared), list(task_params)
    k = losses.shape[0]
    rows, heads = [], []
    for i in range(k):
        grads = torch.autograd.grad(
            losses[i], shared + task_params, retain_graph=i < k - 1, allow_unused=True
        )
        rows.append(_flatten(grads[: len(shared)], shared))
        heads.append(tuple(grads[len(shared):]))
    return torch.stack(rows), heads


def representation_gradients(
    losses: Tensor, representation: Tensor, task_params: Sequence[nn.Parameter]
) -> tuple[Tensor, HeadGrads]:
    """z_k = dL_k/dZ, stacked to (K, *Z.shape), and per task dL_k/d theta_heads.

    The passes stop at Z (``autograd.grad`` only runs the part of the graph between L_k and its
    inputs), so each costs a backward through the heads only. The last pass frees the heads'
    graph; the encoder's graph stays alive for :func:`backward_through_representation`.
    """
    require_representation(representation, "representation_gradients")
    task_params = list(task_params)
    k = losses.shape[0]
    rows, heads = [], []
    for i in range(k):
        grads = torch.autograd.grad(
            losses[i], [representation] + task_params, retain_graph=i < k - 1, allow_unused=True
        )
        z = grads[0] if grads[0] is not None else torch.zeros_like(representation)
        rows.append(z)
        heads.append(tuple(grads[1:]))
    return torch.stack(rows), heads


def backward_through_representation(representation: Tensor, grad: Tensor) -> None:
    """One backward pass of the combined z through the encoder (frees the encoder's graph)."""
    representation.backward(grad.to(representation.dtype))


def accumulate_heads(
    task_params: Sequence[nn.Parameter], head_grads: HeadGrads, weights: Tensor | None = None
) -> None:
    """Add sum_k w_k dL_k/d theta_heads to the heads' ``.grad`` (w = 1 when ``weights`` is None).

    Weighting the per-task gradients equals the gradient of sum_k w_k L_k for any head layout.
    """
    params = list(task_params)
    for k, grads in enumerate(head_grads):
        if weights is not None:
            w = weights[k]
            grads = tuple(None if g is None else g * w.to(g.dtype) for g in grads)
        _accumulate(params, grads)


def weighted_sum(weights: Tensor, rows: Tensor) -> Tensor:
    """sum_k w_k rows[k] in the rows' dtype and device (rows: (K, ...))."""
    w = weights.to(device=rows.device, dtype=rows.dtype)
    return torch.tensordot(w, rows, dims=1)


class OwnedGenerator:
    """A seeded ``torch.Generator`` owned by one method, created lazily on the device it draws on.

    Identical seeds give identical draws on every DDP rank (docs/weighting.md#distributed-training). :meth:`state` and
    :meth:`load` carry the generator through a checkpoint; a state saved on one device type
    restores on the same type (CPU and CUDA generators have different state formats).
    """

    def __init__(self, seed: int, owner: str) -> None:
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ValueError(f"{owner}: seed must be an int, got {seed!r}")
        self.seed = seed
        self.owner = owner
        self._gen: torch.Generator | None = None
        self._pending: dict | None = None

    def get(self, device: torch.device | str = "cpu") -> torch.Generator:
        device = torch.device(device)
        if self._gen is not None and self._gen.device.type == device.type:
            return self._gen
        if self._gen is not None:
            warnings.warn(f"{self.owner}: generator moved from {self._gen.device.type} to "
                          f"{device.type}; it restarts from seed {self.seed}")
        gen = torch.Generator(device=device)
        gen.manual_seed(self.seed)
        pending, self._pending = self._pending, None
        if pending is not None:
            if pending["device"] == device.type:
                gen.set_state(pending["state"])
            else:
                warnings.warn(f"{self.owner}: checkpointed generator state is for "
                              f"{pending['device']}, drawing on {device.type}; it restarts from seed "
                              f"{self.seed}")
        self._gen = gen
        return gen

    def state(self) -> dict:
        if self._gen is not None:
            return {"seed": self.seed, "device": self._gen.device.type, "state": self._gen.get_state()}
        if self._pending is not None:
            return {"seed": self.seed, **self._pending}
        return {"seed": self.seed}

    def load(self, state: dict) -> None:
        if "state" not in state:  # saved before the first draw: a fresh generator from the seed.
            self.seed, self._gen, self._pending = int(state.get("seed", self.seed)), None, None
            return
        self.seed = int(state.get("seed", self.seed))
        self._pending = {"device": state["device"], "state": state["state"].clone()}
        if self._gen is not None:
            device = self._gen.device
            self._gen = None
            self.get(device)
