"""Small solvers on K x K Gram matrices, shared by the gradient-weighting methods.

Every function here works on the Gram matrix M = G G^T of the K per-task gradients (docs/weighting.md#conventions),
never on G itself, so the cost is independent of the number of parameters. The iterative solvers
run on a float64 CPU copy of M (numpy inside): moving a K x K matrix to the host is one tiny
transfer per step, and the K-sized inner loops are far cheaper on the host than as K-sized kernel
launches on an accelerator. Inputs are torch tensors on any device; outputs are float64 tensors on
the CPU (callers move the K weights back with ``.to(device)``).

Contents:

* :func:`gram` -- M = G G^T in float64.
* :func:`project_to_simplex` -- Euclidean projection onto {w >= 0, sum w = 1}.
* :func:`min_norm_2` -- the closed-form minimum-norm point on a segment (MGDA's two-task solver).
* :func:`min_norm_element` -- argmin over the simplex of w^T M w (MGDA; Sener & Koltun 2018).
* :func:`minimize_on_simplex` -- a general smooth convex problem on the simplex (CAGrad's dual).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "gram",
    "project_to_simplex",
    "min_norm_2",
    "min_norm_element",
    "minimize_on_simplex",
    "normalized_gram",
]

#: Candidate steps to the simplex boundary below this are ignored (MGDA reference code).
_BOUNDARY_EPS = 1e-7


#: Columns per float64 chunk in :func:`gram` (K x 2^20 doubles = 24 MiB for K = 3).
GRAM_CHUNK = 1 << 20


def gram(grads: Tensor, chunk: int = GRAM_CHUNK) -> Tensor:
    """M = G G^T in float64 for G of shape (K, P): the only thing Gram-weighting methods need.

    Accumulated over column chunks, so the float64 copy of G never exceeds K x ``chunk`` entries
    (a full float64 copy of a ResNet-50 encoder's K = 3 gradients would be 600 MB), and never in
    TF32 or half precision whatever the matmul settings. Stays on G's device.
    """
    if grads.dim() != 2:
        raise ValueError(f"gram: grads must be a (K, P) matrix, got shape {tuple(grads.shape)}")
    if chunk < 1:
        raise ValueError(f"gram: chunk must be >= 1, got {chunk!r}")
    g = grads.detach()
    out = torch.zeros(g.shape[0], g.shape[0], dtype=torch.float64, device=g.device)
    for part in torch.split(g, chunk, dim=1):
        part = part.to(torch.float64)
        out += part @ part.T
    return out


def _as_square(matrix: Tensor | np.ndarray, name: str) -> np.ndarray:
    if isinstance(matrix, Tensor):
        matrix = matrix.detach().to(device="cpu", dtype=torch.float64).numpy()
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] < 1:
        raise ValueError(f"{name}: expected a non-empty square (K, K) matrix, got shape {m.shape}")
    if not np.all(np.isfinite(m)):
        raise ValueError(f"{name}: the matrix has non-finite entries: {m.tolist()}")
    return m


def normalized_gram(matrix: Tensor | np.ndarray) -> tuple[np.ndarray, float]:
    """(M / s, s) with s = max_k M_kk, the largest squared gradient norm (s = 0: M is returned).

    The argmin of MGDA's and CAGrad's problems does not change when M is multiplied by a
    positive number, so solving on M / s makes the tolerances independent of the gradient scale
    (gradients of norm 1e-3 would otherwise meet a 1e-5 tolerance after one step).
    """
    m = _as_square(matrix, "normalized_gram")
    s = float(np.max(np.diag(m)))
    return (m / s if s > 0 else m), s


# -- simplex ---------------------------------------------------------------------------------
def _project_np(v: np.ndarray) -> np.ndarray:
    # Sort-based projection (Held, Wolfe & Crowder 1974; Wang & Carreira-Perpinan 2013,
    # arXiv 1309.1541, Algorithm 1): w = max(v - theta, 0) with theta chosen so that sum w = 1.
    u = np.sort(v)[::-1]
    css = np.cumsum(u) - 1.0
    idx = np.arange(1, v.size + 1)
    rho = np.nonzero(u - css / idx > 0)[0][-1]
    theta = css[rho] / (rho + 1.0)
    return np.maximum(v - theta, 0.0)


def project_to_simplex(v: Tensor) -> Tensor:
    """Euclidean projection of a vector onto the probability simplex {w >= 0, sum_k w_k = 1}.

    Held, Wolfe & Crowder (1974); Wang & Carreira-Perpinan, arXiv 1309.1541, Algorithm 1.
    Returns float64 on the CPU.
    """
    if v.dim() != 1 or v.numel() < 1:
        raise ValueError(f"project_to_simplex: v must be a non-empty vector, got shape {tuple(v.shape)}")
    arr = v.detach().to(device="cpu", dtype=torch.float64).numpy()
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"project_to_simplex: v has non-finite entries: {arr.tolist()}")
    return torch.from_numpy(_project_np(arr).copy())


# -- minimum-norm point of a convex hull (MGDA) ------------------------------------------------
def min_norm_2(v11: float, v12: float, v22: float, exact: bool = True) -> tuple[float, float]:
    """Minimum-norm point of the segment between two vectors, from their inner products.

    Sener & Koltun 2018, Algorithm 1: gamma = argmin_{gamma in [0,1]} ||gamma v1 + (1-gamma) v2||^2
    = (v22 - v12) / (v11 + v22 - 2 v12), clipped to [0, 1]. Returns (gamma, squared norm).

    Args:
        v11, v12, v22: <v1,v1>, <v1,v2>, <v2,v2>.
        exact: True gives the exact bounds 1 and 0 when the minimum is at an end point; False
            reproduces the reference code (MultiObjectiveOptimization, LibMTL, Nash-MTL repo),
            which returns 0.999 and 0.001 there (with the end point's cost).
    """
    if v12 >= v11:  # v1 is (one of) the shortest and the segment points away from it.
        return (1.0 if exact else 0.999), v11
    if v12 >= v22:
        return (0.0 if exact else 0.001), v22
    gamma = (v22 - v12) / (v11 + v22 - 2.0 * v12)
    return gamma, v22 + gamma * (v12 - v22)


def _best_pair(m: np.ndarray, exact: bool) -> np.ndarray:
    """Start point of MGDA's solver: the best minimum-norm point over all pairs of tasks."""
    k = m.shape[0]
    w = np.zeros(k)
    if k == 1:
        w[0] = 1.0
        return w
    best = (np.inf, 0, 1, 1.0)
    for i in range(k):
        for j in range(i + 1, k):
            gamma, cost = min_norm_2(m[i, i], m[i, j], m[j, j], exact)
            if cost < best[0]:
                best = (cost, i, j, gamma)
    _, i, j, gamma = best
    w[i], w[j] = gamma, 1.0 - gamma
    return w


def _boundary_point(w: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """Move from w along the direction projected onto sum(w) = 0 until a coordinate hits 0 or 1
    (the largest such step, candidates below 1e-7 ignored; step 1 when there is none), then
    project back onto the simplex (Sener & Koltun's reference ``_next_point``)."""
    proj = direction - direction.mean()
    neg, pos = proj < 0, proj > 0
    steps = np.concatenate([-w[neg] / proj[neg], (1.0 - w[pos]) / proj[pos]])
    steps = steps[steps > _BOUNDARY_EPS]
    t = float(steps.min()) if steps.size else 1.0
    return _project_np(w + t * proj)


def _pgd(m: np.ndarray, w: np.ndarray, max_iter: int, tol: float, exact: bool) -> np.ndarray:
    for _ in range(max_iter):
        new = _boundary_point(w, -(m @ w))
        gamma, _ = min_norm_2(w @ m @ w, w @ m @ new, new @ m @ new, exact)
        nxt = gamma * w + (1.0 - gamma) * new
        done = np.abs(nxt - w).sum() < tol
        w = nxt
        if done:
            break
    return w


def _frank_wolfe(m: np.ndarray, w: np.ndarray, max_iter: int, tol: float, exact: bool) -> np.ndarray:
    for _ in range(max_iter):
        mw = m @ w
        t = int(np.argmin(mw))  # the vertex e_t with the most negative directional derivative
        gamma, _ = min_norm_2(w @ mw, mw[t], m[t, t], exact)
        nxt = gamma * w
        nxt[t] += 1.0 - gamma
        done = np.abs(nxt - w).sum() < tol
        w = nxt
        if done:
            break
    return w


def min_norm_element(
    matrix: Tensor,
    method: str = "pgd",
    max_iter: int = 250,
    tol: float = 1e-5,
    exact: bool = True,
) -> Tensor:
    """w = argmin_{w in simplex} w^T M w: the weights of the minimum-norm point of conv{g_k}.

    Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018, Eq. (3)
    and Algorithm 2 (the Frank-Wolfe solver); ``method="pgd"`` is the projected-gradient solver
    of the authors' released ``MinNormSolver.find_min_norm_element`` (also in LibMTL and the
    Nash-MTL repo); ``"frank_wolfe"`` is ``find_min_norm_element_FW``. Both start from the best
    pair (exact for K = 2) and, at every iteration, do an exact line search with
    :func:`min_norm_2`; they stop when ||w_new - w||_1 < tol or after max_iter iterations (the
    released code never increments its counter; here the cap holds).

    The problem is solved on M / max_k M_kk (same argmin, scale-free tolerances).

    Args:
        matrix: the (K, K) Gram matrix (any device; read once in float64 on the CPU).
        method: "pgd" (reference code) or "frank_wolfe" (paper's Algorithm 2).
        max_iter: iteration cap (reference 250).
        tol: stopping tolerance on the L1 change of w (reference 1e-5).
        exact: exact segment bounds (True) or the reference's 0.999/0.001 clamps (False).

    Returns:
        (K,) float64 CPU weights on the simplex.
    """
    if method not in ("pgd", "frank_wolfe"):
        raise ValueError(f"min_norm_element: method must be 'pgd' or 'frank_wolfe', got {method!r}")
    _check_iter(max_iter, tol, "min_norm_element")
    m, scale = normalized_gram(matrix)
    k = m.shape[0]
    if scale == 0.0:  # every gradient is zero: any w is optimal, keep the symmetric one.
        return torch.full((k,), 1.0 / k, dtype=torch.float64)
    w = _best_pair(m, exact)
    if k >= 3:
        w = (_pgd if method == "pgd" else _frank_wolfe)(m, w, max_iter, tol, exact)
    return torch.from_numpy(w.copy())


# -- general smooth convex problems on the simplex (CAGrad) -----------------------------------
def minimize_on_simplex(
    fun: Callable[[np.ndarray], float],
    grad: Callable[[np.ndarray], np.ndarray],
    x0: np.ndarray,
    max_iter: int = 1000,
    tol: float = 1e-12,
) -> np.ndarray:
    """argmin over the simplex of a smooth convex function, by spectral projected gradient.

    Birgin, Martinez & Raydan, "Nonmonotone spectral projected gradient methods on convex sets",
    SIAM J. Optim. 10(4), 2000 (monotone variant): the step x <- x + lam (P(x - a grad) - x), with
    the Barzilai-Borwein length a = s.s / s.y and an Armijo backtracking on lam. It stops when
    ||P(x - grad) - x||_inf < tol (a first-order optimality measure, zero exactly at the minimum)
    or after max_iter iterations. Plain numpy float64; meant for K-sized problems.

    Args:
        fun, grad: the objective and its gradient, on float64 vectors of length K.
        x0: start point (projected onto the simplex first).
        max_iter: iteration cap.
        tol: optimality tolerance (scale it with the objective).
    """
    _check_iter(max_iter, tol, "minimize_on_simplex")
    x = _project_np(np.asarray(x0, dtype=np.float64))
    f, g = fun(x), grad(x)
    alpha = 1.0
    for _ in range(max_iter):
        if np.max(np.abs(_project_np(x - g) - x)) < tol:
            break
        d = _project_np(x - alpha * g) - x
        slope = float(g @ d)
        if slope >= 0.0:  # numerically at the minimum
            break
        lam = 1.0
        while True:
            x_new = x + lam * d
            f_new = fun(x_new)
            if f_new <= f + 1e-4 * lam * slope or lam < 1e-12:
                break
            lam *= 0.5
        g_new = grad(x_new)
        s, y = x_new - x, g_new - g
        sy = float(s @ y)
        alpha = float(np.clip(s @ s / sy, 1e-10, 1e10)) if sy > 0 else 1e10
        x, f, g = x_new, f_new, g_new
    return x


def _check_iter(max_iter: int, tol: float, name: str) -> None:
    if not (isinstance(max_iter, int) and max_iter >= 1):
        raise ValueError(f"{name}: max_iter must be an int >= 1, got {max_iter!r}")
    if not (isinstance(tol, (int, float)) and tol > 0):
        raise ValueError(f"{name}: tol must be a number > 0, got {tol!r}")
