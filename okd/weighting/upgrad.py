"""UPGrad (Quinton & Rey, 2024): mean of the projections onto the dual cone (docs/weighting.md#upgrad)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from okd.weighting.arguments import require
from okd.weighting.base import GradientWeighting, finite_or_zero
from okd.weighting.gradtools import weighted_sum
from okd.weighting.qp import min_quadratic_above
from okd.weighting.solvers import gram


class UPGrad(GradientWeighting):
    """UPGrad: ``d = sum_i p_i pi_C(g_i)``, pi_C the projection onto the cone {x : G x >= 0}.

    Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", arXiv 2406.16232, Sec. 3;
    reference torchjd ``UPGrad``. In weight form one K-variable QP per task on
    ``M / tr(M) + reg_eps I`` (:func:`okd.weighting.qp.nonnegative_qp`, exact active set);
    d = G^T w, logged weights w; heads raw (docs/weighting.md#upgrad).
    """

    def __init__(
        self,
        norm_eps: float = 1e-4,
        reg_eps: float = 1e-4,
        pref_vector: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        require(norm_eps >= 0, "UPGrad", "norm_eps", ">= 0", norm_eps)
        require(reg_eps >= 0, "UPGrad", "reg_eps", ">= 0", reg_eps)
        require(pref_vector is None or all(p >= 0 for p in pref_vector),
                "UPGrad", "pref_vector", "non-negative", pref_vector)
        self.norm_eps = norm_eps
        self.reg_eps = reg_eps
        self.pref_vector = None if pref_vector is None else [float(p) for p in pref_vector]

    def setup(self, num_tasks: int) -> None:
        if self.pref_vector is not None and len(self.pref_vector) != num_tasks:
            raise ValueError(
                f"pref_vector must have one entry per task ({num_tasks}), got {self.pref_vector}"
            )

    def combine(self, grads: Tensor, losses: Tensor) -> tuple[Tensor, Tensor]:
        """d = G^T w with w = sum_i argmin_{v >= p_i e_i} v^T M~ v."""
        w = upgrad_weights(gram(grads), self.pref_vector, self.norm_eps, self.reg_eps)
        return weighted_sum(w, grads), w.to(grads.device)


def upgrad_weights(
    gram_matrix: Tensor,
    pref_vector: Sequence[float] | None = None,
    norm_eps: float = 1e-4,
    reg_eps: float = 1e-4,
) -> Tensor:
    """UPGrad's weights w (float64, CPU) from the Gram matrix M (non-finite M: zeros, fp16 overflow)."""
    m = finite_or_zero(gram_matrix.detach().to("cpu", torch.float64))
    k = m.shape[0]
    eye = torch.eye(k, dtype=torch.float64)
    p = torch.full((k,), 1.0 / k, dtype=torch.float64)
    if pref_vector is not None:
        p = torch.tensor(list(pref_vector), dtype=torch.float64)
    trace = float(m.diagonal().sum())  # = ||G||_F^2
    m = (m / trace if trace >= norm_eps else torch.zeros_like(m)) + reg_eps * eye
    return sum(min_quadratic_above(m, p[i] * eye[i]) for i in range(k))
