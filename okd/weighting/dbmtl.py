"""DB-MTL (Lin et al., 2023): EMA of log-loss gradients, equalised norms (docs/weighting.md#dbmtl)."""
from __future__ import annotations

import torch
from torch import Tensor

from okd.weighting.arguments import require
from okd.weighting.base import GradientWeighting, all_finite, keep_if_finite


class DBMTL(GradientWeighting):
    """Dual-Balancing MTL: loss-scale balancing by logs, gradient-magnitude balancing by norms.

    Lin et al., "Dual-Balancing for Multi-Task Learning", arXiv 2308.12029, Sec. 3 and
    Algorithm 1 (defaults from LibMTL's ``DB_MTL``). :meth:`backward` differentiates
    ``log(L_k + 1e-8)`` (heads get it unweighted); :meth:`combine` keeps an EMA gh_k of those rows
    (``beta / t^beta_sigma``, no bias correction) and returns ``d = sum_k a_k gh_k`` with
    ``a_k = max_j ||gh_j|| / (||gh_k|| + 1e-8)`` (logged). State: the K x P buffer ``grad_ema`` and
    the step count; a step with non-finite rows updates neither (docs/weighting.md#dbmtl).
    """

    def __init__(self, beta: float = 0.9, beta_sigma: float = 0.0, eps: float = 1e-8) -> None:
        super().__init__()
        require(0 <= beta < 1, "DBMTL", "beta", "in [0, 1)", beta)
        require(beta_sigma >= 0, "DBMTL", "beta_sigma", ">= 0", beta_sigma)
        require(eps > 0, "DBMTL", "eps", "> 0", eps)
        self.beta = beta
        self.beta_sigma = beta_sigma
        self.eps = eps

    def setup(self, num_tasks: int) -> None:
        shared = self.bound.shared_parameters
        p = sum(t.numel() for t in shared)
        dtype = shared[0].dtype if shared else torch.get_default_dtype()
        self.register_buffer("grad_ema", torch.zeros(num_tasks, p, dtype=dtype))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def backward(self, losses, extra_loss=None, representation=None, loss_scale=None):
        """Run the base backward on the log-losses: rows h_k, heads get grad log L_k."""
        log_losses = torch.log(losses.float() + self.eps)
        return super().backward(log_losses, extra_loss, representation, loss_scale)

    def combine(self, grads: Tensor, losses: Tensor) -> tuple[Tensor, Tensor]:
        """grads: rows h_k = grad log(L_k + eps); losses: unused (the log-losses)."""
        if grads.shape != self.grad_ema.shape:
            raise ValueError(
                f"grads must have shape {tuple(self.grad_ema.shape)} (tasks x shared entries), "
                f"got {tuple(grads.shape)}"
            )
        finite = all_finite(grads)  # an overflowed (skipped) step must not enter the state
        step = self.step + 1
        b = self.beta / step.to(grads.dtype) ** self.beta_sigma
        ema = b * self.grad_ema + (1 - b) * grads.detach()
        self.grad_ema.copy_(keep_if_finite(ema, self.grad_ema, finite))
        self.step.copy_(keep_if_finite(step, self.step, finite))
        norms = self.grad_ema.norm(dim=1)
        a = norms.max() / (norms + self.eps)
        return a @ self.grad_ema, a
