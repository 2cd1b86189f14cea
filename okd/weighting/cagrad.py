"""CAGrad: conflict-averse gradient descent (docs/weighting.md#cagrad).

Liu, Liu, Jin, Stone, Liu, "Conflict-Averse Gradient Descent for Multi-task Learning",
NeurIPS 2021, arXiv 2110.14048. Official code: Cranial-XIX/CAGrad.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from okd.weighting.arguments import require, require_choice
from okd.weighting.base import GradientWeighting, finite_or_zero
from okd.weighting.gradtools import weighted_sum
from okd.weighting.solvers import gram, minimize_on_simplex, normalized_gram

RESCALES = (0, 1, 2)
#: inside the square root of the dual's second term, as in the official code (on M / max M_kk).
_SQRT_EPS = 1e-8


def cagrad_weights(matrix: Tensor, c: float, eps: float = 1e-4) -> Tensor:
    """Effective weights lambda (d = G^T lambda, before rescaling) from the Gram matrix M.

    Liu et al. 2021, Eqs. (4)-(5) / Algorithm 1: the dual over the simplex,
    w* = argmin_w w^T M 1/K + c ||g0|| sqrt(w^T M w), solved by
    :func:`okd.weighting.solvers.minimize_on_simplex` from 1/K on a float64 CPU copy of
    M / max_k M_kk; lambda_k = 1/K + (c ||g0|| / ||g_w||) w*_k with g_w = G^T w*. The
    Pareto-stationary guard (||g_w|| <= eps x the largest gradient norm) and a non-finite M give
    lambda = 1/K (docs/weighting.md#cagrad).
    """
    m, scale = normalized_gram(finite_or_zero(matrix))
    k = m.shape[0]
    mean_w = np.full(k, 1.0 / k)
    if scale == 0.0 or c == 0.0:
        return torch.from_numpy(mean_w)
    b = m @ mean_w                              # g_w . g0 = w^T M 1/K
    g0_norm = float(np.sqrt(max(m.mean(), 0.0)))
    radius = c * g0_norm

    def fun(w: np.ndarray) -> float:
        return float(w @ b + radius * np.sqrt(w @ m @ w + _SQRT_EPS))

    def grad(w: np.ndarray) -> np.ndarray:
        return b + radius * (m @ w) / np.sqrt(w @ m @ w + _SQRT_EPS)

    w = minimize_on_simplex(fun, grad, mean_w, max_iter=1000, tol=1e-12)
    gw_norm = float(np.sqrt(max(w @ m @ w, 0.0)))
    if gw_norm <= eps:
        return torch.from_numpy(mean_w)
    return torch.from_numpy(mean_w + (radius / gw_norm) * w)


class CAGrad(GradientWeighting):
    """Conflict-averse gradient: the best worst-task improvement within a ball around g0.

    Liu et al., NeurIPS 2021, Eqs. (3)-(5): maximise min_k g_k . d over ||d - g0|| <= c ||g0||,
    solved through its K-dimensional dual (:func:`cagrad_weights`); c = 0 gives g0. The returned
    weights are the coefficients on the raw g_k; heads raw (docs/weighting.md#cagrad).

    Args:
        c: radius of the ball (``alpha`` in the code): 0.4 (official scripts; default), 0.5
            (LibMTL), 0.6 (second Cityscapes run).
        rescale: 1 (default: official, LibMTL) gives d / (1 + c^2), 0 gives d, 2 d / (1 + c).
        times_k: multiply by K (True: official code) or not (False: LibMTL).
        eps: ||g_w|| below eps x the largest gradient norm counts as Pareto-stationary (mean
            weights); 1e-4, see :func:`cagrad_weights`.
    """

    def __init__(self, c: float = 0.4, rescale: int = 1, times_k: bool = True, eps: float = 1e-4) -> None:
        super().__init__()
        require(isinstance(c, (int, float)) and c >= 0 and np.isfinite(c),
                "CAGrad", "c", "a finite number >= 0", c)
        require_choice("CAGrad", "rescale", rescale, RESCALES)
        require(isinstance(eps, (int, float)) and eps > 0, "CAGrad", "eps", "a number > 0", eps)
        self.c = float(c)
        self.rescale = rescale
        self.times_k = bool(times_k)
        self.eps = float(eps)

    def scale(self, num_tasks: int) -> float:
        """The factor applied to d: 1, 1/(1 + c^2) or 1/(1 + c), times K if ``times_k``."""
        factor = {0: 1.0, 1: 1.0 / (1.0 + self.c**2), 2: 1.0 / (1.0 + self.c)}[self.rescale]
        return factor * (num_tasks if self.times_k else 1.0)

    def combine(self, grads: Tensor, losses: Tensor) -> tuple[Tensor, Tensor]:
        weights = cagrad_weights(gram(grads), self.c, self.eps) * self.scale(grads.shape[0])
        weights = weights.to(device=grads.device, dtype=grads.dtype)
        return weighted_sum(weights, grads), weights
