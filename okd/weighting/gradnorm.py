"""GradNorm (docs/weighting.md#gradnorm).

Chen, Badrinarayanan, Lee, Rabinovich, "GradNorm: Gradient Normalization for Adaptive Loss
Balancing in Deep Multitask Networks", ICML 2018, Eqs. (1)-(2) and Algorithm 1.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from okd.weighting.arguments import is_number, require
from okd.weighting.base import BoundModel, LossWeighting, scaled, unscaled

# Keeps r finite if a loss is exactly 0 (a NaN in w would poison the network's objective).
_EPS = 1e-12


class GradNorm(LossWeighting):
    """Learn loss weights w so that every task's gradient norm at W trains at a common rate.

    Chen et al., ICML 2018, Eqs. (1)-(2) and Algorithm 1: w gets only grad_w L_grad, with
    L_grad = sum_k |w_k ||grad_W L_k|| - const(mean_j G_j r_k^alpha)| on the last shared layer W;
    the network gets sum_k w_k L_k; w is renormalised to sum K after every step; L_k(0) is the
    first step's loss (docs/weighting.md#gradnorm).

    Args:
        alpha: restoring-force strength, >= 0 (1.5: the paper's NYUv2 value, LibMTL's default).
        lr: learning rate of w's own parameter group (0.025: this framework's choice, not
            published); ``None`` leaves the optimizer's default.
    """

    def __init__(self, alpha: float = 1.5, lr: float | None = 0.025) -> None:
        super().__init__()
        require(is_number(alpha) and alpha >= 0, "GradNorm", "alpha", "a finite number >= 0", alpha)
        require(lr is None or (is_number(lr) and lr > 0),
                "GradNorm", "lr", "a finite number > 0 or None", lr)
        self.alpha = float(alpha)
        self.lr = None if lr is None else float(lr)
        self._has_initial = False

    # -- set-up --------------------------------------------------------------------------------
    def bind(self, bound: BoundModel) -> None:
        if not bound.last_shared_parameters:
            raise ValueError(
                "GradNorm: bound.last_shared_parameters is empty; GradNorm needs the last shared layer W"
            )
        super().bind(bound)

    def setup(self, num_tasks: int) -> None:
        self.task_weights = nn.Parameter(torch.ones(num_tasks))
        self.register_buffer("initial_losses", torch.ones(num_tasks))

    def param_groups(self) -> list[dict]:
        # Own group: own lr, and no weight decay (w is renormalised to sum K anyway).
        group: dict = {"params": [self.task_weights], "weight_decay": 0.0}
        if self.lr is not None:
            group["lr"] = self.lr
        return [group]

    # -- per step ------------------------------------------------------------------------------
    def weights(self, losses: Tensor) -> Tensor:
        # Detached: the network objective must not send gradient into w.
        return self.task_weights.detach().clone()

    def backward(self, losses, extra_loss=None, representation=None, loss_scale=None):
        detached = losses.detach()
        if not self._has_initial:
            self.initial_losses.copy_(detached)
            self._has_initial = True
        norms = self.shared_grad_norms(losses, loss_scale)
        # reaches w only (norms are detached); S L_grad so that w.grad is scaled like the network's
        scaled(self.gradnorm_loss(norms, detached), loss_scale).backward()
        # the network's objective sum_k w_k L_k (+ extra loss), as every loss weighting
        return super().backward(losses, extra_loss, representation, loss_scale)

    def shared_grad_norms(self, losses: Tensor, loss_scale: Tensor | None = None) -> Tensor:
        """(K,) ||grad_W L_k||_2 over all tensors of W, detached, on the losses' device.

        With ``loss_scale`` S the gradients are those of S L_k, divided by S before the norm.
        """
        last_shared = self.bound.last_shared_parameters
        losses = scaled(losses, loss_scale)
        rows = []
        for k in range(losses.shape[0]):
            grads = torch.autograd.grad(losses[k], last_shared, retain_graph=True, allow_unused=True)
            # A task whose loss does not reach W (allow_unused) has a zero gradient there.
            rows.append(torch.cat([(g if g is not None else torch.zeros_like(p)).float().reshape(-1)
                                   for g, p in zip(grads, last_shared)]))
        # whole-batch gradients under DDP (the norm of an average is not the average of norms)
        return unscaled(self.bound.reduce(torch.stack(rows)), loss_scale).norm(dim=1)

    def gradnorm_loss(self, norms: Tensor, losses: Tensor) -> Tensor:
        """L_grad of Eq. (2), a function of w only (norms and losses are detached)."""
        w = self.task_weights
        grad_norms = w.abs() * norms  # G_k = ||grad_W (w_k L_k)||
        loss_ratio = losses.float() / self.initial_losses.float().clamp_min(_EPS)
        inverse_rate = loss_ratio / loss_ratio.mean().clamp_min(_EPS)
        target = (grad_norms.mean() * inverse_rate.pow(self.alpha)).detach()
        return (grad_norms - target).abs().sum()

    def after_step(self, losses, recompute_losses=None) -> None:
        """Renormalise w to sum K (Algorithm 1)."""
        with torch.no_grad():
            self.task_weights.mul_(self.num_tasks / self.task_weights.sum())

    # -- state ---------------------------------------------------------------------------------
    def extra_state(self) -> dict:
        return {"has_initial": self._has_initial}

    def load_extra_state(self, state: dict) -> None:
        self._has_initial = bool(state.get("has_initial", False))
