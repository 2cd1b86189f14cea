"""GLS (Chennupati et al., CVPR-W 2019): the geometric mean of the task losses (docs/weighting.md#gls)."""
from __future__ import annotations

import torch
from torch import Tensor

from okd.weighting.base import LossWeighting


class GLS(LossWeighting):
    """Geometric loss strategy: minimise ``L = (prod_k L_k)^(1/K)``.

    Chennupati, Sistu, Yogamani, Rawashdeh, "MultiNet++: Multi-Stream Feature Aggregation and
    Geometric Loss Strategy for Multi-Task Learning", CVPR Workshops 2019, arXiv 1904.08492
    (the geometric loss strategy, Sec. 3).

    ``L`` is computed as ``exp(mean_k log L_k)`` in float32 (the plain product, as LibMTL writes
    it, under- or overflows). Its gradient is ``sum_k L / (K L_k) grad L_k``, so the objective is
    written as ``sum_k lambda_k L_k`` with the detached effective weights
    ``lambda_k = L / (K l_k)``: same value (``sum_k lambda_k l_k = L``) and same gradient, heads
    included (the reference backpropagates L through the whole network). The returned weights are
    these lambda_k, not LibMTL's logged ``l_k / (K prod l)``.

    Losses must be > 0: each ``l_k`` is clamped to ``eps`` before the log (no host sync to raise),
    so a zero loss gives a large but finite weight instead of NaN. No state, no hyper-parameter
    other than eps. Scale: the weights are homogeneous of degree 0 in the losses' common scale.
    """

    def __init__(self, eps: float = 1e-8) -> None:
        super().__init__()
        if eps <= 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        self.eps = eps

    def weights(self, losses: Tensor) -> Tensor:
        """lambda_k = L / (K l_k) with L = exp(mean_k log l_k)."""
        l = losses.detach().float().clamp_min(self.eps)
        geometric_mean = torch.exp(torch.log(l).mean())
        return geometric_mean / (l.numel() * l)
