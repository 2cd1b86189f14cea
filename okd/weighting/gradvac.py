"""GradVac: gradient vaccine (docs/weighting.md#gradvac).

Wang, Tsvetkov, Firat, Cao, "Gradient Vaccine: Investigating and Improving Multi-task
Optimization in Massively Multilingual Models", ICLR 2021, arXiv 2010.05874.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from okd.weighting.arguments import require, require_choice
from okd.weighting.base import GradientWeighting, all_finite, keep_if_finite
from okd.weighting.gradtools import OwnedGenerator, random_orders, weighted_sum
from okd.weighting.solvers import gram

GROUP_TYPES = ("whole", "tensor")
#: phi_hat is kept inside (-1, 1) where used: sqrt(1 - phi_hat^2) is a divisor (docs/weighting.md#gradvac).
_PHI_BOUND = 1.0 - 1e-6


def vaccine_coefficients(
    grams: Tensor, phi_hat: Tensor, orders: Sequence[Sequence[int]], beta: float, eps: float = 1e-8
) -> tuple[Tensor, Tensor]:
    """GradVac's corrections in coefficient form, for every parameter group at once.

    Wang et al. 2021, Eq. (3) and Algorithm 2. Per group (a slice [k] of the flat gradient) and
    ordered pair (i, j), with g_i'[k] the partially corrected gradient:

        phi = cos(g_i'[k], g_j[k]);  if phi < phi_hat[i, j, k]:
        g_i'[k] += c g_j[k],  c = ||g_i'|| (phi_hat sqrt(1 - phi^2) - phi sqrt(1 - phi_hat^2))
                                   / (||g_j|| sqrt(1 - phi_hat^2))
        then always phi_hat[i, j, k] <- (1 - beta) phi_hat + beta phi  (phi before the correction).

    With g_i'[k] = sum_j C[k, i, j] g_j[k] every quantity comes from the per-group Gram matrices:
    g_i' . g_j = (C M)_ij, ||g_i'||^2 = C_i M C_i^T. The branch is a ``where``: no host sync.

    Args:
        grams: (n_groups, K, K) Gram matrices, float64.
        phi_hat: (K, K, n_groups) targets (not modified).
        orders: for each i, the order of the other tasks.
    Returns:
        (C of shape (n_groups, K, K), the updated phi_hat).
    """
    n, k, _ = grams.shape
    coeffs = torch.eye(k, dtype=grams.dtype, device=grams.device).repeat(n, 1, 1)
    phi_hat = phi_hat.to(grams).clone()
    for i in range(k):
        for j in orders[i]:
            ci = coeffs[:, i, :]                                   # (n, K)
            mci = torch.einsum("nab,nb->na", grams, ci)            # M C_i^T per group
            dot = mci[:, j]                                        # g_i' . g_j
            norm_i = (ci * mci).sum(-1).clamp_min(0).sqrt()        # ||g_i'||
            norm_j = grams[:, j, j].clamp_min(0).sqrt()            # ||g_j||
            phi = (dot / (norm_i * norm_j + eps)).clamp(-1.0, 1.0)
            target = phi_hat[i, j].clamp(-_PHI_BOUND, _PHI_BOUND)
            root_t = (1 - target**2).sqrt()
            c = norm_i * (target * (1 - phi**2).sqrt() - phi * root_t) / (norm_j * root_t + eps)
            coeffs[:, i, j] += torch.where(phi < target, c, torch.zeros_like(c))
            phi_hat[i, j] = (1 - beta) * phi_hat[i, j] + beta * phi
    return coeffs, phi_hat


class GradVac(GradientWeighting):
    """Steer every pairwise gradient cosine towards an EMA of its past values.

    Wang et al., ICLR 2021, Algorithm 2: for each task i and every other j (random order), per
    parameter group, raise cos(g_i', g_j) to the target phi_hat[i, j] when below it
    (:func:`vaccine_coefficients`), then update phi_hat by an EMA with rate ``beta``;
    d = sum_i g_i'. The first step equals PCGrad. State: ``phi_hat`` and the order generator;
    logged weights: the coefficients on the raw g_k (docs/weighting.md#gradvac).

    Args:
        beta: EMA rate of phi_hat; 1e-2 (paper's experiments; LibMTL default 0.5).
        group_type: ``whole`` (LibMTL type 0) or ``tensor`` (one group per tensor, LibMTL 2).
        seed: seed of the order generator.
        eps: guards the norms' divisions (1e-8).
    """

    def __init__(self, beta: float = 1e-2, group_type: str = "whole", seed: int = 0,
                 eps: float = 1e-8) -> None:
        super().__init__()
        require(isinstance(beta, (int, float)) and 0.0 < beta <= 1.0,
                "GradVac", "beta", "a number in (0, 1]", beta)
        require_choice("GradVac", "group_type", group_type, GROUP_TYPES)
        require(isinstance(eps, (int, float)) and eps > 0, "GradVac", "eps", "a number > 0", eps)
        self.beta = float(beta)
        self.group_type = group_type
        self.eps = float(eps)
        self.generator = OwnedGenerator(seed, "GradVac")
        self.group_sizes: list[int] = []

    def setup(self, num_tasks: int) -> None:
        sizes = [p.numel() for p in self.bound.shared_parameters]
        self.group_sizes = sizes if self.group_type == "tensor" else [sum(sizes)]
        self.register_buffer("phi_hat", torch.zeros(num_tasks, num_tasks, len(self.group_sizes),
                                                    dtype=torch.float64))
        # Group sizes as a device tensor (moved by .to()), so combine() copies nothing per step.
        self.register_buffer("group_numel", torch.tensor(self.group_sizes, dtype=torch.float64),
                             persistent=False)

    def combine(self, grads: Tensor, losses: Tensor) -> tuple[Tensor, Tensor]:
        if sum(self.group_sizes) != grads.shape[1]:
            raise ValueError(f"GradVac: grads have {grads.shape[1]} columns, the bound shared "
                             f"parameters {sum(self.group_sizes)}")
        splits = torch.split(grads, self.group_sizes, dim=1)
        grams = torch.stack([gram(s) for s in splits])
        orders = random_orders(grads.shape[0], self.generator.get("cpu"))
        coeffs, phi_hat = vaccine_coefficients(grams, self.phi_hat, orders, self.beta, self.eps)
        # A non-finite row makes its Gram diagonal non-finite: such a (skipped) step keeps phi_hat.
        self.phi_hat.copy_(keep_if_finite(phi_hat, self.phi_hat, all_finite(grams)))
        group_weights = coeffs.sum(dim=1)  # d[k] = sum_i g_i'[k] = sum_j (sum_i C[k,i,j]) g_j[k]
        direction = torch.cat([weighted_sum(w, s) for w, s in zip(group_weights, splits)])
        sizes = self.group_numel.to(grams)
        weights = (group_weights * sizes[:, None]).sum(dim=0) / sizes.sum()
        return direction, weights.to(grads.dtype)

    def extra_state(self) -> dict:
        return {"generator": self.generator.state()}

    def load_extra_state(self, state: dict) -> None:
        if "generator" in state:
            self.generator.load(state["generator"])
