"""Cross-stitch networks (Misra, Shrivastava, Gupta, Hebert, "Cross-stitch Networks for Multi-task
Learning", CVPR 2016): one network ("column") per task, joined after every stage by a cross-stitch
unit that replaces each column's activation by a learned linear combination of all columns'
activations (paper eq. 1): x~_i = sum_j alpha_ij x_j.

Units are K x K matrices (one per stage, the paper's form; also mtan's and LibMTL's), or K x K per
channel with ``per_channel: true``. Initialisation as in Misra et al. §4: alpha_ii = alpha_same
(0.9) and alpha_ij = (1 - alpha_same) / (K - 1) for j != i, so each row sums to one (the paper's
{0.9, 0.1} for two tasks); with one task the unit is the identity.

* :class:`CrossStitchResNet`: dilated ResNet columns (ImageNet weights in every column when
  ``pretrained``), units after the stem and after layer1..layer4, one ASPP head per task;
* :class:`CrossStitchSegNet`: SegNet columns as in mtan's ``model_segnet_cross.py``, units after every
  encoder stage (on the pooled maps) and after every decoder stage, one 3x3+1x1 head per task.

What is shared: every parameter that more than one task's loss depends on. After the first unit
every column feeds every task, so the columns *and* the units are shared; only the heads are task
parameters (the same convention as LibMTL, whose shared parameters are all its columns and units).
The last shared layer (GradNorm's W) is the last cross-stitch unit. There is no single shared
representation: ``representation_key`` raises :class:`~okd.models.common.NoSharedRepresentation`.

Features for distillation are per column, named ``"<task>/<stage>"`` (e.g. ``depth/layer3``): the
column's activation after the unit of that stage (for SegNet's ``enc1..enc5``: before pooling,
i.e. before the unit, like the hard-sharing SegNet's names). A single-task teacher built with the
same backbone has the same names for its task.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from okd.models.base import ModelOutput, MultiTaskModel
from okd.models.common import (
    InputNormalization, TaskModules, check_width, dense_predictions, no_shared_representation, scaled,
)
from okd.models.heads import ASPPHead, segnet_head
from okd.models.resnet import STAGES, DilatedResNet, ResNetBackbone
from okd.models.segnet import CONVS_PER_STAGE, FILTERS, SegNet, conv_stack


class CrossStitchUnit(nn.Module):
    """x~_i = sum_j alpha_ij x_j over K same-shaped activations (Misra et al. 2016, eq. 1)."""

    def __init__(self, num_tasks: int, channels: int, per_channel: bool = False, alpha_same: float = 0.9) -> None:
        super().__init__()
        if num_tasks < 1:
            raise ValueError("a cross-stitch unit needs at least one task")
        if num_tasks == 1:
            alpha = torch.ones(1, 1)
        else:
            alpha = torch.full((num_tasks, num_tasks), (1.0 - alpha_same) / (num_tasks - 1))
            alpha.fill_diagonal_(alpha_same)
        if per_channel:
            alpha = alpha.unsqueeze(-1).repeat(1, 1, channels)
        self.per_channel = per_channel
        self.alpha = nn.Parameter(alpha)

    def forward(self, xs: Sequence[Tensor]) -> list[Tensor]:
        stacked = torch.stack(list(xs))  # K x B x C x H x W
        equation = "ijc,jbchw->ibchw" if self.per_channel else "ij,jbchw->ibchw"
        return list(torch.einsum(equation, self.alpha, stacked).unbind(0))


class _CrossStitch(TaskModules, MultiTaskModel):
    """Common part: K columns, units, heads; only the heads are task parameters."""

    task_module_names = ("heads",)

    @property
    def representation_key(self) -> str:  # type: ignore[override]
        raise no_shared_representation(self)

    def last_shared_layer(self) -> nn.Module:
        return self.units[-1]

    def _stitch(self, index: int, xs: list[Tensor], stage: str, features: dict[str, Tensor]) -> list[Tensor]:
        xs = self.units[index](xs)
        for t, x in zip(self.tasks, xs):
            features[f"{t.name}/{stage}"] = x
        return xs


class CrossStitchResNet(_CrossStitch, ResNetBackbone):
    """One dilated ResNet per task, cross-stitched after stem, layer1, layer2, layer3 and layer4.

    Args: as :class:`~okd.models.resnet.ResNetBackbone` (depth, pretrained, weights, width, layers,
    output_stride, ASPP options, normalize_input), plus ``per_channel`` and ``alpha_same`` for the units.
    """

    distillation_stages = tuple(f"{{task}}/{s}" for s in STAGES)
    kdmtl_stages = tuple(f"{{task}}/{s}" for s in ResNetBackbone.kdmtl_stages)

    def __init__(self, tasks, per_channel: bool = False, alpha_same: float = 0.9, **resnet) -> None:
        self._unit_settings = (per_channel, alpha_same)
        super().__init__(tasks, **resnet)

    def build(self, make_trunk: Callable[[], DilatedResNet]) -> int:
        self.columns = nn.ModuleList(make_trunk() for _ in self.tasks)
        channels = self.columns[0].channels
        k = len(self.tasks)
        self.units = nn.ModuleList(CrossStitchUnit(k, c, *self._unit_settings) for c in channels)
        self.feature_names = tuple(f"{t.name}/{s}" for t in self.tasks for s in STAGES)
        return channels[-1]

    def forward(self, x: Tensor) -> ModelOutput:
        features: dict[str, Tensor] = {}
        columns: list[DilatedResNet] = list(self.columns)
        h = self.normalize(x)
        xs = self._stitch(0, [c.stem(h) for c in columns], "stem", features)
        for s, name in enumerate(STAGES[1:]):
            xs = self._stitch(s + 1, [c.stages()[s](h) for c, h in zip(columns, xs)], name, features)
        raw = {t.name: self.heads[t.name](h) for t, h in zip(self.tasks, xs)}
        return ModelOutput(dense_predictions(self.tasks, raw, x.shape[-2:]), features)


class _SegNetColumn(nn.Module):
    """One task's SegNet encoder and decoder (the stages of okd/models/segnet.py, without heads)."""

    def __init__(self, filters: list[int], in_channels: int) -> None:
        super().__init__()
        f = filters
        enc_in = [in_channels] + f[:-1]
        dec_out = [f[0]] + f[:-1]
        self.encoder = nn.ModuleList(conv_stack([enc_in[i]] + [f[i]] * n) for i, n in enumerate(CONVS_PER_STAGE))
        self.decoder = nn.ModuleList(conv_stack([f[i]] + [dec_out[i]] * n) for i, n in enumerate(CONVS_PER_STAGE))


