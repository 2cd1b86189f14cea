"""Pieces shared by the dense-prediction backbones (ResNet, ViT, MTAN, cross-stitch).

* :func:`dense_predictions` upsamples every head's raw output to the input size *before* the task's
  activation, so that unit normals stay unit length after interpolation;
* :class:`TaskModules` makes "shared" mean *used by more than one task*: parameters of the modules
  named in ``task_module_names`` (heads, per-task attention, ...) are task parameters, all others are
  shared (tests check this against the autograd graph);
* :class:`NoSharedRepresentation` is what architectures without one tensor that every head reads
  (MTAN, cross-stitch) raise when a method asks for it (MGDA-UB-style methods);
* :class:`InputNormalization` optionally standardises [0, 1] RGB with the statistics a pretrained
  network was trained with.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from okd.tasks import Task


class NoSharedRepresentation(ValueError):
    """The architecture has no single representation that every task head consumes."""


class PretrainedWeightsUnavailable(ValueError):
    """Pretrained weights were requested but could not be loaded (e.g. offline, no cached file)."""


def scaled(channels: int, width: float) -> int:
    """``channels * width`` rounded, at least 1 (width multipliers for tiny test networks)."""
    return max(1, int(round(channels * width)))


def check_width(width: float, where: str) -> None:
    if not width > 0:
        raise ValueError(f"{where}: width must be > 0, got {width}")


def upsample(x: Tensor, size: Sequence[int]) -> Tensor:
    """Bilinear resize of a B x C x h x w map to ``size`` (no-op when it already has that size)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def dense_predictions(tasks: Sequence[Task], raw: Mapping[str, Tensor], size: Sequence[int]) -> dict[str, Tensor]:
    """Per-task predictions at the input size: bilinear upsampling, then the task's activation.

    The activation comes last so that, e.g., normals are L2-normalised at full resolution.
    """
    return {t.name: t.activate(upsample(raw[t.name], size)) for t in tasks}


class TaskModules:
    """Mixin for :class:`~okd.models.base.MultiTaskModel`: task parameters are those of the modules
    named in ``task_module_names`` (each an ``nn.ModuleDict`` keyed by task, or any module owned by
    tasks); every other trainable parameter is shared."""

    task_module_names: tuple[str, ...] = ("heads",)

    def task_parameters(self) -> list[nn.Parameter]:
        params: list[nn.Parameter] = []
        for name in self.task_module_names:
            params += [p for p in getattr(self, name).parameters() if p.requires_grad]
        return params

    def shared_parameters(self) -> list[nn.Parameter]:
        task_ids = {id(p) for p in self.task_parameters()}
        return [p for p in self.parameters() if p.requires_grad and id(p) not in task_ids]


class InputNormalization(nn.Module):
    """``(x - mean) / std`` per channel, or identity when ``mean`` is None.

    The released protocols fed [0, 1] RGB to ImageNet-pretrained networks without standardising it
    (mtan, LibMTL and the OKD scripts), so this is off by default; buffers are not saved in
    checkpoints because they follow from the config.
    """

    def __init__(self, mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> None:
        super().__init__()
        self.enabled = mean is not None
        if self.enabled:
            if std is None or len(mean) != len(std):
                raise ValueError(f"input normalisation needs matching mean and std, got {mean} and {std}")
            self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
            self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std if self.enabled else x


def no_shared_representation(model: nn.Module) -> NoSharedRepresentation:
    """The error for methods on the shared representation used with a soft-sharing architecture."""
    return NoSharedRepresentation(
        f"{type(model).__name__} has no single shared representation that every task head reads "
        "(each task reads its own features), so weighting methods on the shared representation "
        "(needs_representation, e.g. the -UB variants) cannot run on it; use a hard-sharing "
        "backbone (segnet, resnet50, vit_tiny) or a method on the shared parameters"
    )
