"""Bound-constrained quadratic programs on K x K Gram matrices (UPGrad, docs/weighting.md#upgrad).

* :func:`nonnegative_qp` -- exact active-set solver of ``min_{s >= 0} 1/2 s^T Q s + c^T s``;
* :func:`min_quadratic_above` -- ``argmin_v v^T M v`` subject to ``v >= lower`` (UPGrad's QP).

K (the number of tasks) is tiny, so everything is float64 on the CPU: the active set branches on
values, which would force a host sync per iteration on an accelerator; callers move the K x K
matrix to the host once per step instead. The Gram matrix itself comes from
:func:`okd.weighting.solvers.gram`; the simplex solvers (MGDA, CAGrad) live in that module too.
"""
from __future__ import annotations

import torch
from torch import Tensor


def nonnegative_qp(q: Tensor, c: Tensor, tol: float = 1e-12, max_iter: int | None = None) -> Tensor:
    """Solve ``min_{s >= 0} 1/2 s^T Q s + c^T s`` for a symmetric positive semi-definite Q.

    Lawson & Hanson's NNLS active-set method ("Solving Least Squares Problems", 1974, ch. 23),
    written on the normal equations: with ``Q = A^T A`` and ``c = A^T b`` it is NNLS on
    ``||A s + b||^2``, but only Q and c are needed. It terminates in finitely many steps with the
    exact KKT point ``s >= 0, w = -(Q s + c) <= 0, s_k w_k = 0``. The passive sub-systems are solved
    with a pseudo-inverse so that a singular Q (parallel gradients, ``reg_eps = 0``) is allowed.

    Args:
        q: (K, K) symmetric PSD matrix.
        c: (K,) linear term.
        tol: relative tolerance on the dual variable ``w`` (scaled by ``max(|Q|, |c|)``).
        max_iter: cap on the outer iterations (default ``3 K``, the usual NNLS bound).

    Returns:
        (K,) float64 tensor on the CPU.
    """
    q, c = _check_qp(q, c)
    k = c.shape[0]
    max_iter = 3 * k if max_iter is None else max_iter
    scale = max(float(q.abs().max()), float(c.abs().max()), 1e-300)
    eps = tol * scale
    x = torch.zeros(k, dtype=torch.float64)
    passive = torch.zeros(k, dtype=torch.bool)
    for _ in range(max_iter):
        dual = -(q @ x + c)  # = minus the gradient: > 0 means increasing s_j lowers the objective
        candidates = (~passive) & (dual > eps)
        if not bool(candidates.any()):
            break
        passive[int(torch.where(candidates, dual, -torch.inf).argmax())] = True
        x, passive = _inner_loop(q, c, x, passive, eps, max_iter)
    return x


def _inner_loop(q: Tensor, c: Tensor, x: Tensor, passive: Tensor, eps: float, max_iter: int):
    """Lawson-Hanson inner loop: move towards the unconstrained optimum on the passive set,
    dropping variables that would turn negative, until that optimum is feasible."""
    for _ in range(max_iter):
        z = _passive_solution(q, c, passive)
        if bool((z[passive] > eps).all()):
            return z, passive
        blocking = passive & (z <= eps)
        # x > eps >= z on the blocking set, except a just-added x = 0: clamp keeps 0/0 out.
        ratio = x[blocking] / (x[blocking] - z[blocking]).clamp_min(1e-300)
        x = x + ratio.min() * (z - x)
        passive = passive & (x > eps)
        x = torch.where(passive, x, torch.zeros_like(x))
    return _passive_solution(q, c, passive).clamp_min(0.0), passive


def _passive_solution(q: Tensor, c: Tensor, passive: Tensor) -> Tensor:
    """Unconstrained minimiser over the passive variables (the others fixed at 0)."""
    z = torch.zeros_like(c)
    idx = passive.nonzero().flatten()
    if idx.numel():
        z[idx] = -torch.linalg.pinv(q[idx][:, idx], hermitian=True) @ c[idx]
    return z


def min_quadratic_above(m: Tensor, lower: Tensor, tol: float = 1e-12) -> Tensor:
    """``argmin_v v^T M v`` subject to ``v >= lower`` (elementwise), M symmetric PSD.

    With ``v = lower + s, s >= 0`` the objective is ``s^T M s + 2 (M lower)^T s + const``, i.e.
    :func:`nonnegative_qp` with ``Q = M`` and ``c = M lower`` (the substitution of docs/weighting.md#upgrad).
    Returns a float64 CPU tensor.
    """
    m, lower = _check_qp(m, lower)
    return lower + nonnegative_qp(m, m @ lower, tol=tol)


def _check_qp(q: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    if q.dim() != 2 or q.shape[0] != q.shape[1]:
        raise ValueError(f"the quadratic term must be a square matrix, got shape {tuple(q.shape)}")
    if c.shape != (q.shape[0],):
        raise ValueError(
            f"the vector must have shape ({q.shape[0]},) to match the matrix, got {tuple(c.shape)}"
        )
    q = q.detach().to("cpu", torch.float64)
    return 0.5 * (q + q.T), c.detach().to("cpu", torch.float64)
