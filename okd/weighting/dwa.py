"""Dynamic Weight Average (DWA) (docs/weighting.md#dwa).

Liu, Johns, Davison, "End-to-End Multi-Task Learning with Attention", CVPR 2019, Sec. 3.3, Eq. (7).
"""
from __future__ import annotations

import torch
from torch import Tensor

from okd.weighting.arguments import is_number, require
from okd.weighting.base import LossWeighting


class DWA(LossWeighting):
    """Dynamic Weight Average: weight each task by how slowly its loss went down.

    Liu et al., CVPR 2019, Eq. 7: lambda(e) = K softmax(w / T), w_k = Lbar_k(e-1) / Lbar_k(e-2)
    from the epoch-mean losses; lambda = 1 in epochs 0 and 1. Recomputed in :meth:`on_epoch_end`;
    the loss history is in buffers (docs/weighting.md#dwa).

    Args:
        temperature: T > 0. T = 2 in the paper's code (mtan) and LibMTL; the OKD and KD4MTL
            releases used T = 1. Large T gives equal weighting.
    """

    def __init__(self, temperature: float = 2.0) -> None:
        super().__init__()
        require(is_number(temperature) and temperature > 0,
                "DWA", "temperature", "a finite number > 0", temperature)
        self.temperature = float(temperature)

    def setup(self, num_tasks: int) -> None:
        # history[0] = Lbar(e-2), history[1] = Lbar(e-1) once two epochs have ended.
        self.register_buffer("history", torch.zeros(2, num_tasks))
        self.register_buffer("epochs_seen", torch.zeros((), dtype=torch.long))
        self.register_buffer("lambdas", torch.ones(num_tasks))

    def weights(self, losses: Tensor) -> Tensor:
        # A copy: the buffer is overwritten at the next epoch end, logged weights must not change.
        return self.lambdas.to(device=losses.device, dtype=losses.dtype, copy=True)

    def on_epoch_end(self, epoch: int, train_losses: Tensor, reference_losses: Tensor | None = None) -> None:
        means = train_losses.detach().to(self.history).reshape(-1)
        if means.numel() != self.num_tasks:
            raise ValueError(
                f"DWA: train_losses must have {self.num_tasks} entries (one per task), got {means.numel()}"
            )
        # Once per epoch a host check is affordable; a zero or negative epoch loss would make w
        # infinite or meaningless.
        if not bool(torch.isfinite(means).all() and (means > 0).all()):
            raise ValueError(f"DWA: epoch-mean losses must be finite and > 0, got {means.tolist()}")
        self.history[0] = self.history[1]
        self.history[1] = means
        self.epochs_seen += 1
        if int(self.epochs_seen) >= 2:
            self.lambdas.copy_(self.dwa_weights(self.history[1], self.history[0]))

    def dwa_weights(self, last: Tensor, before_last: Tensor) -> Tensor:
        """lambda = K softmax(w / T) with w = Lbar(e-1) / Lbar(e-2) (Eq. 7)."""
        w = last / before_last
        return self.num_tasks * torch.softmax(w / self.temperature, dim=0)
