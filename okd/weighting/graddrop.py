"""GradDrop: gradient sign dropout (docs/weighting.md#graddrop).

Chen, Ngiam, Huang, Luong, Kretzschmar, Chai, Anguelov, "Just Pick a Sign: Optimizing Deep
Multitask Models with Gradient Sign Dropout", NeurIPS 2020, arXiv 2010.06808.
"""
from __future__ import annotations

import torch
from torch import Tensor

from okd.weighting.base import GradientWeighting, scaled, scaled_direction, unscaled
from okd.weighting.gradtools import (
    OwnedGenerator,
    accumulate_heads,
    backward_through_representation,
    representation_gradients,
    require_representation,
)

LEVELS = ("representation", "parameters")


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

    Chen et al. 2020, Eqs. (1)-(2), applied to the gradients z_k = dL_k/dA at the shared
    representation A (batch first):

        S_k = sum_batch sign(A) * z_k                           (one value per feature position)
        P   = 0.5 (1 + sum_k S_k / (sum_k |S_k| + eps))          (purity of the positive sign)
        U   ~ Uniform(0, 1), one draw per feature position, shared across the batch
        M_k = [P > U] [S_k > 0] + [P < U] [S_k < 0]
        dL/dA = sum_k (leak + (1 - leak) M_k) z_k,   then A.backward(dL/dA)

    leak = 1 gives plain summation (EW); the scale is EW's sum. Heads get their raw gradient.
    Cost: K backward passes through the heads only, one through the encoder; the masks are
    elementwise on the device, no host sync.

    ``level: parameters`` is the variant of the CAGrad and Auto-Lambda repos
    (docs/weighting.md#graddrop): the same masks on the flattened per-task gradients of the
    shared parameters, with S_k = g_k (no sign(A), no batch) and d = sum_k coef_k g_k (their mean
    times K). It does not need the representation.

    The returned weights are the mean keep coefficient of each task (1 = nothing dropped).

    Randomness: U comes from a ``torch.Generator`` on the activation's device, seeded with
    ``seed`` and saved in :meth:`extra_state`.

    Loss scaling (fp16): z_k (or g_k) are taken from S L_k and divided by S in float32 before the
    sign sums (the eps in the purity is not scale-free); S dL/dA is backpropagated. No state but
    the generator: an overflow step consumes its draw of U and writes NaN.

    Args:
        leak: 0.0 (LibMTL default; the paper's leak is an ablation knob), in [0, 1].
        level: ``representation`` (paper, LibMTL) or ``parameters`` (CAGrad repo variant).
        seed: seed of the method's generator.
        eps: 1e-7 (LibMTL; 1e-8 elsewhere).
    """

    def __init__(self, leak: float = 0.0, level: str = "representation", seed: int = 0,
                 eps: float = 1e-7) -> None:
        super().__init__()
        if not (isinstance(leak, (int, float)) and 0.0 <= leak <= 1.0):
            raise ValueError(f"GradDrop: leak must be a number in [0, 1], got {leak!r}")
        if level not in LEVELS:
            raise ValueError(f"GradDrop: level must be one of {LEVELS}, got {level!r}")
        if not (isinstance(eps, (int, float)) and eps > 0):
            raise ValueError(f"GradDrop: eps must be a number > 0, got {eps!r}")
        self.leak = float(leak)
        self.level = level
        self.needs_representation = level == "representation"
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
        self, representation: Tensor, rep_grads: Tensor, uniform: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """(dL/dA, weights) from A (B, *F) and z (K, B, *F); U (shape F) drawn when not given."""
        z = rep_grads.to(_work_dtype(rep_grads))
        signed = (torch.sign(representation.detach()).to(z) * z).sum(dim=1)  # (K, *F)
        if uniform is None:
            uniform = self._uniform(signed.shape[1:], z.device)
        coeffs = keep_coefficients(signed, uniform.to(signed), self.leak, self.eps)
        grad = (coeffs.unsqueeze(1) * z).sum(dim=0)  # masks broadcast over the batch
        return grad.to(rep_grads.dtype), coeffs.reshape(coeffs.shape[0], -1).mean(dim=1)

    def backward(self, losses, extra_loss=None, representation=None, loss_scale=None):
        if self.level == "parameters":
            return super().backward(losses, extra_loss, representation, loss_scale)
        require_representation(representation, "GradDrop")
        if extra_loss is not None:
            # shares the graph with the task losses
            scaled(extra_loss, loss_scale).backward(retain_graph=True)
        task_params = self.bound.task_parameters
        z, heads = representation_gradients(scaled(losses, loss_scale), representation, task_params)
        z = unscaled(z, loss_scale)
        grad, weights = self.combine_representation(representation, z)
        backward_through_representation(representation, scaled_direction(grad, z, loss_scale))
        accumulate_heads(task_params, heads)  # S dL_k/d theta_k already
        return weights.to(losses.dtype).detach()

    def extra_state(self) -> dict:
        return {"generator": self.generator.state()}

    def load_extra_state(self, state: dict) -> None:
        if "generator" in state:
            self.generator.load(state["generator"])
