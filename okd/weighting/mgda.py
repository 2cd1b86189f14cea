"""MGDA and MGDA-UB (docs/weighting.md#mgda).

Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018,
arXiv 1810.04650. Official code: isl-org/MultiObjectiveOptimization.
"""
from __future__ import annotations

import warnings

from torch import Tensor

from okd.weighting.arguments import require, require_choice
from okd.weighting.base import GradientWeighting, finite_or_zero
from okd.weighting.gradtools import weighted_sum
from okd.weighting.solvers import gram, min_norm_element

NORMALIZATIONS = ("none", "l2", "loss", "loss+")
APPLY = ("original", "libmtl", "nashmtl")
REP_GRAMS = ("flatten", "batch_sum")


class MGDA(GradientWeighting):
    """Multiple-gradient descent: the minimum-norm element of the convex hull of the gradients.

    Sener & Koltun 2018, Eq. (3) / Algorithm 2: w = argmin over the simplex of
    ||sum_k w_k g_k / n_k||^2, solved on the K x K Gram matrix
    (:func:`okd.weighting.solvers.min_norm_element`). ``level: representation`` is MGDA-UB
    (Section 3.3, Eq. 10: z_k = dL_k/dZ instead of g_k). ``normalization`` chooses n_k, ``apply``
    how w is applied (``original``: sum_k w_k L_k, heads weighted; ``libmtl``: normalised
    gradients, raw heads; ``nashmtl``: original times K); docs/weighting.md#mgda, #mgda_ub.
    ``use_representation`` is the deprecated spelling of ``level``.
    """

    levels = ("parameters", "representation")

    def __init__(
        self,
        normalization: str = "none",
        apply: str = "original",
        level: str = "parameters",
        rep_gram: str = "flatten",
        solver: str = "pgd",
        exact_pair: bool = True,
        max_iter: int = 250,
        tol: float = 1e-5,
        eps: float = 1e-8,
        use_representation: bool | None = None,
    ) -> None:
        require_choice("MGDA", "normalization", normalization, NORMALIZATIONS)
        require_choice("MGDA", "apply", apply, APPLY)
        require_choice("MGDA", "rep_gram", rep_gram, REP_GRAMS)
        require_choice("MGDA", "solver", solver, ("pgd", "frank_wolfe"))
        require(isinstance(max_iter, int) and max_iter >= 1,
                "MGDA", "max_iter", "an int >= 1", max_iter)
        for name, value in (("tol", tol), ("eps", eps)):
            require(isinstance(value, (int, float)) and value > 0,
                    "MGDA", name, "a number > 0", value)
        super().__init__(_level_from_use_representation(level, use_representation))
        self.normalization = normalization
        self.apply = apply
        self.rep_gram = rep_gram
        self.solver = solver
        self.exact_pair = bool(exact_pair)
        self.max_iter = max_iter
        self.tol = float(tol)
        self.eps = float(eps)

    @property
    def use_representation(self) -> bool:
        """Deprecated: ``level == "representation"``."""
        return self.level == "representation"

    # -- the rule ---------------------------------------------------------------------------
    def norms(self, matrix: Tensor, losses: Tensor) -> Tensor:
        """n_k of the chosen normalisation (float64, on M's device), eps included."""
        g_norm = matrix.diagonal().clamp_min(0).sqrt()
        losses = losses.detach().to(matrix)
        if self.normalization == "none":
            n = g_norm.new_ones(g_norm.shape)
        elif self.normalization == "l2":
            n = g_norm
        elif self.normalization == "loss":
            n = losses
        else:
            n = losses * g_norm
        return n + self.eps if self.normalization != "none" else n

    def solve(self, matrix: Tensor, losses: Tensor) -> tuple[Tensor, Tensor]:
        """(w, n): the simplex weights for the normalised Gram M^ = M / (n n^T), and n."""
        matrix = finite_or_zero(matrix)  # an overflow step: solve on zeros instead of raising
        n = self.norms(matrix, losses)
        normalized = finite_or_zero(matrix / (n[:, None] * n[None, :]))  # (non-finite losses)
        w = min_norm_element(normalized, self.solver, self.max_iter, self.tol, self.exact_pair)
        return w.to(matrix), n

    def raw_weights(self, w: Tensor, n: Tensor, on_representation: bool) -> Tensor:
        """Coefficients on the raw gradients for the chosen ``apply``."""
        if self.apply == "nashmtl":
            return w * w.numel()
        if self.apply == "libmtl" and not on_representation:
            return w / n
        return w

    def combine(self, grads: Tensor, losses: Tensor) -> tuple[Tensor, Tensor]:
        w, n = self.solve(gram(grads), losses)
        weights = self.raw_weights(w, n, on_representation=False)
        return weighted_sum(weights, grads), weights.to(grads.dtype)

    def combine_representation(
        self, representation: Tensor, rep_grads: Tensor, losses: Tensor
    ) -> tuple[Tensor, Tensor]:
        """MGDA-UB: the Gram of z_k (``rep_gram``), solve, sum_k w_k z_k."""
        rows = rep_grads.sum(dim=1) if self.rep_gram == "batch_sum" else rep_grads
        w, n = self.solve(gram(rows.reshape(rows.shape[0], -1)), losses)
        weights = self.raw_weights(w, n, on_representation=True)
        return weighted_sum(weights, rep_grads), weights.to(losses.dtype)

    def head_weights(self, weights: Tensor, losses: Tensor) -> Tensor | None:
        """``original`` and ``nashmtl`` backpropagate sum_k w_k L_k: heads are weighted too."""
        return weights if self.apply in ("original", "nashmtl") else None


def _level_from_use_representation(level: str, use_representation: bool | None) -> str:
    """``level``, or the level the deprecated ``use_representation`` names (with a warning)."""
    if use_representation is None:
        return level
    implied = "representation" if use_representation else "parameters"
    if level != "parameters" and level != implied:
        raise ValueError(f"MGDA: use_representation={use_representation!r} contradicts level={level!r}; "
                         "drop use_representation")
    warnings.warn(f"MGDA: use_representation is deprecated, use level: {implied} "
                  "(weighting=mgda_ub is MGDA with level: representation)", FutureWarning, stacklevel=3)
    return implied
