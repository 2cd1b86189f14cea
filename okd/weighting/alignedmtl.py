"""Aligned-MTL and Aligned-MTL-UB (Senushkin et al., CVPR 2023) (docs/weighting.md#alignedmtl)."""
from __future__ import annotations

import torch
from torch import Tensor

from okd.weighting.base import GradientWeighting, finite_or_zero, scaled, scaled_direction, unscaled
from okd.weighting.gradtools import (
    accumulate_heads,
    backward_through_representation,
    representation_gradients,
    require_representation,
    weighted_sum,
)
from okd.weighting.solvers import gram

SCALE_MODES = ("min", "median", "rmse")
REDUCTIONS = ("sum", "mean")


class AlignedMTL(GradientWeighting):
    """Aligned-MTL: align the task gradients to an orthogonal system of equal norms.

    Senushkin, Patakin, Kuznetsov, Konushin, "Independent Component Alignment for Multi-Task
    Learning", CVPR 2023, arXiv 2305.19000, Sec. 4 (Aligned-MTL); official code SamsungLabs/MTL
    (balancer ``amtl``). With ``M = G G^T = V Lambda V^T`` (eigh, float64):

    * keep the r eigenpairs with ``lambda > lambda_max * K * eps_float32`` (the reference's rank
      test, with float32's machine epsilon), i.e. drop directions the gradients do not span;
    * ``B = sqrt(sigma) V_r Lambda_r^(-1/2) V_r^T``, where sigma is the smallest kept
      eigenvalue (``scale_mode='min'``, default), their lower median (``'median'``, as
      ``torch.median`` returns) or their mean (``'rmse'``);
    * the aligned gradients ``B G`` have orthogonal rows of norm sqrt(sigma) (condition number 1);
      the update is ``d = G^T alpha``, ``alpha = B w`` with ``w = 1`` (``reduction='sum'``, the
      official code) or ``w = 1/K`` (``'mean'``, torchjd).

    Scale: B is invariant to a common scale of the gradients, so d scales like G; with ``min``,
    nearly collinear gradients make sigma -- and the update -- tiny. All-zero gradients give d = 0.
    Heads get their ordinary gradients (the official code does not scale them). The logged weights
    are alpha. Everything stays on the gradients' device with no explicit host sync
    (``torch.linalg.eigh`` may itself synchronise on CUDA).

    Loss scaling (fp16): the rows (g_k, or z_k for -UB) are divided by S before the Gram matrix
    and the direction is multiplied by S when written. Stateless: an overflow step eigendecomposes
    a zero matrix (B = 0) and writes NaN.
    """

    def __init__(self, scale_mode: str = "min", reduction: str = "sum") -> None:
        super().__init__()
        if scale_mode not in SCALE_MODES:
            raise ValueError(f"scale_mode must be one of {SCALE_MODES}, got {scale_mode!r}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self.scale_mode = scale_mode
        self.reduction = reduction

    def combine(self, grads: Tensor, losses: Tensor) -> tuple[Tensor, Tensor]:
        """d = G^T B w, weights alpha = B w."""
        b = alignment_matrix(gram(grads), self.scale_mode)
        alpha = b.sum(1) if self.reduction == "sum" else b.mean(1)  # B w, w = 1 or 1/K
        return weighted_sum(alpha, grads), alpha


class AlignedMTLUB(AlignedMTL):
    """Aligned-MTL-UB: Aligned-MTL on the gradients of the shared representation Z (same paper).

    Rows z_k = dL_k/dZ flattened over batch x features (official ``amtlub``; LibMTL sums over the
    batch first, a different Gram matrix). Cost: K backward passes through the heads only, then
    one backward pass of ``Z.backward(sum_k alpha_k z_k)`` through the shared trunk. Heads get their
    ordinary gradients (official ``scale_decoder_grad=False``). ``combine`` works on any rows, so
    its unit tests are Aligned-MTL's.
    """

    needs_representation = True

    def backward(self, losses, extra_loss=None, representation=None, loss_scale=None):
        z = require_representation(representation, type(self).__name__)
        if extra_loss is not None:
            scaled(extra_loss, loss_scale).backward(retain_graph=True)
        heads = self.bound.task_parameters
        # K passes that stop at Z (heads only); the trunk's graph stays alive for the last backward.
        rows, head_grads = representation_gradients(scaled(losses, loss_scale), z, heads)
        rows = unscaled(rows, loss_scale)
        direction, alpha = self.combine(rows.flatten(1), losses.detach())
        accumulate_heads(heads, head_grads)  # raw gradients (scale_decoder_grad=False), S-scaled
        backward_through_representation(z, scaled_direction(direction, rows, loss_scale).view_as(z))
        return alpha.detach()


def alignment_matrix(gram: Tensor, scale_mode: str = "min") -> Tensor:
    """B = sqrt(sigma) V_r Lambda_r^(-1/2) V_r^T from the Gram matrix (float64, same device).

    Rank selection and sigma use masks rather than slicing so that nothing is read on the host.
    A non-finite Gram matrix (fp16 overflow step) is replaced by zeros (B = 0) before eigh.
    """
    gram = finite_or_zero(gram.to(torch.float64))
    k = gram.shape[0]
    lam, v = torch.linalg.eigh(0.5 * (gram + gram.T))  # ascending eigenvalues
    tol = lam.max() * k * torch.finfo(torch.float32).eps
    keep = lam > tol
    rank = keep.sum()
    inv_sqrt = torch.where(keep, lam.clamp_min(1e-300).rsqrt(), torch.zeros_like(lam))
    sigma = torch.where(rank > 0, _sigma(lam, keep, rank, scale_mode), torch.zeros_like(lam[0]))
    return sigma.sqrt() * (v * inv_sqrt) @ v.T


def _sigma(lam: Tensor, keep: Tensor, rank: Tensor, scale_mode: str) -> Tensor:
    k = lam.shape[0]
    if scale_mode == "min":
        return torch.where(keep, lam, torch.inf).min()
    if scale_mode == "median":
        # Kept eigenvalues are the top `rank` of the ascending list; the lower median is the
        # ((rank - 1) // 2)-th smallest of them.
        index = (k - rank + torch.div(rank - 1, 2, rounding_mode="floor")).clamp(0, k - 1)
        return lam.gather(0, index.reshape(1)).squeeze(0)
    if scale_mode == "rmse":
        return torch.where(keep, lam, torch.zeros_like(lam)).sum() / rank.clamp_min(1)
    raise ValueError(f"scale_mode must be one of {SCALE_MODES}, got {scale_mode!r}")
