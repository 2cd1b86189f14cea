"""Every backbone option trains through the real loop, as a single-task network too, and from the CLI."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.models.backbone_zoo import OPTIONS, build, tiny_overrides
from okd.app import run
from okd.config import compose as compose_cfg

ROOT = Path(__file__).resolve().parents[2]
CLI_OPTIONS = [o for o in OPTIONS if o != "segnet"]  # segnet: tests/test_training.py
DATA = ["dataset.train_size=8", "dataset.val_size=4", "dataset.test_size=4", "dataset.height=32",
        "dataset.width=32", "trainer.batch_size=4", "trainer.progress=false", "logger=none", "trainer.epochs=1"]


@pytest.mark.parametrize("option", CLI_OPTIONS)
def test_single_task_network_of_every_backbone(tmp_path, option):
    """``dataset.tasks=[depth]``: the STL baseline / teacher with the same backbone and one head."""
    summary = run(compose_cfg([f"backbone={option}", *tiny_overrides(option), "dataset.tasks=[depth]", *DATA]), tmp_path)
    assert summary["tasks"] == ["depth"]
    assert summary["num_parameters"] == build(option, ["depth"]).num_parameters()
    assert np.isfinite(summary["final"]["test"]["depth/abs_err"])


@pytest.mark.slow
@pytest.mark.parametrize("option", ["resnet50", "vit_tiny"])
def test_cli_run_logs_the_parameter_count(tmp_path, option):
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), f"backbone={option}", *tiny_overrides(option), *DATA,
         f"hydra.run.dir={tmp_path}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    count = build(option).num_parameters()  # 3 tasks, 7 classes: the synthetic dataset's default
    assert summary["num_parameters"] == count
    assert f"{count:,} parameters" in proc.stdout + proc.stderr
    assert summary["tasks"] == ["segmentation", "depth", "normal"]
