"""Model selection (okd/engine/selection.py, conf/selection/): the best epoch's rule in each direction,
its checks, its config group, and the old spellings of its keys."""
from __future__ import annotations

import json
import math

import pytest
from omegaconf import open_dict

from okd.app import run
from okd.config import compose as compose_cfg
from okd.config import moved_overrides
from okd.engine.selection import ModelSelection
from tests.helpers import run_cli

DIRECTIONS = {"segmentation/miou": True, "depth/abs_err": False}
TINY = ["dataset.train_size=16", "dataset.val_size=8", "dataset.test_size=8", "dataset.height=32",
        "dataset.width=32", "trainer.batch_size=8", "trainer.progress=false", "logger=none", "backbone.width=0.0625"]


def _rows(**values: float) -> dict:
    return {"val": dict(values), "test": {"loss": 0.0}}


def _chosen(selection: ModelSelection, series: list[dict]) -> list[bool]:
    return [selection.update(epoch, _rows(**row)) for epoch, row in enumerate(series)]


@pytest.mark.parametrize("monitor, mode, series, improved", [
    ("loss", "auto", [{"loss": 3.0}, {"loss": 2.0}, {"loss": 2.5}, {"loss": 1.0}], [True, True, False, True]),
    ("segmentation/miou", "auto", [{"segmentation/miou": 10.0}, {"segmentation/miou": 5.0},
                                   {"segmentation/miou": 12.0}], [True, False, True]),
    ("depth/abs_err", "auto", [{"depth/abs_err": 1.0}, {"depth/abs_err": 2.0}], [True, False]),
    ("loss", "max", [{"loss": 1.0}, {"loss": 2.0}, {"loss": 1.5}], [True, True, False]),
    ("segmentation/miou", "min", [{"segmentation/miou": 10.0}, {"segmentation/miou": 5.0}], [True, True]),
])
def test_best_epoch_follows_the_monitor_in_its_direction(monitor, mode, series, improved):
    selection = ModelSelection(monitor=monitor, mode=mode)
    selection.bind(DIRECTIONS, "val", ["val", "test"])
    assert _chosen(selection, series) == improved
    last_best = max(i for i, flag in enumerate(improved) if flag)
    assert selection.best["epoch"] == last_best and selection.best["split"] == "val"
    assert selection.best["value"] == series[last_best][monitor]


def test_non_finite_values_never_become_the_best_and_state_round_trips():
    selection = ModelSelection()
    selection.bind(DIRECTIONS, "val", ["val"])
    assert _chosen(selection, [{"loss": math.nan}, {"loss": 2.0}, {"loss": math.inf}]) == [False, True, False]
    again = ModelSelection()
    again.bind(DIRECTIONS, "val", ["val"])
    again.load_state_dict(selection.state_dict())
    assert again.best == selection.best and again.update(3, _rows(loss=3.0)) is False


@pytest.mark.parametrize("kwargs, bind, message", [
    (dict(monitor="depth/nope"), ("val", ["val"]), "selection.monitor='depth/nope' is not a metric"),
    (dict(split="train"), ("val", ["val", "test"]), "selection.split='train' is not evaluated"),
    (dict(), (None, ["test"]), "set selection.split=test"),
])
def test_settings_that_cannot_work_are_named(kwargs, bind, message):
    with pytest.raises(ValueError, match=message):
        ModelSelection(**kwargs).bind(DIRECTIONS, *bind)


@pytest.mark.parametrize("kwargs, message", [
    (dict(mode="up"), "selection.mode='up'"), (dict(headline="first"), "selection.headline='first'"),
    (dict(last_n=0), "selection.last_n must be a positive integer"),
])
def test_bad_arguments_fail_when_built(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ModelSelection(**kwargs)


def test_the_config_group_builds_it_and_the_summary_reports_its_choices(tmp_path):
    summary = run(compose_cfg([*TINY, "trainer.epochs=3", "selection.monitor=segmentation/miou",
                               "selection.split=test", "selection.headline=last", "selection.last_n=2"]), tmp_path)
    values = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    test_miou = [r["segmentation/miou"] for r in values if r["split"] == "test"]
    assert summary["best"]["epoch"] == max(range(3), key=lambda e: (test_miou[e], -e))
    assert summary["best"]["split"] == summary["select_split"] == "test"
    assert summary["selection"]["last_n_mean"]["epochs"] == [1, 2]


def test_old_keys_are_rewritten_with_a_note():
    args, notes = moved_overrides(["trainer.monitor=depth/abs_err", "+dataset.select_split=test",
                                   "delta.selection=last", "delta.last_n=3", "seed=1"])
    assert args == ["selection.monitor=depth/abs_err", "selection.split=test", "selection.headline=last",
                    "selection.last_n=3", "seed=1"]
    assert len(notes) == 4 and "trainer.monitor is now selection.monitor" in notes[0]


def test_old_key_on_the_command_line_still_works(tmp_path):
    proc = run_cli(tmp_path, *TINY, "trainer.epochs=1", "trainer.monitor=depth/abs_err")
    assert proc.returncode == 0, proc.stderr
    assert "trainer.monitor is now selection.monitor" in proc.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["best"]["monitor"] == "depth/abs_err"


def test_old_key_in_a_config_file_fails_naming_the_new_one(tmp_path):
    cfg = compose_cfg(TINY)
    with open_dict(cfg.trainer):  # what an experiment file of an earlier version adds when composed
        cfg.trainer.monitor = "loss"
    with pytest.raises(ValueError, match=r"trainer.monitor is now selection.monitor.*set selection.monitor: loss"):
        run(cfg, tmp_path)


def _as_earlier_okd_wrote_it(checkpoint) -> None:
    """Rewrite a checkpoint's saved config and overrides in the layout of okd before conf/selection/."""
    import torch

    state = torch.load(checkpoint, weights_only=True)
    config = state["config"]
    selection = config.pop("selection")
    config["trainer"]["monitor"] = selection["monitor"]
    config["dataset"]["select_split"] = selection["split"]
    config["delta"].update(selection=selection["headline"], last_n=selection["last_n"])
    state["overrides"] = [o.replace("selection.monitor", "trainer.monitor") for o in state["overrides"]]
    torch.save(state, checkpoint)


def test_a_run_of_an_earlier_okd_resumes_and_evaluates_with_its_selection(tmp_path):
    """Checkpoints saved before model selection had its group: their old keys are moved where they
    live now, so the resume keeps choosing by the run's own monitor, and mode=eval builds the model."""
    run_dir = tmp_path / "run"
    assert run_cli(tmp_path, *TINY, "trainer.epochs=1", "selection.monitor=depth/abs_err").returncode == 0
    _as_earlier_okd_wrote_it(run_dir / "checkpoints" / "last.pt")
    resumed = run_cli(tmp_path, *TINY, "trainer.epochs=1", "trainer.monitor=depth/abs_err", "trainer.resume=true")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((run_dir / "summary.json").read_text())["best"]["monitor"] == "depth/abs_err"
    _as_earlier_okd_wrote_it(run_dir / "checkpoints" / "best.pt")
    evaluated = run_cli(tmp_path, "mode=eval", f"ckpt={run_dir / 'checkpoints' / 'best.pt'}", "logger=none")
    assert evaluated.returncode == 0, evaluated.stderr
