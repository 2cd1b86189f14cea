"""The weighting interface: how per-task losses become one backward pass (docs/weighting.md#the-interface).

* :class:`LossWeighting`: a method implements :meth:`LossWeighting.weights` (a (K,) tensor that
  may carry gradient into learnable weights); the base class backpropagates ``sum_k w_k L_k``
  plus any extra loss, once.
* :class:`GradientWeighting`: a method implements :meth:`GradientWeighting.combine` (and, where
  needed, :meth:`~GradientWeighting.combine_representation`, :meth:`~GradientWeighting.head_weights`);
  the base class forms the per-task gradients at the chosen ``level`` from the trainer's single
  forward pass, writes the combined direction and the heads' gradients.

Loss scaling (fp16, docs/weighting.md#fp16-loss-scaling): ``backward(..., loss_scale=S)``; every
``.grad`` written is S times the unscaled one, every decision is taken on gradients divided by S,
and an overflow step writes NaN and updates no state. The helpers below (:func:`scaled`,
:func:`unscaled`, :func:`all_finite`, :func:`keep_if_finite`, :func:`mark_overflow`,
:func:`scaled_direction`, :func:`finite_or_zero`) are the only place this arithmetic lives; with
S None they change nothing, bit for bit.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor, nn

from okd.weighting.arguments import require_choice
from okd.weighting.gradtools import (
    accumulate_heads,
    backward_through_representation,
    representation_gradients,
    require_representation,
    task_gradients,
    write_flat_grad,
)


@dataclass
class BoundModel:
    """What a weighting may know about the network it weights (never the network itself).

    Attributes:
        task_names: task order; every (K,) tensor in this interface follows it.
        shared_parameters: parameters used by every task (encoder/decoder trunk).
        task_parameters: every other trainable parameter of the student (heads).
        last_shared_parameters: parameters of the last shared layer (GradNorm's W).
        reduce_gradients: under distributed data parallelism, averages a tensor of per-task
            gradients over the processes (each holds the gradients of its own shard of the batch),
            so that every decision a method takes from gradients sees those of the whole batch and
            is the same on every process. ``None`` (one process): identity.
    """

    task_names: list[str]
    shared_parameters: list[nn.Parameter]
    task_parameters: list[nn.Parameter] = field(default_factory=list)
    last_shared_parameters: list[nn.Parameter] = field(default_factory=list)
    reduce_gradients: Callable[[Tensor], Tensor] | None = None

    def reduce(self, grads: Tensor) -> Tensor:
        """Per-task gradients of the whole (global) batch; see ``reduce_gradients``."""
        return grads if self.reduce_gradients is None else self.reduce_gradients(grads)

    @property
    def num_tasks(self) -> int:
        return len(self.task_names)


class Weighting(nn.Module):
    """Base class of every task-weighting method. Subclass one of the two families below."""

    #: True when the method needs the shared representation (the ``representation`` argument of backward).
    needs_representation: bool = False
    #: True when the method needs per-task reference (teacher) losses in ``on_epoch_end`` (OTW).
    needs_reference_losses: bool = False

    def __init__(self) -> None:
        super().__init__()
        self._bound: BoundModel | None = None

    # -- set-up --------------------------------------------------------------------------------
    def bind(self, bound: BoundModel) -> None:
        """Attach to a model. Subclasses that create per-task state override :meth:`setup`."""
        if bound.num_tasks < 1:
            raise ValueError("weighting needs at least one task")
        self._bound = bound
        self.setup(bound.num_tasks)

    def setup(self, num_tasks: int) -> None:
        """Create per-task parameters/buffers (called once K is known)."""

    @property
    def bound(self) -> BoundModel:
        if self._bound is None:
            raise RuntimeError(f"{type(self).__name__} is not bound to a model: call bind() first")
        return self._bound

    @property
    def num_tasks(self) -> int:
        return self.bound.num_tasks

    def param_groups(self) -> list[dict]:
        """Optimizer parameter groups for learnable weights (empty for most methods)."""
        params = [p for p in self.parameters() if p.requires_grad]
        return [{"params": params}] if params else []

    # -- per step ------------------------------------------------------------------------------
    def backward(
        self,
        losses: Tensor,
        extra_loss: Tensor | None = None,
        representation: Tensor | None = None,
        loss_scale: Tensor | None = None,
    ) -> Tensor:
        """Backpropagate the weighted objective; return the (K,) task weights used (detached).

        Args:
            losses: (K,) per-task losses of the current batch, in task order, with graph.
            extra_loss: a scalar added unweighted to the objective (e.g. the distillation loss).
            representation: the shared representation the heads consume, for methods that
                manipulate gradients there (``needs_representation``).
            loss_scale: fp16 gradient scaling: a 0-dim float32 tensor S on the losses' device
                (never read on the host), or None. With S every ``.grad`` written is S times the
                unscaled one and the method's decisions are unchanged (module docstring).
        """
        raise NotImplementedError

    def after_step(self, losses: Tensor, recompute_losses: Callable[[], Tensor] | None = None) -> None:
        """Called after ``optimizer.step()`` with the step's detached losses (FAMO-style updates)."""

    # -- per epoch -----------------------------------------------------------------------------
    def on_epoch_end(self, epoch: int, train_losses: Tensor, reference_losses: Tensor | None = None) -> None:
        """Epoch hook. ``train_losses``: (K,) mean training loss of each task over the epoch that
        just ended (epoch counts from 0); ``reference_losses``: the same for the teachers, when a
        distiller provides them (OTW)."""

    def epoch_logs(self) -> dict[str, float]:
        """Scalars worth logging after :meth:`on_epoch_end` (merged into the epoch's train row,
        e.g. OTW's loss ratios); one host read per epoch at most."""
        return {}

    # -- state ---------------------------------------------------------------------------------
    def extra_state(self) -> dict:
        """Python-side state (histories, counters, RNG) for checkpoints."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    def checkpoint_state(self) -> dict:
        return {"module": self.state_dict(), "extra": self.extra_state()}

    def load_checkpoint_state(self, state: dict) -> None:
        self.load_state_dict(state["module"])
        self.load_extra_state(state.get("extra", {}))


class LossWeighting(Weighting):
    """Methods whose objective is ``sum_k w_k L_k`` (+ a regulariser), with w from losses/state."""

    def weights(self, losses: Tensor) -> Tensor:
        """(K,) weights for this step. May carry gradient into learnable parameters."""
        raise NotImplementedError

    def regularizer(self) -> Tensor | None:
        """Extra term of the objective that does not scale a task loss (UW's log-variances)."""
        return None

    def objective(self, losses: Tensor) -> tuple[Tensor, Tensor]:
        w = self.weights(losses)
        total = (w * losses).sum()
        reg = self.regularizer()
        if reg is not None:
            total = total + reg
        return total, w

    def backward(self, losses, extra_loss=None, representation=None, loss_scale=None):
        total, w = self.objective(losses)
        if extra_loss is not None:
            total = total + extra_loss
        # One backward of S * objective: every .grad (learnable weights included) is S times its
        # unscaled value, and the weights never depend on a gradient.
        scaled(total, loss_scale).backward()
        return w.detach()


class GradientWeighting(Weighting):
    """Methods that combine per-task gradients into one direction (docs/weighting.md#the-interface).

    A method implements :meth:`combine` (and :meth:`combine_representation` where the rows alone
    do not say enough); this class does the rest of :meth:`backward`: the extra loss, loss
    scaling, the level (``parameters``: rows g_k of the shared parameters, averaged over the
    processes; ``representation``: rows z_k = dL_k/dZ, docs/weighting.md#representation-level),
    writing the direction and the heads' gradients (raw, or weighted by :meth:`head_weights`).

    ``combine`` sees rows divided by S (docs/weighting.md#fp16-loss-scaling) and must accept
    non-finite rows without raising (an overflow step): solvers get :func:`finite_or_zero` Gram
    matrices, state updates go through :func:`keep_if_finite`.
    """

    #: the levels a method supports; ``level=`` chooses one (the default is the method's own).
    levels: tuple[str, ...] = ("parameters",)

    def __init__(self, level: str = "parameters") -> None:
        super().__init__()
        require_choice(type(self).__name__, "level", level, self.levels)
        self.level = level
        self.needs_representation = level == "representation"

    def combine(self, grads: Tensor, losses: Tensor) -> tuple[Tensor, Tensor]:
        """Map G (K x P, rows g_k) and the detached losses (K,) to (direction (P,), weights (K,)).

        ``weights`` is what is logged; for methods that are not Gram-weighting it is the
        effective weight ``<d, g_k> / ||g_k||^2`` or any per-task summary the method documents.
        """
        raise NotImplementedError

    def combine_representation(
        self, representation: Tensor, rep_grads: Tensor, losses: Tensor
    ) -> tuple[Tensor, Tensor]:
        """(dL/dZ, weights) from Z and its per-task gradients z (K, *Z.shape): by default
        :meth:`combine` on the rows flattened over batch x features."""
        direction, weights = self.combine(rep_grads.flatten(1), losses)
        return direction.view_as(representation), weights

    def head_weights(self, weights: Tensor, losses: Tensor) -> Tensor | None:
        """Per-task weights of the heads' gradients, or None for their raw gradients (default)."""
        return None

    def backward(self, losses, extra_loss=None, representation=None, loss_scale=None):
        on_representation = self.level == "representation"
        if on_representation:
            require_representation(representation, type(self).__name__)
        backward_extra_loss(extra_loss, loss_scale)
        task_params = self.bound.task_parameters
        # Per-task gradients of S L_k (heads: S grad L_k as they are); rows unscaled before any decision.
        if on_representation:
            rows, heads = representation_gradients(scaled(losses, loss_scale), representation, task_params)
            rows = unscaled(rows, loss_scale)
            direction, weights = self.combine_representation(representation, rows, losses.detach())
            backward_through_representation(representation, scaled_direction(direction, rows, loss_scale))
        else:
            shared = self.bound.shared_parameters
            rows, heads = task_gradients(scaled(losses, loss_scale), shared, task_params)
            rows = unscaled(self.bound.reduce(rows), loss_scale)
            direction, weights = self.combine(rows, losses.detach())
            write_flat_grad(shared, scaled_direction(direction, rows, loss_scale))
        accumulate_heads(task_params, heads, self.head_weights(weights, losses))
        return weights.detach()


def backward_extra_loss(extra_loss: Tensor | None, loss_scale: Tensor | None) -> None:
    """Backpropagate the extra (distillation) loss on its own, unweighted, times S.

    It shares the graph of the task losses, which is kept alive for the per-task passes.
    """
    if extra_loss is not None:
        scaled(extra_loss, loss_scale).backward(retain_graph=True)


# -- loss scaling (fp16): the one place its arithmetic lives -----------------------------------
def scaled(x: Tensor, loss_scale: Tensor | None) -> Tensor:
    """S x: what is backpropagated (or written to ``.grad``) under loss scaling; x when S is None.

    S is multiplied in x's dtype; a direction cast to fp16 afterwards (a representation's
    gradient) may overflow to inf exactly as ``scaler.scale(loss).backward()`` would.
    """
    return x if loss_scale is None else x * loss_scale.to(x.dtype)


def unscaled(g: Tensor, loss_scale: Tensor | None) -> Tensor:
    """g / S in at least float32 (fp16/bf16 gradients are lifted first); g when S is None.

    Division by S is exact for GradScaler's powers of two, so every quantity a method derives
    from the result equals the unscaled run's (up to fp16 rounding of the backward itself).
    """
    if loss_scale is None:
        return g
    if g.dtype not in (torch.float32, torch.float64):
        g = g.float()
    return g / loss_scale.to(g.dtype)


def all_finite(x: Tensor) -> Tensor:
    """0-dim bool tensor on x's device: no inf/NaN in x (no host sync)."""
    return torch.isfinite(x).all()


def keep_if_finite(new: Tensor, old: Tensor, finite: Tensor) -> Tensor:
    """``new`` if ``finite`` else ``old``: a state update that an overflow step leaves undone.

    Equals ``new`` bit for bit when the gradients are finite, so unscaled runs are unchanged.
    """
    return torch.where(finite, new, old)


def mark_overflow(direction: Tensor, rows: Tensor, loss_scale: Tensor | None) -> Tensor:
    """Under loss scaling, NaN everywhere when ``rows`` (the gradients it came from) overflowed.

    GradScaler only skips a step if a non-finite value reaches ``.grad``; a method's direction
    need not carry one (DB-MTL's comes from its EMA, a BLAS product may skip zero weights), so it
    is made explicit. Identity when S is None.
    """
    if loss_scale is None:
        return direction
    return torch.where(all_finite(rows), direction, torch.full_like(direction, float("nan")))


def scaled_direction(direction: Tensor, rows: Tensor, loss_scale: Tensor | None) -> Tensor:
    """What a gradient method writes: S x ``direction`` (NaN if ``rows`` overflowed); unchanged for None."""
    return scaled(mark_overflow(direction, rows, loss_scale), loss_scale)


def finite_or_zero(matrix: Tensor) -> Tensor:
    """``matrix``, or zeros when any entry is non-finite (an overflow step).

    The Gram-matrix solvers raise on (or cannot converge with) non-finite input; on zeros they
    return finite weights, and :func:`mark_overflow` still makes the written direction NaN.
    Equals ``matrix`` bit for bit when it is finite.
    """
    return torch.where(all_finite(matrix), matrix, torch.zeros_like(matrix))
