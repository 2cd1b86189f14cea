"""IMTL: impartial multi-task learning (IMTL-G, IMTL-L and the hybrid) (docs/weighting.md#imtl).

Liu, Li, Kuang, Xue, Chen, Yang, Liao, Zhang, "Towards Impartial Multi-task Learning",
ICLR 2021 (OpenReview IMPnRXEWpvr).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from okd.weighting.arguments import require_choice
from okd.weighting.base import GradientWeighting, finite_or_zero, scaled
from okd.weighting.gradtools import accumulate_grads, weighted_sum
from okd.weighting.solvers import gram

MODES = ("g", "l", "hybrid")


def imtl_g_weights(matrix: Tensor, eps: float = 1e-12) -> Tensor:
    """IMTL-G's weights a (sum 1) from the Gram matrix M = G G^T.

    Liu et al. 2021, Section 3.2, Eq. (6): d = sum_k a_k g_k with sum_k a_k = 1 and equal
    projections d . u_k on every unit gradient u_k = g_k / ||g_k||. Since d . u_k = (M a)_k / n_k
    with n_k = ||g_k|| = sqrt(M_kk), equal projections mean M a = t n, so (Gram form, as in
    torchjd) a = M^+ n / (1^T M^+ n). The pseudo-inverse also covers dependent gradients (the
    paper's (D U^T)^-1 is singular there). If 1^T M^+ n is ~0 the weights are 0. The weights can be
    negative for K >= 3. Float64; computed on M's device without host syncs. A non-finite M (an
    fp16 overflow step) is replaced by zeros (weights 0) instead of reaching the pseudo-inverse.
    """
    m = finite_or_zero(matrix.to(torch.float64))
    n = m.diagonal().clamp_min(0).sqrt()
    a = torch.linalg.pinv(m, hermitian=True) @ n
    total = a.sum()
    ok = total.abs() > eps
    return torch.where(ok, a / torch.where(ok, total, torch.ones_like(total)), torch.zeros_like(a))


class IMTL(GradientWeighting):
    """Impartial multi-task learning: equal projections (IMTL-G) and/or scale-free losses (IMTL-L).

    ``mode: g``: d = sum_k a_k g_k with a from :func:`imtl_g_weights` (Eq. 6), heads raw;
    ``mode: l``: one backward of sum_k (e^{s_k} L_k - s_k) with learnable s (Eq. 2);
    ``mode: hybrid`` (Algorithm 1, LibMTL): IMTL-G on the rows e^{s_k} g_k, heads e^{s_k}-weighted,
    s gets e^s l - 1. ``level: representation`` works on z_k = dL_k/dZ. The logged weights are the
    coefficients on the raw gradients: a, e^s or a e^s (docs/weighting.md#imtl).
    """

    levels = ("parameters", "representation")

    def __init__(self, mode: str = "hybrid", level: str = "parameters") -> None:
        require_choice("IMTL", "mode", mode, MODES)
        super().__init__(level)
        self.mode = mode
        self.needs_representation = mode != "l" and level == "representation"

    def setup(self, num_tasks: int) -> None:
        if self.mode != "g":
            self.log_scales = nn.Parameter(torch.zeros(num_tasks))  # s_k of IMTL-L

    # -- the rule ---------------------------------------------------------------------------
    def combine(self, grads: Tensor, losses: Tensor) -> tuple[Tensor, Tensor]:
        """IMTL-G on the rows e^{s_k} g_k (g_k in mode ``g``); weights a e^{s_k} on the raw rows."""
        scales = self.scales(losses)
        # Gradients of the scaled losses e^{s_k} L_k are e^{s_k} times those of L_k.
        rows = grads * scales.to(grads.dtype)[:, None]
        a = imtl_g_weights(gram(rows)).to(grads.dtype)
        return weighted_sum(a, rows), (a.to(scales) * scales).to(losses.dtype)

    def scales(self, losses: Tensor) -> Tensor:
        """e^{s_k} (detached), ones in mode ``g``."""
        if self.mode == "g":
            return torch.ones_like(losses.detach())
        return self.log_scales.detach().to(losses).exp()

    def head_weights(self, weights: Tensor, losses: Tensor) -> Tensor | None:
        return None if self.mode == "g" else self.scales(losses)

    # -- backward ---------------------------------------------------------------------------
    def backward(self, losses, extra_loss=None, representation=None, loss_scale=None):
        if self.mode == "l":
            return self._backward_loss(losses, extra_loss, loss_scale)
        weights = super().backward(losses, extra_loss, representation, loss_scale)
        if self.mode == "hybrid":
            self._accumulate_scale_grad(losses.detach(), loss_scale)
        return weights

    def _backward_loss(self, losses: Tensor, extra_loss: Tensor | None, loss_scale: Tensor | None) -> Tensor:
        """IMTL-L: one backward of sum_k (e^{s_k} L_k - s_k) (+ extra loss), times S."""
        s = self.log_scales.to(losses)
        total = (s.exp() * losses - s).sum()
        if extra_loss is not None:
            total = total + extra_loss
        scaled(total, loss_scale).backward()
        return s.detach().exp()

    def _accumulate_scale_grad(self, losses: Tensor, loss_scale: Tensor | None = None) -> None:
        # d/ds_k sum_j (e^{s_j} L_j - s_j) = e^{s_k} l_k - 1 (Section 3.1), unweighted by a, as in
        # LibMTL's IMTL, where every scaled task loss is backpropagated on its own. Times S: s is
        # in the optimizer that GradScaler unscales.
        s = self.log_scales
        grad = scaled(s.detach().exp() * losses.to(s) - 1.0, loss_scale)
        accumulate_grads([s], [grad])
