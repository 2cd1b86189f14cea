"""The command line as a user types it, run from a fresh working directory."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN = str(ROOT / "run.py")
TINY = ["dataset.train_size=8", "dataset.val_size=4", "dataset.test_size=4", "dataset.height=32",
        "dataset.width=32", "trainer.batch_size=4", "trainer.progress=false"]


def okd(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.run([sys.executable, RUN, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"run.py {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_single_run_lands_in_dated_outputs_dir_with_wandb(tmp_path):
    proc = okd(tmp_path, "weighting=ew", "dataset=synthetic", "trainer.epochs=1", *TINY)
    run_dirs = list((tmp_path / "outputs").glob("*/*/summary.json"))
    assert len(run_dirs) == 1, "a run lands in outputs/<date>/<time>/ under the working directory"
    run_dir = run_dirs[0].parent
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert (run_dir / "metrics.jsonl").is_file()
    assert (run_dir / "checkpoints" / "last.pt").is_file()
    assert list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["choices"]["weighting"] == "ew" and summary["epochs"] == 1
    assert "results:" in proc.stderr and "W&B offline run" in proc.stderr  # tells where things are


def test_multirun_lands_in_numbered_dirs(tmp_path):
    okd(tmp_path, "-m", "seed=0,1", "logger=none", "trainer.epochs=1", *TINY)
    jobs = sorted(p.parent.name for p in (tmp_path / "outputs" / "multirun").glob("*/*/*/summary.json"))
    assert jobs == ["0", "1"]


def test_unknown_option_lists_the_available_ones(tmp_path):
    proc = okd(tmp_path, "weighting=nope", check=False)
    assert proc.returncode != 0
    assert "Could not find 'weighting/nope'" in proc.stderr
    assert "Available options" in proc.stderr and "ew" in proc.stderr and "dwa" in proc.stderr
    assert not (tmp_path / "outputs").exists() or not list((tmp_path / "outputs").glob("*/*/metrics.jsonl"))


def test_bad_value_is_one_clear_line_before_training(tmp_path):
    proc = okd(tmp_path, "trainer.batch_size=0", "logger=none", check=False)
    assert proc.returncode == 2
    assert "okd: error: trainer.batch_size must be a positive integer, got 0" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_help_lists_every_group_with_its_options(tmp_path):
    out = okd(tmp_path, "--help").stdout
    for group in ("dataset", "backbone", "weighting", "kd", "trainer", "logger", "protocol", "reference",
                  "experiment"):
        assert f"\n  {group} " in out, group  # one explanatory line per group
    conf = ROOT / "conf"
    for group in ("dataset", "backbone", "weighting", "kd", "logger", "protocol", "reference"):
        options = sorted(p.stem for p in (conf / group).glob("*.yaml"))
        assert f"{group}: {', '.join(options)}" in out


def test_predict_needs_only_the_checkpoint_and_the_input(tmp_path):
    okd(tmp_path, "trainer.epochs=1", "logger=none", "backbone.width=0.0625", "dataset.tasks=[depth,normal]",
        *TINY, f"hydra.run.dir={tmp_path / 'train'}")
    ckpt = tmp_path / "train" / "checkpoints" / "best.pt"
    okd(tmp_path, "mode=predict", f"ckpt={ckpt}", "input=split:test:2", f"hydra.run.dir={tmp_path / 'pred'}")
    files = sorted(p.name for p in (tmp_path / "pred" / "predictions").iterdir())
    assert files == ["test_0.npz", "test_0.png", "test_1.npz", "test_1.png"]
    import numpy as np
    with np.load(tmp_path / "pred" / "predictions" / "test_0.npz") as npz:
        assert sorted(npz.files) == ["depth", "image", "normal"]
        assert npz["depth"].shape == (32, 32)
    proc = okd(tmp_path, "mode=eval", f"ckpt={ckpt}", f"hydra.run.dir={tmp_path / 'eval'}")
    assert "training-time metrics of this checkpoint: identical" in proc.stdout
