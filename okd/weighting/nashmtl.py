"""Nash-MTL (Navon et al., ICML 2022): weights from the Nash bargaining solution (docs/weighting.md#nashmtl)."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from okd.weighting.arguments import require
from okd.weighting.base import GradientWeighting, backward_extra_loss, scaled, scaled_direction, unscaled
from okd.weighting.gradtools import accumulate_grads, flatten_grads, weighted_sum, write_flat_grad
from okd.weighting.solvers import gram

#: an iterate whose optimality residual max_k |alpha_k (M alpha)_k - 1| is above this is rejected
#: (the reference's CCP stops at a residual of 1e-3 in its own units).
ACCEPT_RESIDUAL = 1e-3


class NashMTL(GradientWeighting):
    """Nash-MTL: d = G^T alpha with alpha the bargaining solution, alpha_k (g_k . d) = 1.

    Navon et al., "Multi-Task Learning as a Bargaining Game", ICML 2022, arXiv 2202.01017, Sec. 3.
    alpha minimises ``1/2 a^T M a - sum_k log a_k`` (damped Newton, :func:`solve_nash_system`,
    warm-started; the previous alpha is kept when the solve fails). The objective is
    sum_k alpha_k L_k: heads alpha-weighted, the shared direction clipped to ``max_norm``; every
    ``update_weights_every`` steps alpha is re-solved, in between reused with one backward.
    Logged weights: alpha (docs/weighting.md#nashmtl).
    """

    def __init__(
        self,
        update_weights_every: int = 1,
        optim_niter: int = 20,
        max_norm: float | None = 1.0,
        tol: float = 1e-6,
    ) -> None:
        super().__init__()
        require(update_weights_every >= 1,
                "NashMTL", "update_weights_every", ">= 1", update_weights_every)
        require(optim_niter >= 1, "NashMTL", "optim_niter", ">= 1", optim_niter)
        require(max_norm is None or max_norm > 0,
                "NashMTL", "max_norm", "> 0 or None (no clipping)", max_norm)
        require(0 < tol < ACCEPT_RESIDUAL, "NashMTL", "tol", f"in (0, {ACCEPT_RESIDUAL})", tol)
        self.update_weights_every = update_weights_every
        self.optim_niter = optim_niter
        self.max_norm = max_norm
        self.tol = tol
        self.step = 0
        self.last_solve_ok = True
        self.last_gram_finite = True

    def setup(self, num_tasks: int) -> None:
        # Warm start of the solver = the alpha in use (float64, survives checkpoints).
        self.register_buffer("alpha", torch.ones(num_tasks, dtype=torch.float64))

    # -- the solve ---------------------------------------------------------------------------
    def solve(self, gram_matrix: Tensor) -> Tensor:
        """alpha for the Gram matrix M (updates the warm start when the solve succeeds)."""
        m = gram_matrix.detach().to("cpu", torch.float64)  # the one host transfer of the step
        self.last_gram_finite = bool(torch.isfinite(m).all())
        alpha, ok = solve_nash_system(m, self.alpha, self.optim_niter, self.tol)
        self.last_solve_ok = ok
        if ok:
            self.alpha.copy_(alpha)
        return self.alpha.clone()

    def combine(self, grads: Tensor, losses: Tensor) -> tuple[Tensor, Tensor]:
        """d = clip(G^T alpha, max_norm); weights = alpha."""
        alpha = self.solve(gram(grads)).to(grads.device)
        return self.clip(weighted_sum(alpha, grads)), alpha

    def clip(self, direction: Tensor) -> Tensor:
        """torch.nn.utils.clip_grad_norm_'s rule on the flat direction, without a host sync."""
        if self.max_norm is None:
            return direction
        coef = (self.max_norm / (direction.norm() + 1e-6)).clamp(max=1.0)
        return direction * coef

    def head_weights(self, weights: Tensor, losses: Tensor) -> Tensor:
        return weights  # the objective is sum_k alpha_k L_k: heads get alpha_k grad L_k

    # -- backward ----------------------------------------------------------------------------
    def backward(self, losses, extra_loss=None, representation=None, loss_scale=None):
        """Backpropagate ``sum_k alpha_k L_k`` (heads alpha-weighted, shared direction clipped)."""
        if self.step % self.update_weights_every == 0:
            alpha = super().backward(losses, extra_loss, representation, loss_scale)
            # a step whose gradients are not finite (overflow: GradScaler skips it) does not count
            self.step += int(self.last_gram_finite)
            return alpha.to(losses.dtype)
        # reuse step: one backward of sum_k alpha_k L_k with the alpha in use
        backward_extra_loss(extra_loss, loss_scale)
        shared = self.bound.shared_parameters
        heads = self.bound.task_parameters
        alpha = self.alpha.to(losses.device)
        weighted = (alpha.to(losses.dtype) * losses).sum()
        g = torch.autograd.grad(scaled(weighted, loss_scale), shared + heads, allow_unused=True)
        grads = unscaled(flatten_grads(g[: len(shared)], shared), loss_scale)
        accumulate_grads(heads, g[len(shared):])
        self.step += 1
        write_flat_grad(shared, scaled_direction(self.clip(grads), grads, loss_scale))
        return alpha.detach().to(losses.dtype)

    # -- state -------------------------------------------------------------------------------
    def extra_state(self) -> dict:
        return {"step": self.step, "last_solve_ok": self.last_solve_ok}

    def load_extra_state(self, state: dict) -> None:
        self.step = int(state.get("step", 0))
        self.last_solve_ok = bool(state.get("last_solve_ok", True))


def solve_nash_system(
    gram: Tensor, alpha0: Tensor, max_iter: int = 20, tol: float = 1e-6
) -> tuple[Tensor, bool]:
    """Solve ``M a = 1/a``, a > 0: damped Newton on ``f(a) = 1/2 a^T M a - sum log a``.

    Newton step ``s = H^-1 (M a - 1/a)`` with ``H = M + diag(1/a^2)`` (positive definite for
    a > 0 even when M is singular), halved until ``a - t s > 0`` and Armijo's condition hold.
    Stops when ``max_k |a_k (M a)_k - 1| < tol`` (scale-free form of the optimality condition).

    Returns:
        (alpha, ok): float64 CPU alpha and whether it satisfies the system to ``ACCEPT_RESIDUAL``;
        when not ok, alpha is ``alpha0`` unchanged.
    """
    m = gram.detach().to("cpu", torch.float64)
    m = 0.5 * (m + m.T)
    prev = alpha0.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(m).all()) or float(m.diagonal().sum()) <= 0.0:
        return prev, False  # zero or non-finite gradients: no solution (alpha -> infinity)
    a = _rescale(m, torch.where(prev > 0, prev, torch.ones_like(prev)))
    for _ in range(max_iter):
        if _residual(m, a) < tol:
            break
        a = _newton_step(m, a)
    ok = bool(torch.isfinite(a).all()) and _residual(m, a) < ACCEPT_RESIDUAL
    return (a, True) if ok else (prev, False)


def _objective(m: Tensor, a: Tensor) -> float:
    return float(0.5 * a @ m @ a - torch.log(a).sum())


def _residual(m: Tensor, a: Tensor) -> float:
    return float((a * (m @ a) - 1.0).abs().max())


def _rescale(m: Tensor, a: Tensor) -> Tensor:
    """Best point on the ray {t a}: d/dt f(t a) = t a^T M a - K / t = 0."""
    quad = float(a @ m @ a)
    return a * math.sqrt(a.numel() / quad) if quad > 0 else a


def _newton_step(m: Tensor, a: Tensor) -> Tensor:
    grad = m @ a - 1.0 / a
    step = torch.linalg.solve(m + torch.diag(1.0 / a**2), grad)
    decrement = float(grad @ step)  # Newton decrement squared, > 0 away from the optimum
    f0, t = _objective(m, a), 1.0
    while t > 1e-12:
        cand = a - t * step
        if bool((cand > 0).all()) and _objective(m, cand) <= f0 - 0.25 * t * decrement:
            return cand
        t *= 0.5
    return a
