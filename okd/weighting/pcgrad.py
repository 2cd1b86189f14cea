"""PCGrad: projecting conflicting gradients (docs/weighting.md#pcgrad).

Yu, Kumar, Gupta, Levine, Hausman, Finn, "Gradient Surgery for Multi-Task Learning",
NeurIPS 2020, arXiv 2001.06782. Official code: tianheyu927/PCGrad (TensorFlow).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from okd.weighting.arguments import require, require_choice
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

    Yu et al., NeurIPS 2020, Algorithm 1, Eq. (1), in Gram form: g_i' = sum_j C_ij g_j,
    d = G^T (C^T 1) (``reduction: sum``) or its mean; a fresh random order of the other tasks for
    every i and step from the method's generator. Logged weights: C^T 1 (/ K for ``mean``); heads
    raw (docs/weighting.md#pcgrad).

    Args:
        reduction: ``sum`` (default, official) or ``mean``.
        seed: seed of the method's generator.
        eps: added to ||g_j||^2 (1e-8).
    """

    def __init__(self, reduction: str = "sum", seed: int = 0, eps: float = 1e-8) -> None:
        super().__init__()
        require_choice("PCGrad", "reduction", reduction, ("sum", "mean"))
        require(isinstance(eps, (int, float)) and eps > 0, "PCGrad", "eps", "a number > 0", eps)
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