class CrossStitchSegNet(_CrossStitch):
    """One SegNet per task, cross-stitched after each pooled encoder stage and each decoder stage.

    Every column unpools with its own pooling indices. ``width`` scales every filter count (1.0 =
    the 64-128-256-512-512 SegNet). Features per task: ``enc1..enc5`` (stage outputs before pooling),
    ``bottleneck`` (after the last encoder unit), ``decoder`` (after the last unit: what the head reads).
    """

    distillation_stages = tuple(f"{{task}}/{s}" for s in SegNet.distillation_stages)
    kdmtl_stages = tuple(f"{{task}}/{s}" for s in SegNet.kdmtl_stages)

    def __init__(self, tasks, width: float = 1.0, in_channels: int = 3, per_channel: bool = False,
                 alpha_same: float = 0.9) -> None:
        super().__init__(tasks)
        check_width(width, "SegNet")
        f = [max(4, scaled(c, width)) for c in FILTERS]  # the same widths as okd.models.segnet.SegNet
        self.columns = nn.ModuleList(_SegNetColumn(f, in_channels) for _ in self.tasks)
        k = len(self.tasks)
        dec_out = [f[0]] + f[:-1]
        unit_channels = f + [dec_out[i] for i in reversed(range(5))]  # 5 encoder units, then 5 decoder units
        self.units = nn.ModuleList(CrossStitchUnit(k, c, per_channel, alpha_same) for c in unit_channels)
        self.pool = nn.MaxPool2d(2, 2, return_indices=True)
        self.unpool = nn.MaxUnpool2d(2, 2)
        stages = [f"enc{i + 1}" for i in range(5)] + ["bottleneck", "decoder"]
        self.feature_names = tuple(f"{t.name}/{s}" for t in self.tasks for s in stages)
        for t in self.tasks:
            self.heads[t.name] = segnet_head(f[0], t.channels)

    def forward(self, x: Tensor) -> ModelOutput:
        features: dict[str, Tensor] = {}
        k = len(self.tasks)
        xs, indices, sizes = [x] * k, [], []
        for i in range(5):
            pooled, idx = [], []
            for t, column, h in zip(self.tasks, self.columns, xs):
                h = column.encoder[i](h)
                features[f"{t.name}/enc{i + 1}"] = h
                p, ind = self.pool(h)
                pooled.append(p)
                idx.append(ind)
            sizes.append(h.shape[-2:])
            indices.append(idx)
            xs = self.units[i](pooled)
        for t, h in zip(self.tasks, xs):
            features[f"{t.name}/bottleneck"] = h
        for n, i in enumerate(reversed(range(5))):
            xs = [column.decoder[i](self.unpool(h, indices[i][c], output_size=sizes[i]))
                  for c, (column, h) in enumerate(zip(self.columns, xs))]
            xs = self.units[5 + n](xs)
        for t, h in zip(self.tasks, xs):
            features[f"{t.name}/decoder"] = h
        raw = {t.name: self.heads[t.name](h) for t, h in zip(self.tasks, xs)}
        return ModelOutput(dense_predictions(self.tasks, raw, x.shape[-2:]), features)
