"""Every option of every config group composes and instantiates into the real object."""
from __future__ import annotations

import pytest
from hydra.utils import instantiate

from okd.config import compose as compose_cfg  # ${hydra:...} interpolations resolve as in a real run
from okd.data.base import DataBundle
from okd.engine.trainer import Trainer
from okd.kd.base import Distiller
from okd.logging import Logger
from okd.models.base import MultiTaskModel
from okd.tasks import build_tasks
from okd.weighting.base import Weighting
from tests.helpers import options

TINY_DATA = ["dataset.train_size=4", "dataset.val_size=2", "dataset.test_size=2",
             "dataset.height=32", "dataset.width=32"]


def test_default_config_composes_with_every_group():
    cfg = compose_cfg([])
    for group in ("dataset", "backbone", "weighting", "kd", "trainer", "logger"):
        assert "_target_" in cfg[group], group
    assert cfg.hydra.runtime.choices["experiment"] is None or cfg.hydra.runtime.choices.get("experiment") in (None, "null")
    assert cfg.hydra.run.dir.startswith("outputs/")
    assert cfg.hydra.sweep.dir.startswith("outputs/multirun/")
    assert cfg.hydra.job.chdir is False


@pytest.mark.parametrize("option", options("dataset"))
def test_dataset_options_build_a_bundle(option):
    cfg = compose_cfg([f"dataset={option}", *TINY_DATA] if option == "synthetic" else [f"dataset={option}"])
    if option != "synthetic":
        pytest.skip(f"dataset={option} needs files on disk (tested in its own module)")
    bundle = instantiate(cfg.dataset, _convert_="all")
    assert isinstance(bundle, DataBundle)
    assert len(bundle.train) == 4


@pytest.mark.parametrize("option", options("backbone"))
def test_backbone_options_build_a_model(option):
    cfg = compose_cfg([f"backbone={option}"])
    model = instantiate(cfg.backbone, _convert_="all", tasks=build_tasks(["segmentation", "depth", "normal"], 7))
    assert isinstance(model, MultiTaskModel)


@pytest.mark.parametrize("group, option, kind", [
    (group, option, kind) for group, kind in (("weighting", Weighting), ("kd", Distiller), ("trainer", Trainer))
    for option in options(group)])
def test_weighting_kd_and_trainer_options_build_their_object(group, option, kind):
    cfg = compose_cfg([f"{group}={option}"])
    assert isinstance(instantiate(cfg[group], _convert_="all"), kind)


@pytest.mark.parametrize("option", options("logger"))
def test_logger_options_build_a_logger(option):
    cfg = compose_cfg([f"logger={option}", "seed=3", "weighting=ew"])
    logger = instantiate(cfg.logger, _convert_="all")
    assert isinstance(logger, Logger)
    if option == "wandb":
        assert logger.group == "ew"  # a single run without a preset name: grouped by its method
        assert logger.tags == ["synthetic", "segnet", "ew", "kd-none"]
        assert logger.name == "ew seed=3"  # the method and the seed (the overrides that chose them)
        assert logger.mode == "offline"  # tests run without credentials / with WANDB_MODE=offline


@pytest.mark.parametrize("option", options("experiment"))
def test_experiment_presets_compose(option):
    cfg = compose_cfg([f"experiment={option}"])
    assert cfg.name == option  # every preset names itself (its W&B group)
    for group in ("dataset", "backbone", "weighting", "kd", "trainer", "logger"):
        assert "_target_" in cfg[group]


@pytest.mark.parametrize("option", [o for o in options("protocol") if o != "none"])  # the published ones
def test_protocols_set_dataset_backbone_and_schedule(option):
    cfg = compose_cfg([f"protocol={option}"])
    dataset, backbone = option.split("_", 1)
    assert cfg.hydra.runtime.choices["dataset"] == dataset
    assert cfg.hydra.runtime.choices["backbone"] == backbone
    assert cfg.trainer.epochs >= 100 and cfg.trainer.optimizer.lr == 1e-4 and cfg.backbone.pretrained is True
    assert compose_cfg([f"protocol={option}", "trainer.epochs=3"]).trainer.epochs == 3  # the command line wins


def test_protocol_none_is_no_protocol():
    """`protocol=none` (a preset on the synthetic scenes) composes what no protocol composes."""
    from omegaconf import OmegaConf

    plain, none = compose_cfg([], as_run=False), compose_cfg(["protocol=none"], as_run=False)
    assert OmegaConf.to_container(none, resolve=False) | {"hydra": None} == \
        OmegaConf.to_container(plain, resolve=False) | {"hydra": None}
    assert none.hydra.runtime.choices["protocol"] == "none"


@pytest.mark.parametrize("option", options("reference"))
def test_reference_numbers_fill_delta_reference(option):
    cfg = compose_cfg([f"reference={option}"])
    assert cfg.delta.reference["segmentation/miou"] > 0
    assert all("/" in key for key in cfg.delta.reference)


def test_objects_receive_plain_containers_not_dictconfig():
    from omegaconf import DictConfig, ListConfig
    cfg = compose_cfg(TINY_DATA)
    trainer = instantiate(cfg.trainer, _convert_="all")
    for value in vars(trainer).values():
        assert not isinstance(value, (DictConfig, ListConfig))
