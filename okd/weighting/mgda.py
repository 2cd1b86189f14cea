"""MGDA and MGDA-UB (docs/weighting.md#mgda).

Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018,
arXiv 1810.04650. Official code: isl-org/MultiObjectiveOptimization.
"""
from __future__ import annotations

from torch import Tensor

from okd.weighting.base import (
    GradientWeighting,
    finite_or_zero,
    scaled,
    scaled_direction,
    unscaled,
)
from okd.weighting.gradtools import (
    accumulate_heads,
    backward_through_representation,
    representation_gradients,
    require_representation,
    task_gradients,
    weighted_sum,
    write_flat_grad,
)
from okd.weighting.solvers import gram, min_norm_element

NORMALIZATIONS = ("none", "l2", "loss", "loss+")
APPLY = ("original", "libmtl", "nashmtl")
REP_GRAMS = ("flatten", "batch_sum")


class MGDA(GradientWeighting):
    """Multiple-gradient descent: the minimum-norm element of the convex hull of the gradients.

    Sener & Koltun 2018, Eq. (3) / Algorithm 2: with normalised gradients g^_k = g_k / n_k,

        w = argmin_{w >= 0, sum_k w_k = 1} || sum_k w_k g^_k ||^2,

    solved on the K x K Gram matrix only (:func:`okd.weighting.solvers.min_norm_element`, float64
    on the CPU: one K x K host transfer per step). MGDA-UB (Section 3.3, Eq. (10)) replaces g_k
    by z_k = dL_k/dZ, the gradient at the shared representation Z (``use_representation``).

    Normalisation n_k (Section 3.2 calls it optional; the official code offers these):
    ``none`` 1, ``l2`` ||g_k||, ``loss`` l_k, ``loss+`` l_k ||g_k|| (eps added to n_k).

    How the weights are applied (``apply``):

    * ``original`` (paper, official code): backpropagate sum_k w_k L_k on the raw losses, so the
      shared update is sum_k w_k g_k **and every head k gets w_k dL_k/d theta_k**. The
      normalisation only changes w. Weights sum to 1 (scale: 1/K of EW's sum for equal w).
    * ``libmtl`` (LibMTL): the shared update is sum_k w_k g^_k (normalised gradients; on the
      representation path LibMTL uses the raw z_k, so there it is sum_k w_k z_k); heads get their
      raw gradient.
    * ``nashmtl`` (the Nash-MTL repo's copy): like ``original`` with w multiplied by K (EW scale).

    The returned weights are the coefficients on the raw gradients: w, w / n (``libmtl`` on
    parameters) or K w.

    Cost: K backward passes (through the heads only with ``use_representation``), a K x K solve.

    Loss scaling (fp16): g_k / z_k are taken from S L_k and divided by S before the Gram matrix;
    heads get S w_k dL_k/d theta_k, the shared parameters (or Z) S times the combination. An
    overflow step solves on a zero Gram matrix (finite weights, no state) and writes NaN.

    Args:
        normalization: ``none`` (paper's algorithm, LibMTL default), ``l2``, ``loss``,
            ``loss+`` (the official sample config, used with MGDA-UB).
        apply: ``original`` (default, paper), ``libmtl`` or ``nashmtl`` (see above).
        use_representation: MGDA-UB; the trainer then passes Z to :meth:`backward`.
        rep_gram: MGDA-UB's Gram: ``flatten`` (official: z_k flattened over batch x features) or
            ``batch_sum`` (LibMTL: z_k summed over the batch first).
        solver: ``pgd`` (official ``find_min_norm_element``) or ``frank_wolfe`` (Algorithm 2).
        exact_pair: exact end points of the two-vector solver (True, default) or the reference
            code's 0.999 / 0.001 clamps (False).
        max_iter: solver iteration cap (reference 250).
        tol: solver tolerance on the L1 change of w (reference 1e-5).
        eps: added to every n_k (the paper's normalisations divide by it).
    """

    def __init__(
        self,
        normalization: str = "none",
        apply: str = "original",
        use_representation: bool = False,
        rep_gram: str = "flatten",
        solver: str = "pgd",
        exact_pair: bool = True,
        max_iter: int = 250,
        tol: float = 1e-5,
        eps: float = 1e-8,
    ) -> None:
        super().__init__()
        _choice("normalization", normalization, NORMALIZATIONS)
        _choice("apply", apply, APPLY)
        _choice("rep_gram", rep_gram, REP_GRAMS)
        _choice("solver", solver, ("pgd", "frank_wolfe"))
        if not (isinstance(max_iter, int) and max_iter >= 1):
            raise ValueError(f"MGDA: max_iter must be an int >= 1, got {max_iter!r}")
        for name, value in (("tol", tol), ("eps", eps)):
            if not (isinstance(value, (int, float)) and value > 0):
                raise ValueError(f"MGDA: {name} must be a number > 0, got {value!r}")
        self.normalization = normalization
        self.apply = apply
        self.use_representation = bool(use_representation)
        self.needs_representation = self.use_representation
        self.rep_gram = rep_gram
        self.solver = solver
        self.exact_pair = bool(exact_pair)
        self.max_iter = max_iter
        self.tol = float(tol)
        self.eps = float(eps)

    # -- the rule ---------------------------------------------------------------------------
    def norms(self, matrix: Tensor, losses: Tensor) -> Tensor:
        """n_k of the chosen normalisation (float64, on M's device), eps included."""
        g_norm = matrix.diagonal().clamp_min(0).sqrt()
        losses = losses.detach().to(matrix)
        if self.normalization == "none":
            n = g_norm.new_ones(g_norm.shape)
        elif self.normalization == "l2":
            n = g_norm
        elif self.normalization == "loss":
            n = losses
        else:
            n = losses * g_norm
        return n + self.eps if self.normalization != "none" else n

    def solve(self, matrix: Tensor, losses: Tensor) -> tuple[Tensor, Tensor]:
        """(w, n): the simplex weights for the normalised Gram M^ = M / (n n^T), and n."""
        matrix = finite_or_zero(matrix)  # an overflow step: solve on zeros instead of raising
        n = self.norms(matrix, losses)
        normalized = finite_or_zero(matrix / (n[:, None] * n[None, :]))  # (non-finite losses)
        w = min_norm_element(normalized, self.solver, self.max_iter, self.tol, self.exact_pair)
        return w.to(matrix), n

    def raw_weights(self, w: Tensor, n: Tensor, on_representation: bool) -> Tensor:
        """Coefficients on the raw gradients for the chosen ``apply``."""
        if self.apply == "nashmtl":
            return w * w.numel()
        if self.apply == "libmtl" and not on_representation:
            return w / n
        return w

    def combine(self, grads: Tensor, losses: Tensor) -> tuple[Tensor, Tensor]:
        w, n = self.solve(gram(grads), losses)
        weights = self.raw_weights(w, n, on_representation=False)
        return weighted_sum(weights, grads), weights.to(grads.dtype)

    # -- backward ---------------------------------------------------------------------------
    @property
    def weights_heads(self) -> bool:
        """``original`` and ``nashmtl`` backpropagate sum_k w_k L_k: heads are weighted too."""
        return self.apply in ("original", "nashmtl")

    def backward(self, losses, extra_loss=None, representation=None, loss_scale=None):
        if not self.use_representation and not self.weights_heads:
            return super().backward(losses, extra_loss, representation, loss_scale)
        if self.use_representation:
            require_representation(representation, "MGDA-UB")
        if extra_loss is not None:
            # shares the graph with the task losses
            scaled(extra_loss, loss_scale).backward(retain_graph=True)
        bound = self.bound
        if self.use_representation:
            return self._backward_representation(losses, representation, loss_scale)
        grads, heads = task_gradients(scaled(losses, loss_scale), bound.shared_parameters,
                                      bound.task_parameters)
        grads = unscaled(bound.reduce(grads), loss_scale)
        direction, weights = self.combine(grads, losses.detach())
        write_flat_grad(bound.shared_parameters, scaled_direction(direction, grads, loss_scale))
        accumulate_heads(bound.task_parameters, heads, weights)  # heads: already S-scaled
        return weights.detach()

    def _backward_representation(
        self, losses: Tensor, representation: Tensor, loss_scale: Tensor | None = None
    ) -> Tensor:
        """MGDA-UB: Gram of z_k, solve, one backward of sum_k w_k z_k through the encoder."""
        task_params = self.bound.task_parameters
        z, heads = representation_gradients(scaled(losses, loss_scale), representation, task_params)
        z = unscaled(z, loss_scale)
        k = z.shape[0]
        rows = z.sum(dim=1) if self.rep_gram == "batch_sum" else z
        w, n = self.solve(gram(rows.reshape(k, -1)), losses.detach())
        weights = self.raw_weights(w, n, on_representation=True)
        grad = scaled_direction(weighted_sum(weights, z), z, loss_scale)
        backward_through_representation(representation, grad)
        accumulate_heads(task_params, heads, weights if self.weights_heads else None)
        return weights.to(losses.dtype).detach()


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"MGDA: {name} must be one of {allowed}, got {value!r}")
