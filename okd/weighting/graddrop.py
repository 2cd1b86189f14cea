"""GradDrop: gradient sign dropout (docs/weighting.md#graddrop).

Chen, Ngiam, Huang, Luong, Kretzschmar, Chai, Anguelov, "Just Pick a Sign: Optimizing Deep
Multitask Models with Gradient Sign Dropout", NeurIPS 2020, arXiv 2010.06808.
"""
from __future__ import annotations

import torch
from torch import Tensor

from okd.weighting.arguments import require
from okd.weighting.base import GradientWeighting
from okd.weighting.gradtools import OwnedGenerator


def _work_dtype(t: Tensor) -> torch.dtype:
    """float64 stays float64; half precision is lifted to float32 for the sums."""
    return t.dtype if t.dtype in (torch.float32, torch.float64) else torch.float32


def sign_purity(signed_sums: Tensor, eps: float) -> Tensor:
    """P = 0.5 (1 + sum_k S_k / (sum_k |S_k| + eps)): Chen et al. 2020, Eq. (1)."""
    return 0.5 * (1.0 + signed_sums.sum(dim=0) / (signed_sums.abs().sum(dim=0) + eps))


def keep_coefficients(signed_sums: Tensor, uniform: Tensor, leak: float, eps: float) -> Tensor:
    """leak + (1 - leak) M_k, with M_k = [P > U][S_k > 0] + [P < U][S_k < 0] (Eq. (2)).

    Args:
        signed_sums: S, shape (K, *F) (one value per task and feature position).
        uniform: U ~ Uniform(0, 1), shape F.
    """
    purity = sign_purity(signed_sums, eps)
    keep = ((purity > uniform) & (signed_sums > 0)) | ((purity < uniform) & (signed_sums < 0))
    return leak + (1.0 - leak) * keep.to(signed_sums.dtype)


class GradDrop(GradientWeighting):
    """Keep, at every position of a shared activation A, only the gradients of one sign.

    Chen et al. 2020, Eqs. (1)-(2) (:func:`keep_coefficients`) on z_k = dL_k/dA, with the sign
    sums taken over the batch and U ~ Uniform(0, 1) drawn per feature position from the method's
    own generator; dL/dA = sum_k (leak + (1 - leak) M_k) z_k. ``level: parameters`` applies the
    same masks to the rows g_k (the CAGrad and Auto-Lambda repos' variant). Heads get their raw
    gradient; the logged weights are each task's mean keep coefficient (docs/weighting.md#graddrop).
    """

    levels = ("representation", "parameters")

    def __init__(self, leak: float = 0.0, level: str = "representation", seed: int = 0,
                 eps: float = 1e-7) -> None:
        require(isinstance(leak, (int, float)) and 0.0 <= leak <= 1.0,
                "GradDrop", "leak", "a number in [0, 1]", leak)
        super().__init__(level)
        require(isinstance(eps, (int, float)) and eps > 0, "GradDrop", "eps", "a number > 0", eps)
        self.leak = float(leak)
        self.eps = float(eps)
        self.generator = OwnedGenerator(seed, "GradDrop")

    def _uniform(self, shape: torch.Size, device: torch.device) -> Tensor:
        # float32 draws: the same U for float32 and float64 models.
        return torch.rand(shape, generator=self.generator.get(device), device=device)

    def combine(self, grads: Tensor, losses: Tensor) -> tuple[Tensor, Tensor]:
        """The ``parameters`` variant: masks on the rows g_k themselves."""
        signed = grads.to(_work_dtype(grads))
        coeffs = keep_coefficients(signed, self._uniform(signed.shape[1:], grads.device), self.leak, self.eps)
        direction = (coeffs * signed).sum(dim=0).to(grads.dtype)
        return direction, coeffs.mean(dim=1).to(grads.dtype)

    def combine_representation(
        self, representation: Tensor, rep_grads: Tensor, losses: Tensor | None = None,
        uniform: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """(dL/dA, weights) from A (B, *F) and z (K, B, *F); U (shape F) drawn when not given."""
        z = rep_grads.to(_work_dtype(rep_grads))
        signed = (torch.sign(representation.detach()).to(z) * z).sum(dim=1)  # (K, *F)
        if uniform is None:
            uniform = self._uniform(signed.shape[1:], z.device)
        coeffs = keep_coefficients(signed, uniform.to(signed), self.leak, self.eps)
        grad = (coeffs.unsqueeze(1) * z).sum(dim=0)  # masks broadcast over the batch
        weights = coeffs.reshape(coeffs.shape[0], -1).mean(dim=1)
        return grad.to(rep_grads.dtype), weights if losses is None else weights.to(losses.dtype)

    def extra_state(self) -> dict:
        return {"generator": self.generator.state()}

    def load_extra_state(self, state: dict) -> None:
        if "generator" in state:
            self.generator.load(state["generator"])
