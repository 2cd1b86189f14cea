"""Tiny versions of every backbone option (conf/backbone/*.yaml plus a few variants) for the tests.

Each entry is the option's YAML with small widths/depths merged in, so these tests also exercise
the YAML files; :func:`tiny_overrides` gives the same settings as command-line overrides. An option
that :data:`ZOO` does not list (a new backbone) is tested at :data:`DEFAULT_TINY`; when that does not
make it tiny, :func:`build` fails saying which entry to add here.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from hydra.utils import instantiate
from omegaconf import OmegaConf

from okd.models.base import MultiTaskModel
from okd.models.common import NoSharedRepresentation
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
#: the settings (those its YAML has) of an option ZOO does not list
DEFAULT_TINY = dict(width=0.125)
#: a test network larger than this needs tiny settings of its own in ZOO
MAX_TINY_PARAMETERS = 2_000_000
#: every option of conf/backbone/
OPTIONS = sorted(p.stem for p in CONF.glob("*.yaml"))
#: what the contract tests build: ZOO's entries, then every option it does not list (at DEFAULT_TINY)
NAMES = [*ZOO, *(o for o in OPTIONS if o not in {option for option, _ in ZOO.values()})]
#: the hard-sharing models (one representation read by every head); an unlisted option is asked
HARD_SHARING = {"resnet50", "resnet_bottleneck", "vit_tiny"}
#: modules applied once per task by design (MTAN's shared attention encoders)
PER_TASK_SHARED = {"mtan": ("encoder_block_att",), "mtan_segnet": ("encoder_block_att", "decoder_block_att")}


def tiny_settings(option: str) -> dict:
    """The settings that make ``backbone=<option>`` tiny: its first ZOO entry's, else DEFAULT_TINY's."""
    listed = [settings for opt, settings in ZOO.values() if opt == option]
    if listed:
        return listed[0]
    yaml = OmegaConf.load(CONF / f"{option}.yaml")
    return {k: v for k, v in DEFAULT_TINY.items() if k in yaml}


def build(name: str, task_names: Sequence[str] = ("segmentation", "depth", "normal"), num_classes: int = 7) -> MultiTaskModel:
    option, tiny = ZOO[name] if name in ZOO else (name, tiny_settings(name))
    node = OmegaConf.merge(OmegaConf.load(CONF / f"{option}.yaml"), tiny)
    model = instantiate(node, _convert_="all", tasks=build_tasks(list(task_names), num_classes))
    if name not in ZOO and model.num_parameters() > MAX_TINY_PARAMETERS:
        sizes = sorted(k for k, v in node.items() if isinstance(v, (int, float)) and not isinstance(v, bool))
        raise AssertionError(
            f"conf/backbone/{name}.yaml is not listed in tests/models/backbone_zoo.py, and the default tiny "
            f"settings {tiny} leave it {model.num_parameters():,} parameters (more than {MAX_TINY_PARAMETERS:,}): "
            f"add ZOO[{name!r}] = ({name!r}, dict(...)) with values of its settings {sizes} that make it tiny")
    return model


def hard_sharing(name: str, model: MultiTaskModel) -> bool:
    """Whether every head reads one shared representation: HARD_SHARING for ZOO's entries, the model's
    own answer (a ``representation_key`` or the soft-sharing refusal) for an unlisted option."""
    if name in ZOO:
        return name in HARD_SHARING
    try:
        model.representation_key
    except NoSharedRepresentation:
        return False
    return True


def tiny_overrides(option: str) -> list[str]:
    """Command-line overrides that make ``backbone=<option>`` tiny."""
    return [f"backbone.{k}={v}".replace(" ", "") for k, v in tiny_settings(option).items()]
