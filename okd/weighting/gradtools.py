"""Gradient plumbing used by :class:`~okd.weighting.base.GradientWeighting` and the methods.

* flat gradients of a parameter list, and adding gradients into ``.grad``;
* per-task gradients of the shared parameters, with the heads' per-task gradients kept apart
  (so that they can be weighted, e.g. MGDA ``original``);
* per-task gradients of the shared representation Z, ``z_k = dL_k/dZ``
  (docs/weighting.md#representation-level): one autograd pass per task through the heads only,
  after which one ``Z.backward(combined)`` carries the combination through the encoder;
* a seeded random generator owned by a method, saved in its checkpoint (docs/weighting.md#randomness).
"""
from __future__ import annotations

import warnings
from typing import Sequence

import torch
from torch import Tensor, nn

HeadGrads = list[tuple[Tensor | None, ...]]


def flatten_grads(grads: Sequence[Tensor | None], params: Sequence[nn.Parameter]) -> Tensor:
    """One flat vector of ``grads`` (zeros where a parameter got no gradient)."""
    return torch.cat([
        (g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)
    ])


def accumulate_grads(params: Sequence[nn.Parameter], grads: Sequence[Tensor | None]) -> None:
    """Add ``grads`` to the parameters' ``.grad`` (None entries are skipped)."""
    for p, g in zip(params, grads):
        if g is None:
            continue
        p.grad = g if p.grad is None else p.grad + g


def write_flat_grad(params: Sequence[nn.Parameter], flat: Tensor) -> None:
    """Add a flat direction to the parameters' .grad (which may hold the extra loss's)."""
    offset = 0
    for p in params:
        n = p.numel()
        g = flat[offset: offset + n].view_as(p).to(p.dtype)
        p.grad = g.clone() if p.grad is None else p.grad + g
        offset += n


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
        rows.append(flatten_grads(grads[: len(shared)], shared))
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
        accumulate_grads(params, grads)


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
        if self._gen is not None and same_device(self._gen.device, device):
            return self._gen
        if self._gen is not None:
            warnings.warn(f"{self.owner}: generator moved from {self._gen.device} to "
                          f"{device}; it restarts from seed {self.seed}")
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


def same_device(a: torch.device, b: torch.device) -> bool:
    """The same device; ``torch.device("cuda")`` (index None) counts as the current CUDA device."""
    if a.type != b.type:
        return False
    if a.type == "cuda":
        current = torch.cuda.current_device()
        return (a.index if a.index is not None else current) == (b.index if b.index is not None else current)
    return True
