"""The distiller interface (``kd=none|okd|kdmtl``).

A distiller owns whatever guides the student besides its own task losses: teachers, adaptors, gates
and their optimizers. Per step it returns the extra loss for the student (added, unweighted, to
what the weighting backpropagates) and may train its teachers online; per epoch it reports the
teachers' mean task losses (OTW reads them) and anything worth logging.
"""
from __future__ import annotations

from typing import Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

from okd.models.base import ModelOutput, MultiTaskModel
from okd.tasks import Task


class Distiller(nn.Module):
    """Base class; :class:`NoDistillation` is the ``kd=none`` choice."""

    #: True when :meth:`reference_losses` gives per-task teacher losses (needed by OTW).
    provides_reference_losses: bool = False
    #: the trainer's ``torch.amp.GradScaler`` under ``trainer.precision=16`` (set by the trainer;
    #: None otherwise): a distiller scales its own losses with it and steps its optimizers through it.
    grad_scaler = None

    def scaled(self, loss: Tensor) -> Tensor:
        """``loss`` times the fp16 loss scale (unchanged without a scaler)."""
        return loss if self.grad_scaler is None else self.grad_scaler.scale(loss)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """``optimizer.step()``, through the scaler under fp16 (unscale; skip on overflow)."""
        if self.grad_scaler is None:
            optimizer.step()
        else:
            self.grad_scaler.step(optimizer)

    def setup(
        self,
        student: MultiTaskModel,
        tasks: Sequence[Task],
        device: torch.device,
        build_model: Callable[[Sequence[Task]], MultiTaskModel] | None = None,
    ) -> None:
        """Build teachers/adaptors for this student and task list (called once, before training).

        ``build_model(tasks)`` builds a fresh network of the configured backbone for the given
        tasks (e.g. one single-task teacher per task).
        """

    def student_param_groups(self) -> list[dict]:
        """Parameters trained by the student's optimizer (e.g. AFD gates)."""
        return []

    def training_step(self, images: Tensor, targets: Mapping[str, Tensor], student: ModelOutput) -> Tensor | None:
        """Train the teachers on this batch (online KD) and return the student's extra loss."""
        return None

    def after_step(self) -> None:
        """Called after the student's optimizer step (teachers/adaptors step here)."""

    def warmup(self, loader: Iterable[Mapping[str, Tensor]]) -> None:
        """Before the first epoch of a fresh run (not on resume): e.g. teachers train alone."""

    def evaluate(self, loader: Iterable[Mapping[str, Tensor]]) -> dict[str, float]:
        """Scalars merged into the evaluation row of a split (e.g. ``teacher/<task>/<metric>``)."""
        return {}

    def reference_losses(self) -> Tensor | None:
        """(K,) mean teacher training loss per task over the last finished epoch, or None."""
        return None

    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        """End-of-epoch bookkeeping; returns scalars to log."""
        return {}

    def checkpoint_state(self) -> dict:
        return {"module": self.state_dict()}

    def load_checkpoint_state(self, state: dict) -> None:
        self.load_state_dict(state["module"])


class NoDistillation(Distiller):
    """``kd=none``: plain multi-task training, no teachers, no extra loss."""
