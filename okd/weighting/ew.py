"""Equal weighting (EW): the plain sum of the task losses, lambda_k = 1 (docs/weighting.md#ew)."""
from __future__ import annotations

import torch
from torch import Tensor

from okd.weighting.base import LossWeighting


class EW(LossWeighting):
    """Equal weighting: total = sum_k L_k. The baseline every other method is compared with."""

    def weights(self, losses: Tensor) -> Tensor:
        return torch.ones_like(losses)
