"""okd.run_config: which config a resumed run continues with (plain dicts, no training)."""
from __future__ import annotations

import pytest

from okd.app import ResumeConflict, run
from okd.run_config import describe, resume
from okd.config import compose as compose_cfg

SAVED = {
    "seed": 0, "name": "default",
    "weighting": {"_target_": "okd.weighting.dwa.DWA", "temperature": 2.0},
    "trainer": {"epochs": 10, "resume": False, "progress": True, "optimizer": {"lr": 1e-3}},
    "logger": {"_target_": "okd.logging.WandbLogger", "mode": "auto", "name": "default[weighting=dwa]"},
    "delta": {"reference": None},
}
DEFAULTS = {**SAVED, "weighting": {"_target_": "okd.weighting.ew.EW"},
            "logger": {**SAVED["logger"], "name": "default"}}
PACKAGES = {"reference": ("delta", "reference"), "experiment": ()}


def _resume(current, overrides, saved_overrides=("weighting=dwa",)):
    return resume(SAVED, current, overrides, list(saved_overrides), {"weighting": "dwa", "logger": "wandb"},
                  {"weighting": "ew", "logger": "wandb"}, package_of=lambda group, option: PACKAGES.get(group))


def test_plain_resume_keeps_everything_the_command_does_not_name():
    result = _resume({**DEFAULTS, "trainer": {**SAVED["trainer"], "resume": True}}, ["trainer.resume=true"])
    assert not result.conflicts
    assert result.config == {**SAVED, "trainer": {**SAVED["trainer"], "resume": True}}
    assert result.choices["weighting"] == "dwa" and result.overrides == ["weighting=dwa", "trainer.resume=true"]


def test_a_requeue_repeats_the_start_command_and_changes_nothing():
    current = {**SAVED, "trainer": {**SAVED["trainer"], "resume": "auto"}}
    result = _resume(current, ["weighting=dwa", "trainer.resume=auto"])
    assert not result.conflicts and result.config["weighting"] == SAVED["weighting"]


def test_free_switches_apply_and_a_logger_of_another_class_is_taken_whole():
    current = {**DEFAULTS, "trainer": {**SAVED["trainer"], "epochs": 20, "progress": False},
               "logger": {"_target_": "okd.logging.NullLogger"}, "delta": {"reference": {"depth/abs_err": 0.5}}}
    result = _resume(current, ["trainer.epochs=20", "trainer.progress=false", "logger=none",
                               "reference=nyuv2_segnet_mtan"])
    assert not result.conflicts
    assert result.config["trainer"] == {**SAVED["trainer"], "epochs": 20, "progress": False}
    assert result.config["logger"] == {"_target_": "okd.logging.NullLogger"}
    assert result.config["delta"] == {"reference": {"depth/abs_err": 0.5}}
    assert result.config["weighting"] == SAVED["weighting"]
    mode_only = _resume({**DEFAULTS, "logger": {**DEFAULTS["logger"], "mode": "offline"}}, ["logger.mode=offline"])
    assert mode_only.config["logger"] == {**SAVED["logger"], "mode": "offline"}  # the run's W&B name stays


def test_overrides_that_change_the_run_are_conflicts_listed_one_per_line():
    current = {**DEFAULTS, "seed": 1, "trainer": {**SAVED["trainer"], "optimizer": {"lr": 0.1}}}
    result = _resume(current, ["weighting=ew", "seed=1", "trainer.optimizer.lr=0.1"])
    assert [c.override for c in result.conflicts] == ["weighting=ew", "seed=1", "trainer.optimizer.lr=0.1"]
    text = describe(result.conflicts, "outputs/x", {"weighting": "dwa"}, {"weighting": "ew"}).splitlines()
    assert text[0].startswith("trainer.resume: this command changes what the run in outputs/x computes")
    assert text[1:4] == ["  weighting=ew: the run has weighting=dwa, this command weighting=ew",
                         "  seed=1: seed is 0 in the run, 1 here",
                         "  trainer.optimizer.lr=0.1: trainer.optimizer.lr is 0.001 in the run, 0.1 here"]


def test_a_new_global_preset_is_compared_everywhere():
    result = _resume({**SAVED, "weighting": {"_target_": "okd.weighting.uw.UW"}}, ["experiment=uw"])
    assert [c.override for c in result.conflicts] == ["experiment=uw"]
    assert result.conflicts[0].changes[0][0] == ("weighting", "_target_")


def test_the_python_api_compares_the_whole_config(tmp_path):
    tiny = ["dataset.train_size=4", "dataset.val_size=2", "dataset.test_size=2", "dataset.height=32",
            "dataset.width=32", "trainer.batch_size=4", "trainer.progress=false", "logger=none",
            "trainer.log_images=0", "backbone.width=0.0625", "trainer.epochs=1"]
    run(compose_cfg([*tiny, "weighting=dwa"]), tmp_path)
    with pytest.raises(ResumeConflict, match=r"(?s)computes.*weighting._target_ is 'okd.weighting.dwa.DWA' in the run"):
        run(compose_cfg([*tiny, "weighting=uw", "trainer.resume=true"]), tmp_path)
    summary = run(compose_cfg([*tiny, "weighting=dwa", "trainer.resume=true", "trainer.epochs=2"]), tmp_path)
    assert summary["epochs"] == 2
