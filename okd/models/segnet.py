"""SegNet as in mtan (Liu et al., CVPR 2019, "End-to-End Multi-Task Learning with Attention"; docs/okd.md#kd-mtl).

Encoder of five VGG-style stages with 64-128-256-512-512 filters and 2-2-3-3-3 conv layers
(3x3 conv + BN + ReLU), each followed by 2x2 max-pooling that keeps its indices; a mirrored decoder
that max-unpools with those indices; one head per task (3x3 conv + 1x1 conv) on the last decoder
feature (64 channels at full resolution). This is the hard-parameter-sharing SegNet ("split" in mtan):
everything but the heads is shared. ``width`` scales every filter count so tests can build tiny
networks (width 0.125 gives 8-16-32-64-64).
"""
from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from okd.models.base import MultiTaskModel
from okd.tasks import Task

FILTERS = (64, 128, 256, 512, 512)
CONVS_PER_STAGE = (2, 2, 3, 3, 3)


def conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def conv_stack(channels: Sequence[int]) -> nn.Sequential:
    """Consecutive conv-BN-ReLU layers through the given channel counts."""
    return nn.Sequential(*(conv_bn_relu(a, b) for a, b in zip(channels[:-1], channels[1:])))


class SegNet(MultiTaskModel):
    """Hard-parameter-sharing SegNet with one 3x3+1x1 head per task.

    Features (for distillation): ``enc1..enc5`` (encoder stages before pooling), ``bottleneck``
    (encoder output after the last pooling) and ``decoder`` (the last decoder feature, which the heads
    read: the shared representation).
    """

    representation_key = "decoder"
    feature_names = ("enc1", "enc2", "enc3", "enc4", "enc5", "bottleneck", "decoder")
    #: the five encoder stages (the counterpart of ResNet's five) and the decoder output the heads read
    distillation_stages = ("enc1", "enc2", "enc3", "enc4", "enc5", "decoder")
    #: KD-MTL's SegNet features: the encoder bottleneck and the last decoder feature
    kdmtl_stages = ("bottleneck", "decoder")

    def __init__(self, tasks: Sequence[Task], width: float = 1.0, in_channels: int = 3) -> None:
        super().__init__(tasks)
        if width <= 0:
            raise ValueError(f"SegNet width must be > 0, got {width}")
        f = [max(4, int(round(c * width))) for c in FILTERS]
        self.filters = f
        enc_in = [in_channels] + f[:-1]
        self.encoder = nn.ModuleList(
            conv_stack([enc_in[i]] + [f[i]] * n) for i, n in enumerate(CONVS_PER_STAGE)
        )
        # Decoder stage i mirrors encoder stage i as in mtan: one conv down to the next stage's
        # width, then n-1 convs at that width.
        dec_out = [f[0]] + f[:-1]
        self.decoder = nn.ModuleList(
            conv_stack([f[i]] + [dec_out[i]] * n) for i, n in enumerate(CONVS_PER_STAGE)
        )
        self.pool = nn.MaxPool2d(2, 2, return_indices=True)
        self.unpool = nn.MaxUnpool2d(2, 2)
        for t in self.tasks:
            self.heads[t.name] = nn.Sequential(
                nn.Conv2d(f[0], f[0], 3, padding=1), nn.Conv2d(f[0], t.channels, 1)
            )

    def trunk(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        features: dict[str, Tensor] = {}
        indices, sizes = [], []
        for i, stage in enumerate(self.encoder):
            x = stage(x)
            features[f"enc{i + 1}"] = x
            sizes.append(x.shape[-2:])
            x, idx = self.pool(x)
            indices.append(idx)
        features["bottleneck"] = x
        for i in reversed(range(len(self.decoder))):
            x = self.unpool(x, indices[i], output_size=sizes[i])
            x = self.decoder[i](x)
        return x, features

    def last_shared_layer(self) -> nn.Module:
        return self.decoder[0][-1][0]  # the last decoder conv before the heads
