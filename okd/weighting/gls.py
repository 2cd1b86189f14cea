"""GLS (Chennupati et al., CVPR-W 2019): the geometric mean of the task losses (docs/weighting.md#gls)."""
from __future__ import annotations

import torch
from torch import Tensor

from okd.weighting.arguments import require
from okd.weighting.base import LossWeighting


class GLS(LossWeighting):
    """Geometric loss strategy: minimise ``L = (prod_k L_k)^(1/K)``.

    Chennupati et al., "MultiNet++", CVPR Workshops 2019, arXiv 1904.08492, Sec. 3. L is
    ``exp(mean_k log max(l_k, eps))`` in float32; the objective is written sum_k lambda_k L_k with
    the detached lambda_k = L / (K l_k) (same value and gradient, heads included), which are the
    logged weights (docs/weighting.md#gls).
    """

    def __init__(self, eps: float = 1e-8) -> None:
        super().__init__()
        require(eps > 0, "GLS", "eps", "> 0", eps)
        self.eps = eps

    def weights(self, losses: Tensor) -> Tensor:
        """lambda_k = L / (K l_k) with L = exp(mean_k log l_k)."""
        l = losses.detach().float().clamp_min(self.eps)
        geometric_mean = torch.exp(torch.log(l).mean())
        return geometric_mean / (l.numel() * l)
