"""Dilated ResNet + one DeepLabV3 ASPP head per task: the paper's CNN student ("DMTL", docs/okd.md#networks).

He et al., "Deep Residual Learning for Image Recognition", CVPR 2016; dilation ("atrous") as in
Chen et al., DeepLabV3, 2017: at output stride 8, layer3 and layer4 keep the resolution of layer2
and dilate their 3x3 convolutions by 2 and 4 instead (the first block of a dilated stage keeps the
previous stage's dilation, as torchvision's ``replace_stride_with_dilation`` does).

:class:`DilatedResNet` uses torchvision's residual blocks and the same module names as
``torchvision.models.resnet*`` (conv1, bn1, layer1..layer4), so torchvision's ImageNet weights load
into it, and at width 1 it *is* torchvision's network (tests compare the two). ``width`` multiplies
every channel count (stem and the four stages) and ``layers`` overrides the blocks per stage: both
exist for tiny test networks and keep the architecture (stem, four residual stages, dilation, ASPP).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence
from urllib.parse import urlparse

import torch
from torch import Tensor, nn
from torchvision.models import get_model_weights
from torchvision.models.resnet import BasicBlock, Bottleneck, conv1x1

from okd.models.base import ModelOutput, MultiTaskModel
from okd.models.common import (
    InputNormalization, PretrainedWeightsUnavailable, TaskModules, check_width, dense_predictions, scaled,
)
from okd.models.heads import ASPPHead
from okd.tasks import Task

#: depth -> (block, blocks per stage), as in He et al. 2016, Table 1.
ARCHITECTURES: dict[int, tuple[type[nn.Module], tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}
STEM_CHANNELS = 64
STAGE_PLANES = (64, 128, 256, 512)
#: output stride -> which of layer2, layer3, layer4 trade their stride for dilation.
DILATE = {8: (False, True, True), 16: (False, False, True), 32: (False, False, False)}
STAGES = ("stem", "layer1", "layer2", "layer3", "layer4")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DilatedResNet(nn.Module):
    """ResNet trunk without pooling/classifier; ``forward`` returns the five stage features.

    ``channels`` gives the channel count of stem, layer1..layer4 (e.g. 64, 256, 512, 1024, 2048 for
    ResNet-50 and 64, 64, 128, 256, 512 for ResNet-18/34).
    """

    def __init__(
        self,
        depth: int = 50,
        width: float = 1.0,
        layers: Sequence[int] | None = None,
        output_stride: int = 8,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if depth not in ARCHITECTURES:
            raise ValueError(f"ResNet depth must be one of {sorted(ARCHITECTURES)}, got {depth}")
        if output_stride not in DILATE:
            raise ValueError(f"ResNet output_stride must be one of {sorted(DILATE)}, got {output_stride}")
        check_width(width, "ResNet")
        block, default_layers = ARCHITECTURES[depth]
        layers = tuple(default_layers if layers is None else layers)
        if len(layers) != 4 or any(int(n) < 1 for n in layers):
            raise ValueError(f"ResNet layers must be four block counts >= 1, got {list(layers)}")
        self.block = block
        self.depth = depth
        stem = scaled(STEM_CHANNELS, width)
        self.conv1 = nn.Conv2d(in_channels, stem, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self._inplanes, self._dilation = stem, 1
        planes = [scaled(p, width) for p in STAGE_PLANES]
        dilate = (False,) + DILATE[output_stride]
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            self._make_stage(planes[i], int(layers[i]), stride=1 if i == 0 else 2, dilate=dilate[i])
            for i in range(4)
        )
        self.channels = (stem,) + tuple(p * block.expansion for p in planes)
        self.output_stride = output_stride
        self._init_weights()

    def _make_stage(self, planes: int, blocks: int, stride: int, dilate: bool) -> nn.Sequential:
        """A residual stage; a dilated stage trades its stride for dilation (first block keeps the
        previous dilation, the others use the new one)."""
        previous = self._dilation
        if dilate:
            self._dilation *= stride
            stride = 1
        out = planes * self.block.expansion
        downsample = None
        if stride != 1 or self._inplanes != out:
            downsample = nn.Sequential(conv1x1(self._inplanes, out, stride), nn.BatchNorm2d(out))
        stage = [self._block(self._inplanes, planes, stride, downsample, previous)]
        self._inplanes = out
        stage += [self._block(out, planes, 1, None, self._dilation) for _ in range(1, blocks)]
        return nn.Sequential(*stage)

    def _block(self, cin: int, planes: int, stride: int, downsample: nn.Module | None, dilation: int) -> nn.Module:
        if self.block is Bottleneck:
            return Bottleneck(cin, planes, stride, downsample, dilation=dilation)
        # torchvision's BasicBlock refuses dilation > 1 at construction; build it undilated and
        # set the dilation of its two 3x3 convs (padding = dilation keeps the size).
        block = BasicBlock(cin, planes, stride, downsample)
        for conv in (block.conv1, block.conv2):
            conv.dilation, conv.padding = (dilation, dilation), (dilation, dilation)
        return block

    def _init_weights(self) -> None:
        # torchvision's ResNet initialisation (He et al. 2015 fan-out for convs, BN = identity).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def stem(self, x: Tensor) -> Tensor:
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def stages(self) -> list[nn.Sequential]:
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        features = {"stem": self.stem(x)}
        x = features["stem"]
        for name, stage in zip(STAGES[1:], self.stages()):
            x = stage(x)
            features[name] = x
        return features

    def last_conv(self) -> nn.Conv2d:
        """The last convolution of layer4 (conv3 of a Bottleneck, conv2 of a BasicBlock)."""
        last = self.layer4[-1]
        return last.conv3 if isinstance(last, Bottleneck) else last.conv2

    def load_imagenet(self, weights: str = "IMAGENET1K_V1") -> None:
        """Load torchvision's ImageNet weights (classifier dropped) through its weights API."""
        self.load_state_dict(imagenet_state_dict(self.depth, weights), strict=True)


