"""IMTL: impartial multi-task learning (IMTL-G, IMTL-L and the hybrid) (docs/weighting.md#imtl).

Liu, Li, Kuang, Xue, Chen, Yang, Liao, Zhang, "Towards Impartial Multi-task Learning",
ICLR 2021 (OpenReview IMPnRXEWpvr).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from okd.weighting.base import (
    GradientWeighting,
    finite_or_zero,
    scaled,
    scaled_direction,
    unscaled,
)
from okd.weighting.gradtools import (
    accumulate_grads,
    accumulate_heads,
    backward_through_representation,
    representation_gradients,
    require_representation,
    task_gradients,
    weighted_sum,
    write_flat_grad,
)
from okd.weighting.solvers import gram

MODES = ("g", "l", "hybrid")
LEVELS = ("parameters", "representation")


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

    * ``mode: g`` -- IMTL-G (Section 3.2, Eq. (6)): d = sum_k a_k g_k with a from
      :func:`imtl_g_weights`; weights sum to 1 (scale: EW's sum / K for equal a). Heads: raw
      gradient.
    * ``mode: l`` -- IMTL-L (Section 3.1, Eq. (2)): learnable s_k (init 0, trained by the model's
      optimiser through :meth:`param_groups`); the objective is sum_k (e^{s_k} L_k - s_k), one
      ordinary backward pass. grad_s = e^s l - 1 drives e^{s_k} L_k towards 1.
    * ``mode: hybrid`` -- IMTL (Algorithm 1; LibMTL's ``IMTL``): IMTL-G applied to the
      gradients of the scaled losses e^{s_k} L_k (rows e^{s_k} g_k); heads get
      e^{s_k} dL_k/d theta_k; s gets e^s l - 1.

    ``level: representation`` applies IMTL-G to z_k = dL_k/dZ at the shared representation
    (the paper does, for speed; flattened over batch x features) and backpropagates
    sum_k a_k z_k through the encoder once; ``parameters`` (default, LibMTL's default) uses the
    gradients of the shared parameters.

    The returned weights are the coefficients on the raw task gradients: a (``g``), e^s
    (``l``), a * e^s (``hybrid``). Cost: K backward passes (``g``/``hybrid``; through the heads
    only at the representation level) and a K x K pseudo-inverse; ``l`` costs one backward.

    Loss scaling (fp16): the per-task gradients come from S L_k and are divided by S before
    IMTL-G; the heads get S e^{s_k} dL_k/d theta_k, s gets S (e^s l - 1), the shared parameters
    (or Z) S times the combination. IMTL keeps no state besides s (trained by the optimizer), so
    an overflow step only has to write NaN, which it does.

    Args:
        mode: ``hybrid`` (default: the paper's full IMTL and LibMTL's), ``g`` or ``l``.
        level: ``parameters`` (default) or ``representation``.
    """

    def __init__(self, mode: str = "hybrid", level: str = "parameters") -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"IMTL: mode must be one of {MODES}, got {mode!r}")
        if level not in LEVELS:
            raise ValueError(f"IMTL: level must be one of {LEVELS}, got {level!r}")
        self.mode = mode
        self.level = level
        self.needs_representation = mode != "l" and level == "representation"

    def setup(self, num_tasks: int) -> None:
        if self.mode != "g":
            self.log_scales = nn.Parameter(torch.zeros(num_tasks))  # s_k of IMTL-L

    # -- the rule ---------------------------------------------------------------------------
    def combine(self, grads: Tensor, losses: Tensor) -> tuple[Tensor, Tensor]:
        """IMTL-G on the given rows (in ``hybrid`` mode the rows are already e^{s_k} g_k)."""
        a = imtl_g_weights(gram(grads)).to(grads.dtype)
        return weighted_sum(a, grads), a

    def scales(self, losses: Tensor) -> Tensor:
        """e^{s_k} (detached), ones in mode ``g``."""
        if self.mode == "g":
            return torch.ones_like(losses.detach())
        return self.log_scales.detach().to(losses).exp()

    # -- backward ---------------------------------------------------------------------------
    def backward(self, losses, extra_loss=None, representation=None, loss_scale=None):
        if self.mode == "l":
            return self._backward_loss(losses, extra_loss, loss_scale)
        if self.level == "representation":
            require_representation(representation, "IMTL")
        if extra_loss is not None:
            # shares the graph with the task losses
            scaled(extra_loss, loss_scale).backward(retain_graph=True)
        scales = self.scales(losses)
        task_params = self.bound.task_parameters
        # Gradients of the scaled losses e^{s_k} L_k are e^{s_k} times those of L_k: take the
        # raw per-task gradients once and scale the K rows (and the heads) afterwards.
        if self.level == "representation":
            z, heads = representation_gradients(scaled(losses, loss_scale), representation, task_params)
            z = unscaled(z, loss_scale)
            rows = z * scales.to(z.dtype).view(-1, *[1] * (z.dim() - 1))
            a = imtl_g_weights(gram(rows.reshape(rows.shape[0], -1))).to(z.dtype)
            grad = scaled_direction(weighted_sum(a, rows), rows, loss_scale)
            backward_through_representation(representation, grad)
        else:
            shared = self.bound.shared_parameters
            grads, heads = task_gradients(scaled(losses, loss_scale), shared, task_params)
            grads = unscaled(self.bound.reduce(grads), loss_scale)
            direction, a = self.combine(grads * scales.to(grads.dtype)[:, None], losses.detach())
            write_flat_grad(shared, scaled_direction(direction, grads, loss_scale))
        # heads: already S-scaled by the scaled losses
        accumulate_heads(task_params, heads, None if self.mode == "g" else scales)
        if self.mode == "hybrid":
            self._accumulate_scale_grad(losses.detach(), loss_scale)
        return (a.to(scales) * scales).to(losses.dtype).detach()

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
