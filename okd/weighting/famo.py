"""FAMO (Liu et al., NeurIPS 2023): adaptive task weights from the losses only (docs/weighting.md#famo)."""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

from okd.weighting.arguments import require
from okd.weighting.base import LossWeighting


class FAMO(LossWeighting):
    """FAMO: softmax task logits xi, updated after each step from the change of the log-losses.

    Liu, Feng, Stone, Liu, NeurIPS 2023, arXiv 2306.03792, Sec. 3 and Algorithm 1 (official code
    Cranial-XIX/FAMO). Step: backpropagate sum_k z_k log D_k / c, z = softmax(xi),
    D_k = max(L_k - l*_k, 0) + eps, c = sum_k z_k / D_k (effective weights on grad L_k, heads
    included, summing to 1). :meth:`after_step`: one Adam step on xi from the log-loss decrease on
    the same batch (``recompute_losses``; without it, the next step's losses). No clipping
    (docs/weighting.md#famo).
    """

    def __init__(
        self,
        w_lr: float = 0.025,
        gamma: float = 1e-3,
        min_losses: Sequence[float] | None = None,
        eps: float = 1e-8,
        betas: Sequence[float] = (0.9, 0.999),
        adam_eps: float = 1e-8,
    ) -> None:
        super().__init__()
        require(w_lr > 0, "FAMO", "w_lr", "> 0", w_lr)
        require(gamma >= 0, "FAMO", "gamma", ">= 0", gamma)
        require(eps > 0, "FAMO", "eps", "> 0", eps)
        require(len(betas) == 2 and all(0 <= b < 1 for b in betas),
                "FAMO", "betas", "two numbers in [0, 1)", betas)
        require(adam_eps > 0, "FAMO", "adam_eps", "> 0", adam_eps)
        self.w_lr = w_lr
        self.gamma = gamma
        self.eps = eps
        self.betas = (float(betas[0]), float(betas[1]))
        self.adam_eps = adam_eps
        self._min_losses = None if min_losses is None else [float(v) for v in min_losses]
        self.has_prev = False

    def setup(self, num_tasks: int) -> None:
        min_losses = [0.0] * num_tasks if self._min_losses is None else self._min_losses
        if len(min_losses) != num_tasks:
            raise ValueError(
                f"min_losses must have one value per task ({num_tasks}), got {self._min_losses}"
            )
        self.register_buffer("min_losses", torch.tensor(min_losses, dtype=torch.float32))
        self.register_buffer("xi", torch.zeros(num_tasks))
        self.register_buffer("exp_avg", torch.zeros(num_tasks))
        self.register_buffer("exp_avg_sq", torch.zeros(num_tasks))
        # float64 so that the bias corrections 1 - beta^t are as exact as torch.optim.Adam's.
        self.register_buffer("adam_step", torch.zeros((), dtype=torch.float64))
        self.register_buffer("prev_losses", torch.zeros(num_tasks))

    # -- step --------------------------------------------------------------------------------
    def gap(self, losses: Tensor) -> Tensor:
        """D_k = max(L_k - l*_k, 0) + eps in float32 (the argument of every log)."""
        return (losses.float() - self.min_losses).clamp_min(0.0) + self.eps

    def weights(self, losses: Tensor) -> Tensor:
        """lambda_k = (z_k / D_k) / sum_j (z_j / D_j), the effective weights on grad L_k."""
        ratio = torch.softmax(self.xi, 0) / self.gap(losses.detach())
        return ratio / ratio.sum()

    def objective(self, losses: Tensor) -> tuple[Tensor, Tensor]:
        """The reference's loss ``sum_k z_k log D_k / c``; gradient ``sum_k lambda_k grad L_k``."""
        z = torch.softmax(self.xi, 0)
        d = self.gap(losses)
        c = (z / d.detach()).sum()
        return (z * torch.log(d)).sum() / c, self.weights(losses)

    # -- post-step update --------------------------------------------------------------------
    def after_step(
        self, losses: Tensor, recompute_losses: Callable[[], Tensor] | None = None
    ) -> None:
        losses = losses.detach().float()
        if recompute_losses is not None:
            with torch.no_grad():
                self.update(losses, recompute_losses().detach().float())
        elif self.has_prev:
            self.update(self.prev_losses, losses)  # fallback: next step's losses (class docstring)
        self.prev_losses.copy_(losses)
        self.has_prev = True

    @torch.no_grad()
    def update(self, before: Tensor, after: Tensor) -> None:
        """One Adam step on xi with xi.grad = z * (delta - z . delta) (FAMO's weight update)."""
        delta = torch.log(self.gap(before)) - torch.log(self.gap(after))
        z = torch.softmax(self.xi, 0)
        self.adam(z * (delta - (z * delta).sum()))

    def adam(self, grad: Tensor) -> None:
        """Adam (Kingma & Ba 2015, Alg. 1) with L2 weight decay, as torch.optim.Adam computes it."""
        beta1, beta2 = self.betas
        grad = grad + self.gamma * self.xi
        self.adam_step += 1
        self.exp_avg.mul_(beta1).add_((1 - beta1) * grad)
        self.exp_avg_sq.mul_(beta2).add_((1 - beta2) * grad * grad)
        m_hat = self.exp_avg / (1 - beta1**self.adam_step).float()
        v_hat = self.exp_avg_sq / (1 - beta2**self.adam_step).float()
        self.xi.sub_(self.w_lr * m_hat / (v_hat.sqrt() + self.adam_eps))

    # -- state -------------------------------------------------------------------------------
    def extra_state(self) -> dict:
        return {"has_prev": self.has_prev}

    def load_extra_state(self, state: dict) -> None:
        self.has_prev = bool(state.get("has_prev", False))
