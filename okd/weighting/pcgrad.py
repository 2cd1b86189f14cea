"""PCGrad: projecting conflicting gradients (docs/weighting.md#pcgrad).

Yu, Kumar, Gupta, Levine, Hausman, Finn, "Gradient Surgery for Multi-Task Learning",
NeurIPS 2020, arXiv 2001.06782. Official code: tianheyu927/PCGrad (TensorFlow).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from okd.weighting.base import GradientWeighting, finite_or_zero
from okd.weighting.gradtools import OwnedGenerator, random_orders, weighted_sum
from okd.weighting.solvers import gram


def pcgrad_coefficients(matrix: Tensor, orders: Sequence[Sequence[int]], eps: float = 1e-8) -> Tensor:
    """C with g_i' = sum_j C_ij g_j after PCGrad's projections, from the Gram matrix alone.

    Yu et al. 2020, Algorithm 1 / Eq. (1): for j in ``orders[i]``, if g_i' . g_j < 0 then
    g_i' <- g_i' - (g_i' . g_j / ||g_j||^2) g_j, against the *original* g_j. In coefficient form
    (docs/weighting.md#pcgrad) g_i' . g_j = (C M)_ij and ||g_j||^2 = M_jj. The test ``dot < 0`` is written as
    ``min(dot, 0)`` so that nothing is read back to the host (no device sync).
    """
    k = matrix.shape[0]
    coeffs = torch.eye(k, dtype=matrix.dtype, device=matrix.device)
    for i in range(k):
        for j in orders[i]:
            dot = coeffs[i] @ matrix[:, j]
            coeffs[i, j] = coeffs[i, j] - dot.clamp(max=0) / (matrix[j, j] + eps)
    return coeffs


class PCGrad(GradientWeighting):
    """Project each task gradient off the normal plane of every gradient it conflicts with.

    Yu et al. 2020, Algorithm 1, Eq. (1): g_i' = g_i, then for every j != i in a random order,
    if g_i' . g_j < 0: g_i' <- g_i' - (g_i' . g_j / ||g_j||^2) g_j. The update is
    d = sum_i g_i' (``reduction: sum``; official code, LibMTL, Nash-MTL repo) or its mean
    (``mean``; the CAGrad repo before its x K). Scale: the sum equals EW's when nothing conflicts.

    Computed in Gram form (docs/weighting.md#pcgrad): C = I, g_i' = sum_j C_ij g_j, d = G^T (C^T 1), O(K^3) on
    the K x K Gram matrix (float64, on the gradients' device, without host syncs). The returned
    weights are the effective coefficients C^T 1 (/ K for ``mean``) on the raw gradients.

    Randomness: a fresh order of the other tasks for every i at every step, from a CPU
    ``torch.Generator`` seeded with ``seed`` and saved in :meth:`extra_state`. (The TF code's
    shuffle is a no-op, so its order is fixed; LibMTL shuffles all K indices including i.)

    Cost: K backward passes, K x K Gram, K(K-1) tiny vector ops. Heads: raw gradients.

    Loss scaling (fp16): the base class unscales the rows before :meth:`combine` and scales the
    direction. An overflow step projects on a zero Gram matrix (C = I: finite logged weights),
    writes NaN (GradScaler skips it) and consumes its draw of the orders.

    Args:
        reduction: ``sum`` (default, official) or ``mean``.
        seed: seed of the method's generator.
        eps: added to ||g_j||^2 (1e-8).
    """

    def __init__(self, reduction: str = "sum", seed: int = 0, eps: float = 1e-8) -> None:
        super().__init__()
        if reduction not in ("sum", "mean"):
            raise ValueError(f"PCGrad: reduction must be 'sum' or 'mean', got {reduction!r}")
        if not (isinstance(eps, (int, float)) and eps > 0):
            raise ValueError(f"PCGrad: eps must be a number > 0, got {eps!r}")
        self.reduction = reduction
        self.eps = float(eps)
        self.generator = OwnedGenerator(seed, "PCGrad")

    def combine(self, grads: Tensor, losses: Tensor) -> tuple[Tensor, Tensor]:
        k = grads.shape[0]
        orders = random_orders(k, self.generator.get("cpu"))
        weights = pcgrad_coefficients(finite_or_zero(gram(grads)), orders, self.eps).sum(dim=0)
        if self.reduction == "mean":
            weights = weights / k
        return weighted_sum(weights, grads), weights.to(grads.dtype)

    def extra_state(self) -> dict:
        return {"generator": self.generator.state()}

    def load_extra_state(self, state: dict) -> None:
        if "generator" in state:
            self.generator.load(state["generator"])
