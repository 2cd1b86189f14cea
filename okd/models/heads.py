"""Task heads shared by several backbones.

* :class:`ASPPHead`: the DeepLabV3 head of the paper's CNN student (docs/okd.md#networks; Chen et al.,
  "Rethinking Atrous Convolution for Semantic Image Segmentation", 2017, §3.3);
* :func:`segnet_head`: the 3x3 conv + 1x1 conv prediction layer of mtan's SegNets.

(The Segmenter decoders of the transformer student live in ``okd/models/vit.py``.)
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def conv_bn_relu(cin: int, cout: int, kernel: int = 1, dilation: int = 1) -> nn.Sequential:
    """Bias-free conv + BN + ReLU (a bias before BN is redundant)."""
    padding = 0 if kernel == 1 else dilation
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, padding=padding, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


class ASPPPooling(nn.Module):
    """Image-level branch: global average pool, 1x1 conv-BN-ReLU, broadcast back to the map size."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = conv_bn_relu(cin, cout, 1)

    def forward(self, x: Tensor) -> Tensor:
        if self.training and x.shape[0] == 1:
            # BatchNorm over a 1x1 map of a single image has one value per channel and cannot train.
            raise ValueError(
                "the ASPP image-pooling branch needs batches of more than one image in training "
                "(BatchNorm over a 1x1 map); a training batch had 1 image: set trainer.drop_last=true "
                "or choose trainer.batch_size so that the last batch is not a single image"
            )
        pooled = self.conv(F.adaptive_avg_pool2d(x, 1))
        return pooled.expand(-1, -1, x.shape[-2], x.shape[-1])


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1x1 branch, one 3x3 branch per rate, image pooling; each
    branch conv-BN-ReLU; concatenation projected by 1x1 conv-BN-ReLU and dropout.

    With 2048 input channels, rates (12, 24, 36) and 256 channels this is the DeepLabV3 ASPP at
    output stride 8 (docs/okd.md#networks: projection 1280 -> 256, Dropout 0.5).
    """

    def __init__(self, cin: int, channels: int = 256, rates: Sequence[int] = (12, 24, 36), dropout: float = 0.5) -> None:
        super().__init__()
        if not rates:
            raise ValueError("ASPP needs at least one atrous rate")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"ASPP dropout must be in [0, 1), got {dropout}")
        branches: list[nn.Module] = [conv_bn_relu(cin, channels, 1)]
        branches += [conv_bn_relu(cin, channels, 3, dilation=int(r)) for r in rates]
        branches.append(ASPPPooling(cin, channels))
        self.branches = nn.ModuleList(branches)
        self.project = nn.Sequential(conv_bn_relu(len(branches) * channels, channels, 1), nn.Dropout(dropout))

    def forward(self, x: Tensor) -> Tensor:
        return self.project(torch.cat([branch(x) for branch in self.branches], dim=1))


class ASPPHead(nn.Sequential):
    """DeepLabV3 head: ASPP, 3x3 conv (no bias) + BN + ReLU, 1x1 conv to the task's channels.

    Outputs stay at the feature map's resolution; the model upsamples them to the input size.
    """

    def __init__(
        self,
        cin: int,
        out_channels: int,
        channels: int = 256,
        rates: Sequence[int] = (12, 24, 36),
        dropout: float = 0.5,
    ) -> None:
        super().__init__(
            ASPP(cin, channels, rates, dropout),
            conv_bn_relu(channels, channels, 3),
            nn.Conv2d(channels, out_channels, 1),
        )


def segnet_head(channels: int, out_channels: int) -> nn.Sequential:
    """mtan's prediction layer: 3x3 conv (channels -> channels), then 1x1 conv to the task's channels."""
    return nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.Conv2d(channels, out_channels, 1))
