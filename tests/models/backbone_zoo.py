"""Tiny versions of every backbone option (conf/backbone/*.yaml plus a few variants) for the tests.

Each entry is the option's YAML with small widths/depths merged in, so these tests also exercise
the YAML files. ``TINY_OVERRIDES`` gives the same settings as command-line overrides.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from hydra.utils import instantiate
from omegaconf import OmegaConf

from okd.models.base import MultiTaskModel
from okd.tasks import build_tasks

CONF = Path(__file__).resolve().parents[2] / "conf" / "backbone"
TINY_RESNET = dict(depth=18, width=0.125, layers=[1, 1, 1, 1], aspp_channels=8)

#: name -> (YAML option, tiny settings)
ZOO: dict[str, tuple[str, dict]] = {
    "resnet50": ("resnet50", TINY_RESNET),
    "resnet_bottleneck": ("resnet50", dict(depth=50, width=0.0625, layers=[1, 1, 1, 1], aspp_channels=8)),
    "vit_tiny": ("vit_tiny", dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)),
    "mtan": ("mtan", dict(TINY_RESNET, layers=[2, 2, 2, 2])),
    "mtan_segnet": ("mtan_segnet", dict(width=0.125)),
    "cross_stitch": ("cross_stitch", TINY_RESNET),
    "cross_stitch_channel": ("cross_stitch", dict(TINY_RESNET, per_channel=True)),
    "cross_stitch_segnet": ("cross_stitch_segnet", dict(width=0.125)),
}
#: the hard-sharing models (one representation read by every head)
HARD_SHARING = {"resnet50", "resnet_bottleneck", "vit_tiny"}
#: modules applied once per task by design (MTAN's shared attention encoders)
PER_TASK_SHARED = {"mtan": ("encoder_block_att",), "mtan_segnet": ("encoder_block_att", "decoder_block_att")}


def build(name: str, task_names: Sequence[str] = ("segmentation", "depth", "normal"), num_classes: int = 7) -> MultiTaskModel:
    option, tiny = ZOO[name]
    node = OmegaConf.merge(OmegaConf.load(CONF / f"{option}.yaml"), tiny)
    return instantiate(node, _convert_="all", tasks=build_tasks(list(task_names), num_classes))


def tiny_overrides(option: str) -> list[str]:
    """Command-line overrides that make ``backbone=<option>`` tiny."""
    tiny = next(settings for opt, settings in ZOO.values() if opt == option)
    return [f"backbone.{k}={v}".replace(" ", "") for k, v in tiny.items()]
