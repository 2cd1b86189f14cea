"""Multi-Task Attention Network (Liu, Johns, Davison, "End-to-End Multi-Task Learning with
Attention", CVPR 2019): one shared network, and per task a stream of soft-attention modules that
select features from every stage of it.

An attention module of task i at stage j reads the stage's intermediate feature u_j (and the task's
previous attended feature), outputs a mask a_ij = sigmoid(BN(conv1x1(ReLU(BN(conv1x1(.)))))) with
the stage output's channels, and attends the stage output p_j: a_ij * p_j (paper eq. 1-2). A
*shared* 3x3 conv layer ("shared attention encoder" f_j) brings the attended feature to the next
stage's width; it is applied to every task's stream with the same weights.

* :class:`MTANSegNet`: the SegNet-MTAN of the paper (attention at all 5 encoder and 5 decoder
  stages; the mtan repository's ``model_segnet_mtan.py``), one 3x3+1x1 head per task;
* :class:`MTANResNet`: the ResNet version of the mtan repository (``resnet_mtan.py``, used by
  LibMTL and the OKD comparison): attention at each of the 4 stages of a dilated ResNet, masks from
  the stage's input to its last block, shared Bottleneck attention encoders, one ASPP head per task.

What is shared: every parameter that more than one task's loss depends on -- the shared network and
the shared attention encoders. Task parameters: the attention modules and heads of each task.
There is no single shared representation (each head reads its own attended feature):
``representation_key`` raises :class:`~okd.models.common.NoSharedRepresentation`.
Features for distillation come from the shared network, as for the hard-sharing model it extends.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.resnet import Bottleneck, conv1x1

from okd.models.base import ModelOutput
from okd.models.common import TaskModules, dense_predictions, no_shared_representation, upsample
from okd.models.resnet import STAGES, DilatedResNet, ResNetBackbone
from okd.models.segnet import SegNet, conv_bn_relu
from okd.tasks import Task


def attention_layer(cin: int, mid: int, cout: int) -> nn.Sequential:
    """Task attention module: 1x1 conv-BN-ReLU, 1x1 conv-BN-sigmoid (mtan ``att_layer``)."""
    return nn.Sequential(
        nn.Conv2d(cin, mid, 1), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
        nn.Conv2d(mid, cout, 1), nn.BatchNorm2d(cout), nn.Sigmoid(),
    )


def _xavier_init(module: nn.Module) -> None:
    # mtan's initialisation of its SegNets: Xavier-normal convs with zero bias, BN = identity.
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.xavier_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class _NoSharedRepresentation:
    """``representation_key`` for soft-sharing models: a clear error instead of a key."""

    @property
    def representation_key(self) -> str:  # type: ignore[override]
        raise no_shared_representation(self)


class MTANSegNet(_NoSharedRepresentation, TaskModules, SegNet):
    """SegNet-MTAN (Liu et al. 2019, Fig. 2 and §4): the hard-sharing SegNet of okd/models/segnet.py
    as the shared network, plus per task 5 encoder and 5 decoder attention modules.

    Per task i, encoder stage j (u = output of the stage's first conv, p = stage output):
    a = att_enc[i][j](u if j == 0 else cat(u, prev)); prev = maxpool(f_enc[j](a * p)).
    Decoder stage k (deepest first; v = the unpooled input of shared decoder stage k, q = its output):
    up = f_dec[k](bilinear-resize(prev)); prev = att_dec[i][k](cat(v, up)) * q. Head i reads prev.
    Features: enc1..enc5, bottleneck and decoder of the shared network.
    ``width`` scales every filter count (1.0 = the published network, about 44M parameters for 3 tasks).
    """

    task_module_names = ("heads", "encoder_att", "decoder_att")

    def __init__(self, tasks: Sequence[Task], width: float = 1.0, in_channels: int = 3) -> None:
        super().__init__(tasks, width=width, in_channels=in_channels)
        f = self.filters
        dec_out = [f[0]] + f[:-1]  # output width of shared decoder stage k
        # Shared attention encoders: encoder stage j -> width of stage j+1 (the last keeps its width);
        # decoder stage k: from the width of the attended feature below it to the width of stage k's output.
        enc_next = f[1:] + [f[-1]]
        self.encoder_block_att = nn.ModuleList(conv_bn_relu(f[j], enc_next[j]) for j in range(5))
        dec_in = [dec_out[k + 1] if k < 4 else enc_next[4] for k in range(5)]
        dec_att_out = [dec_out[k] if k < 4 else f[4] for k in range(5)]  # mtan: f4 -> f4 at the bottom
        self.decoder_block_att = nn.ModuleList(conv_bn_relu(dec_in[k], dec_att_out[k]) for k in range(5))
        self.encoder_att = nn.ModuleDict()
        self.decoder_att = nn.ModuleDict()
        for t in self.tasks:
            self.encoder_att[t.name] = nn.ModuleList(
                attention_layer(f[j] if j == 0 else f[j] + enc_next[j - 1], f[j], f[j]) for j in range(5))
            self.decoder_att[t.name] = nn.ModuleList(
                attention_layer(f[k] + dec_att_out[k], dec_out[k], dec_out[k]) for k in range(5))
        _xavier_init(self)

    def forward(self, x: Tensor) -> ModelOutput:
        features: dict[str, Tensor] = {}
        first, sizes, indices, unpooled, decoded = [], [], [], [None] * 5, [None] * 5
        for j, stage in enumerate(self.encoder):
            u = stage[0](x)
            x = stage[1:](u)
            first.append(u)
            features[f"enc{j + 1}"] = x
            sizes.append(x.shape[-2:])
            x, idx = self.pool(x)
            indices.append(idx)
        features["bottleneck"] = x
        for k in reversed(range(5)):
            x = self.unpool(x, indices[k], output_size=sizes[k])
            unpooled[k] = x
            x = self.decoder[k](x)
            decoded[k] = x
        features["decoder"] = x
        raw = {t.name: self.heads[t.name](self._attend(t.name, first, features, unpooled, decoded))
               for t in self.tasks}
        return ModelOutput(dense_predictions(self.tasks, raw, x.shape[-2:]), features)

    def _attend(self, task: str, first: list[Tensor], features: dict[str, Tensor],
                unpooled: list[Tensor], decoded: list[Tensor]) -> Tensor:
        """Task ``task``'s attention stream through the shared encoder and decoder."""
        prev: Tensor | None = None
        for j, att in enumerate(self.encoder_att[task]):
            mask = att(first[j] if prev is None else torch.cat([first[j], prev], dim=1))
            prev = F.max_pool2d(self.encoder_block_att[j](mask * features[f"enc{j + 1}"]), 2, 2)
        for k in reversed(range(5)):
            up = self.decoder_block_att[k](upsample(prev, unpooled[k].shape[-2:]))
            prev = self.decoder_att[task][k](torch.cat([unpooled[k], up], dim=1)) * decoded[k]
        return prev


class MTANResNet(_NoSharedRepresentation, ResNetBackbone):
    """MTAN on a dilated ResNet with one ASPP head per task (mtan repository, ``resnet_mtan.py``).

    Each stage s is split into its blocks but the last (giving u_s) and its last block (giving
    p_s). Per task i: a_1 = att[i][1](u_1) * p_1; a_s = att[i][s](cat(u_s, g_{s-1}(a_{s-1}))) * p_s,
    with g_s a shared Bottleneck to the next stage's width (max-pooled to the next stage's
    resolution where the stage strides, i.e. after layer1). Head i reads a_4. Attention masks use a
    bottleneck of width C/4. Every stage needs at least 2 blocks.
    Features: stem, layer1..layer4 of the shared ResNet. Args: as :class:`~okd.models.resnet.ResNetBackbone`.
    """

    task_module_names = ("heads", "encoder_att")

    def build(self, make_trunk: Callable[[], DilatedResNet]) -> int:
        self.encoder = make_trunk()
        if any(len(stage) < 2 for stage in self.encoder.stages()):
            raise ValueError("MTAN on a ResNet needs at least 2 blocks per stage (attention masks are computed "
                             f"before each stage's last block); got layers={[len(s) for s in self.encoder.stages()]}")
        ch = self.encoder.channels[1:]
        if any(c % 4 for c in ch):
            raise ValueError(f"MTAN on a ResNet needs stage widths divisible by 4, got {list(ch)} (change width)")
        self.encoder_block_att = nn.ModuleList(
            Bottleneck(ch[s], ch[s + 1] // 4, downsample=nn.Sequential(conv1x1(ch[s], ch[s + 1]), nn.BatchNorm2d(ch[s + 1])))
            for s in range(3))
        self.encoder_att = nn.ModuleDict({
            t.name: nn.ModuleList(attention_layer(ch[s] if s == 0 else 2 * ch[s], ch[s] // 4, ch[s]) for s in range(4))
            for t in self.tasks})
        return ch[3]

    def forward(self, x: Tensor) -> ModelOutput:
        features = {"stem": self.encoder.stem(self.normalize(x))}
        h, inner = features["stem"], []
        for name, stage in zip(STAGES[1:], self.encoder.stages()):
            u = stage[:-1](h)
            h = stage[-1](u)
            inner.append(u)
            features[name] = h
        raw = {}
        for t in self.tasks:
            a = None
            for s, att in enumerate(self.encoder_att[t.name]):
                if a is None:
                    mask = att(inner[s])
                else:
                    a = self.encoder_block_att[s - 1](a)
                    if a.shape[-2:] != inner[s].shape[-2:]:  # the stage strides: follow it (mtan: max-pool)
                        a = F.max_pool2d(a, 2, 2, ceil_mode=True)
                    mask = att(torch.cat([inner[s], a], dim=1))
                a = mask * features[STAGES[s + 1]]
            raw[t.name] = self.heads[t.name](a)
        return ModelOutput(dense_predictions(self.tasks, raw, x.shape[-2:]), features)

    def last_shared_layer(self) -> nn.Module:
        return self.encoder.last_conv()