def weights_cache_path(url: str) -> Path:
    """Where ``torch.hub`` looks for (and stores) a downloaded checkpoint."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def imagenet_state_dict(depth: int, weights: str = "IMAGENET1K_V1") -> dict[str, Tensor]:
    """torchvision's ImageNet state dict of ``resnet{depth}`` without the classifier.

    Offline, the file must already be in torch.hub's cache; otherwise this fails with a message that
    names the file, its URL and the cache path where it can be placed.
    """
    try:
        enum = get_model_weights(f"resnet{depth}")
        entry = enum[weights]
    except (KeyError, ValueError):
        options = [w.name for w in get_model_weights(f"resnet{depth}")] if depth in ARCHITECTURES else []
        raise ValueError(f"backbone.weights={weights!r} is not a torchvision weight set of resnet{depth}; "
                         f"available: {options}") from None
    path = weights_cache_path(entry.url)
    try:
        state = entry.get_state_dict(progress=False)
    except Exception as err:  # noqa: BLE001 -- any failure to download/read becomes one clear message
        if path.is_file():
            reason = f"the cached file {path} could not be read ({type(err).__name__}: {err}); delete it or replace it"
        else:
            reason = (f"it is not in the torch.hub cache and could not be downloaded ({type(err).__name__}: {err}). "
                      f"Offline: download {entry.url} on a machine with internet access and place it at {path} "
                      f"(the cache is $TORCH_HOME/hub/checkpoints, here {path.parent})")
        # No exception chaining: the message above is the one to show (okd.app reports the innermost cause).
        raise PretrainedWeightsUnavailable(
            f"backbone.pretrained=true: ImageNet weights resnet{depth} {weights} unavailable: {reason}; "
            "or set backbone.pretrained=false to train from scratch") from None
    return {k: v for k, v in state.items() if not k.startswith("fc.")}


def build_trunk(
    depth: int, width: float, layers: Sequence[int] | None, output_stride: int, pretrained: bool, weights: str,
) -> DilatedResNet:
    """A dilated trunk, with ImageNet weights when ``pretrained`` (standard architectures only)."""
    trunk = DilatedResNet(depth, width, layers, output_stride)
    if pretrained:
        if width != 1.0 or (layers is not None and tuple(layers) != ARCHITECTURES[depth][1]):
            raise ValueError(
                f"backbone.pretrained=true needs the standard resnet{depth} (width 1, layers "
                f"{list(ARCHITECTURES[depth][1])}); got width={width}, layers={layers}")
        trunk.load_imagenet(weights)
    return trunk


class ResNetBackbone(TaskModules, MultiTaskModel):
    """What the ResNet backbones (ResNet-ASPP, MTAN, cross-stitch) share: their settings, the input
    normalisation, the dilated trunk(s) of :func:`build_trunk` and one ASPP head per task.

    A subclass builds its networks in :meth:`build` from ``make_trunk`` (a fresh trunk per call, with
    the ImageNet weights when ``pretrained``) and returns the channel count its heads read. Features
    ``stem``, ``layer1`` .. ``layer4`` (the five stages the release distils).

    Args:
        tasks: the task list (from the dataset).
        depth: 18, 34, 50, 101 or 152.
        pretrained: load torchvision's ImageNet weights (the paper did); fails at start-up when the
            file is neither cached nor downloadable, naming the cache path.
        weights: torchvision weight set name (``IMAGENET1K_V1`` is the classic one mtan/LibMTL used).
        width, layers: channel multiplier and blocks per stage (tiny test networks).
        output_stride: 8 (the paper), 16 or 32.
        aspp_channels, aspp_rates, aspp_dropout: the ASPP head (256, (12, 24, 36), 0.5 in the paper).
        normalize_input: standardise inputs with ImageNet mean/std (the released code did not).
    """

    feature_names = STAGES
    distillation_stages = STAGES
    kdmtl_stages = ("layer4",)

    def __init__(
        self,
        tasks: Sequence[Task],
        depth: int = 50,
        pretrained: bool = False,
        weights: str = "IMAGENET1K_V1",
        width: float = 1.0,
        layers: Sequence[int] | None = None,
        output_stride: int = 8,
        aspp_channels: int = 256,
        aspp_rates: Sequence[int] = (12, 24, 36),
        aspp_dropout: float = 0.5,
        normalize_input: bool = False,
    ) -> None:
        super().__init__(tasks)
        self.normalize = InputNormalization(*((IMAGENET_MEAN, IMAGENET_STD) if normalize_input else (None, None)))
        cin = self.build(lambda: build_trunk(depth, width, layers, output_stride, pretrained, weights))
        for t in self.tasks:
            self.heads[t.name] = ASPPHead(cin, t.channels, aspp_channels, aspp_rates, aspp_dropout)

    def build(self, make_trunk: Callable[[], DilatedResNet]) -> int:
        """Build the shared network (and any task modules before the heads); return the heads' input channels."""
        raise NotImplementedError


class ResNetASPP(ResNetBackbone):
    """Hard parameter sharing: a dilated ResNet shared by all tasks, one ASPP head per task.

    Predictions are bilinearly upsampled to the input size. Features (one pass): ``stem``
    (conv1-BN-ReLU-maxpool), ``layer1`` .. ``layer4``; the heads read ``layer4`` (the shared
    representation). Shared parameters: the trunk; task parameters: the heads; last shared layer:
    the last convolution of layer4. Args: as :class:`ResNetBackbone`.
    """

    representation_key = "layer4"

    def build(self, make_trunk: Callable[[], DilatedResNet]) -> int:
        self.encoder = make_trunk()
        return self.encoder.channels[-1]

    def trunk(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        features = self.encoder(self.normalize(x))
        return features["layer4"], features

    def forward(self, x: Tensor) -> ModelOutput:
        representation, features = self.trunk(x)
        raw = {t.name: self.heads[t.name](representation) for t in self.tasks}
        return ModelOutput(dense_predictions(self.tasks, raw, x.shape[-2:]), features)

    def last_shared_layer(self) -> nn.Module:
        return self.encoder.last_conv()
