"""Aligned-MTL and Aligned-MTL-UB (Senushkin et al., CVPR 2023) (docs/weighting.md#alignedmtl)."""
from __future__ import annotations

import warnings

import torch
from torch import Tensor

from okd.weighting.arguments import require_choice
from okd.weighting.base import GradientWeighting, finite_or_zero
from okd.weighting.gradtools import weighted_sum
from okd.weighting.solvers import gram

SCALE_MODES = ("min", "median", "rmse")
REDUCTIONS = ("sum", "mean")


class AlignedMTL(GradientWeighting):
    """Aligned-MTL: align the task gradients to an orthogonal system of equal norms.

    Senushkin, Patakin, Kuznetsov, Konushin, "Independent Component Alignment for Multi-Task
    Learning", CVPR 2023, arXiv 2305.19000, Sec. 4; official code SamsungLabs/MTL. d = G^T B w with
    B from :func:`alignment_matrix` and w = 1 (``reduction='sum'``) or 1/K (``'mean'``); heads get
    their raw gradients; the logged weights are alpha = B w. ``level: representation`` is
    Aligned-MTL-UB (docs/weighting.md#alignedmtl, #alignedmtl_ub).
    """

    levels = ("parameters", "representation")

    def __init__(self, scale_mode: str = "min", reduction: str = "sum", level: str = "parameters") -> None:
        super().__init__(level)
        require_choice("AlignedMTL", "scale_mode", scale_mode, SCALE_MODES)
        require_choice("AlignedMTL", "reduction", reduction, REDUCTIONS)
        self.scale_mode = scale_mode
        self.reduction = reduction

    def combine(self, grads: Tensor, losses: Tensor) -> tuple[Tensor, Tensor]:
        """d = G^T B w, weights alpha = B w."""
        b = alignment_matrix(gram(grads), self.scale_mode)
        alpha = b.sum(1) if self.reduction == "sum" else b.mean(1)  # B w, w = 1 or 1/K
        return weighted_sum(alpha, grads), alpha


class AlignedMTLUB(AlignedMTL):
    """Deprecated spelling of ``AlignedMTL(level="representation")`` (``weighting=alignedmtl_ub``)."""

    def __init__(self, scale_mode: str = "min", reduction: str = "sum") -> None:
        warnings.warn("AlignedMTLUB is deprecated: use AlignedMTL with level='representation' "
                      "(conf/weighting/alignedmtl_ub.yaml)", FutureWarning, stacklevel=2)
        super().__init__(scale_mode, reduction, level="representation")


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
