"""W&B beyond the per-epoch numbers, read back from the offline records: checkpoints as model
artifacts (``logger.log_model``), the ``mode=eval`` run, segmentation masks with class labels, and
``ckpt=wandb:...`` refused with one line where W&B cannot be reached."""
from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from okd.app import build, run
from okd.config import compose as compose_cfg
from okd.engine.checkpoint import load_checkpoint
from okd.logging import ArtifactError, WandbLogger, parse_artifact_ref
from okd.predict import IGNORED_MASK_ID, collect_inputs, predict
from tests.wandb_records import read_run, records

ROOT = Path(__file__).resolve().parents[1]
TINY = ["dataset.train_size=8", "dataset.val_size=4", "dataset.test_size=4", "dataset.height=32",
        "dataset.width=32", "trainer.batch_size=4", "trainer.progress=false", "trainer.threads=1",
        "backbone.width=0.0625", "trainer.epochs=1"]
WANDB = ["logger=wandb", "logger.mode=offline"]


def wandb_file(run_dir: Path) -> Path:
    (path,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    return path


def artifacts(path: Path) -> list:
    """The ArtifactRecords of an offline run (what `wandb sync` uploads)."""
    return [r.artifact for r in records(path) if r.WhichOneof("record_type") == "artifact"]


def md5_b64(path: Path) -> str:
    return base64.b64encode(hashlib.md5(Path(path).read_bytes()).digest()).decode()


@pytest.fixture(scope="module")
def staging(tmp_path_factory):
    """W&B copies artifact files to a staging folder (WANDB_DATA_DIR) until they are uploaded."""
    folder = tmp_path_factory.mktemp("wandb-data")
    before = os.environ.get("WANDB_DATA_DIR")
    os.environ["WANDB_DATA_DIR"] = str(folder)
    yield folder
    if before is None:
        os.environ.pop("WANDB_DATA_DIR", None)
    else:
        os.environ["WANDB_DATA_DIR"] = before


@pytest.fixture(scope="module")
def trained(tmp_path_factory, staging) -> Path:
    """A one-epoch run with logger.log_model=best and two logged prediction samples."""
    run_dir = tmp_path_factory.mktemp("train")
    cfg = compose_cfg([*TINY, *WANDB, "logger.log_model=best", "name=wb-art", "trainer.log_images=2"])
    run(cfg, run_dir, choices={"dataset": "synthetic", "backbone": "segnet", "weighting": "ew", "kd": "none"})
    return run_dir


def test_log_model_best_stores_best_pt_as_a_model_artifact_in_the_offline_run(trained, staging):
    record = read_run(wandb_file(trained))
    run_id = record["run"].run_id
    (artifact,) = artifacts(wandb_file(trained))
    assert (artifact.type, artifact.name) == ("model", f"model-{run_id}")
    assert "best" in artifact.aliases and "last" not in artifact.aliases
    (entry,) = artifact.manifest.contents
    best = trained / "checkpoints" / "best.pt"
    assert entry.path == "best.pt" and entry.size == best.stat().st_size and entry.digest == md5_b64(best)
    # offline: a copy waits in the staging folder for `wandb sync`, even if the run dir's file changes later
    assert Path(entry.local_path).is_relative_to(staging) and md5_b64(entry.local_path) == md5_b64(best)
    summary = json.loads((trained / "summary.json").read_text())
    metadata = json.loads(artifact.metadata)
    assert (metadata["best_epoch"], metadata["monitor"], metadata["monitor_split"]) == (
        summary["best"]["epoch"], summary["best"]["monitor"], summary["best"]["split"])
    assert metadata["monitor_value"] == pytest.approx(summary["best"]["value"])
    assert (metadata["method"], metadata["seed"], metadata["file"]) == ("ew", 0, "best.pt")
    assert record["summary"]["model_artifact"] == f"model-{run_id}"


def test_log_model_is_off_by_default_and_all_logs_best_and_last(trained, tmp_path, staging):
    assert compose_cfg(WANDB).logger.log_model is False
    checkpoints = trained / "checkpoints"
    for choice, expected in ((False, {}), ("all", {"best.pt": ["best"], "last.pt": ["last"]})):
        logger = WandbLogger(mode="offline", log_model=choice, project="okd-test")
        run_dir = tmp_path / str(choice)
        logger.start(run_dir, {"method": "ew", "seed": 3})
        logger.log_checkpoints(checkpoints)
        logger.finish()
        found = {a.manifest.contents[0].path: [x for x in a.aliases if x != "latest"]
                 for a in artifacts(wandb_file(run_dir))}
        assert found == expected, choice
        for a in artifacts(wandb_file(run_dir)):
            assert a.manifest.contents[0].digest == md5_b64(checkpoints / a.manifest.contents[0].path)
            assert json.loads(a.metadata)["seed"] == 3


def test_log_model_choices_and_a_failing_upload(trained, tmp_path, monkeypatch, caplog):
    with pytest.raises(ValueError, match=r"logger.log_model='yes': expected false, best .* or all"):
        WandbLogger(mode="offline", log_model="yes")
    # the staging folder cannot be created: one warning, the checkpoints stay, the run closes normally
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    monkeypatch.setenv("WANDB_DATA_DIR", str(blocker / "data"))
    logger = WandbLogger(mode="offline", log_model="best", project="okd-test")
    logger.start(tmp_path / "run", {"method": "ew", "seed": 0})
    with caplog.at_level(logging.WARNING, logger="okd"):
        logger.log_checkpoints(trained / "checkpoints")
    logger.finish()
    warnings = [r.getMessage() for r in caplog.records if r.name == "okd" and r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "W&B could not store the checkpoints as an artifact (PermissionError" in warnings[0]
    assert warnings[0].endswith(f"they are in {trained / 'checkpoints'}")
    assert (trained / "checkpoints" / "best.pt").is_file()
    assert not artifacts(wandb_file(tmp_path / "run"))
    assert read_run(wandb_file(tmp_path / "run"))["run"].run_id == logger.run_id


def test_panels_log_segmentation_masks_with_class_labels(trained):
    record = read_run(wandb_file(trained))
    row = record["history"][-1]
    cfg = compose_cfg([*TINY, "logger=none"])
    trainer, ctx = build(cfg, trained / "rebuilt")
    names = ctx.data.info["class_names"]
    labels = record["config"]["_wandb"]["mask/class_labels"]
    state = load_checkpoint(trained / "checkpoints" / "last.pt")  # the model the epoch-0 panels show
    ctx.model.load_state_dict(state["model"])
    inputs = collect_inputs("split:test:2", ctx.data.eval_splits)
    predictions = dict((item.name, pred) for item, pred in predict(ctx.model, ctx.tasks, inputs, "cpu"))
    files = wandb_file(trained).parent / "files"
    for i in range(2):
        key = f"test/masks/test_{i}"
        assert row[f"{key}/_type"] == "image-file" and (row[f"{key}/width"], row[f"{key}/height"]) == (32, 32)
        truth = ctx.data.eval_splits["test"][i]["segmentation"].numpy()
        for mask, expected in (("ground_truth", np.where(truth < 0, IGNORED_MASK_ID, truth)),
                               ("prediction", predictions[f"test_{i}"]["segmentation"])):
            assert row[f"{key}/masks/{mask}/_type"] == "mask"
            pixels = np.asarray(Image.open(files / row[f"{key}/masks/{mask}/path"]))
            np.testing.assert_array_equal(pixels, expected)
            classes = labels[f"{key}_wandb_delimeter_{mask}"]["value"]
            assert {int(k): v for k, v in classes.items() if int(k) != IGNORED_MASK_ID} == dict(enumerate(names))
        assert f"test/panel/test_{i}/_type" in row  # the panels stay


def test_eval_makes_one_eval_run_grouped_with_the_trained_run(trained, tmp_path):
    trained_run = read_run(wandb_file(trained))
    ckpt = trained / "checkpoints" / "best.pt"
    out = run(compose_cfg([*TINY, *WANDB, "mode=eval", f"ckpt={ckpt}"]), tmp_path / "eval")
    record = read_run(wandb_file(tmp_path / "eval"))
    assert record["run"].job_type == "eval"
    assert record["run"].run_group == trained_run["run"].run_group == "wb-art"
    assert record["run"].display_name == f"eval {trained_run['run'].display_name}"
    assert list(record["run"].tags) == [*trained_run["run"].tags, "eval"]
    config = record["config"]
    assert (config["method"], config["weighting"], config["seed"]) == ("ew", "ew", 0)
    assert config["ckpt"] == str(ckpt) and config["evaluated_run"] == trained_run["run"].run_id
    assert config["checkpoint_epoch"] == 0
    for split in ("val", "test"):
        for key, value in out["metrics"][split].items():
            assert record["summary"][f"{split}/{key}"] == pytest.approx(value), key
        assert record["summary"][f"{split}/matches_training_time_metrics"] == "identical"
        table = json.loads((wandb_file(tmp_path / "eval").parent / "files" /
                            record["summary"][f"{split}/eval/path"]).read_text())
        assert table["columns"] == ["metric", "value", "training_time", "higher_is_better"]
        rows = {r[0]: r[1:] for r in table["data"]}
        assert rows["segmentation/miou"][0] == pytest.approx(out["metrics"][split]["segmentation/miou"])
        assert rows["segmentation/miou"][2] is True and rows["depth/abs_err"][2] is False
        assert rows["depth/abs_err"][1] == pytest.approx(rows["depth/abs_err"][0])  # = training time


def test_predict_makes_no_tracker_run(trained, tmp_path):
    ckpt = trained / "checkpoints" / "best.pt"
    out = run(compose_cfg([*TINY, *WANDB, "mode=predict", f"ckpt={ckpt}", "input=split:test:1"]), tmp_path / "p")
    assert len(out["predictions"]) == 2 and not (tmp_path / "p" / "wandb").exists()


@pytest.mark.parametrize("ref", ["wandb:model-abc", "wandb:me/okd/model-abc", "wandb:okd/model-abc:best",
                                 "wandb:me//model-abc:best", "wandb:me/okd/model-abc:"])
def test_malformed_artifact_refs_say_the_syntax(ref):
    with pytest.raises(ArtifactError, match=r"expected wandb:<entity>/<project>/<artifact>:<alias or version>"):
        parse_artifact_ref(ref)
    assert parse_artifact_ref("wandb:me/okd/model-abc:v3") == ("me", "okd", "model-abc", "v3")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("case", ["offline", "unreachable", "malformed"])
def test_artifact_ref_that_cannot_be_fetched_is_one_line_and_status_2(tmp_path, case):
    """Through the command line, before any work, in seconds: W&B offline, its server unreachable, a bad ref."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_") and k != "HYDRA_FULL_ERROR"}
    env.update(OMP_NUM_THREADS="1", WANDB_SILENT="true")
    ref = "wandb:me/okd/model-abc123:best"
    if case == "offline":
        env["WANDB_MODE"] = "offline"
        expected = rf"okd: error: ckpt={ref}: W&B is offline \(WANDB_MODE=offline\), so the artifact cannot be"
    elif case == "unreachable":  # credentials, but nothing listens where the server should be
        env.update(WANDB_API_KEY="0" * 40, WANDB_BASE_URL=f"http://127.0.0.1:{_free_port()}")
        expected = rf"okd: error: ckpt={ref}: cannot reach the W&B server http://127.0.0.1:\d+ \("
    else:
        env["WANDB_MODE"] = "offline"
        ref = "wandb:model-abc123"
        expected = rf"okd: error: ckpt={ref}: not an artifact reference; expected wandb:<entity>/<project>/"
    started = time.monotonic()
    proc = subprocess.run([sys.executable, str(ROOT / "run.py"), "mode=eval", f"ckpt={ref}",
                           f"hydra.run.dir={tmp_path / 'eval'}"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    import re
    assert re.match(expected, lines[0]), lines[0]
    assert time.monotonic() - started < 60
    assert not (tmp_path / "eval" / "eval.json").exists() and not (tmp_path / "eval" / "checkpoint").exists()
    assert not (tmp_path / "eval" / "wandb").exists()


def test_eval_of_a_run_without_tracker_is_grouped_by_its_method(tmp_path):
    """The checkpoint of a logger=none run: the eval run is grouped and named by the checkpoint's method
    and seed (not by the eval command's own choices), tagged with its choices."""
    run(compose_cfg([*TINY, "logger=none", "seed=4", "weighting=dwa"]), tmp_path / "train",
        choices={"dataset": "synthetic", "backbone": "segnet", "weighting": "dwa", "kd": "none"})
    ckpt = tmp_path / "train" / "checkpoints" / "last.pt"
    run(compose_cfg([*TINY, *WANDB, "mode=eval", f"ckpt={ckpt}", "eval_split=test"]), tmp_path / "eval",
        overrides=["eval_split=test"])
    record = read_run(wandb_file(tmp_path / "eval"))
    assert (record["run"].run_group, record["run"].display_name) == ("dwa", "eval dwa seed=4")
    assert list(record["run"].tags) == ["synthetic", "segnet", "dwa", "kd-none", "eval"]
    assert record["config"]["eval_split"] == "test" and "val/segmentation/miou" not in record["summary"]
    assert record["summary"]["test/matches_training_time_metrics"] == "identical"
