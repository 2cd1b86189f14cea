"""Helpers shared by several test modules (imported as ``tests.helpers``; fixtures are in tests/conftest.py).

Configs are composed with :func:`okd.config.compose`, the one Hydra composition of conf/ that okd.bench
and the sweep tools use too.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
#: where the dataset loaders' error messages send the reader
DATA_DOCS = 'README.md, section "Data"'


def options(group: str) -> list[str]:
    """The options of a config group (conf/<group>/*.yaml)."""
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def run_cli(cwd: Path, *overrides: str) -> subprocess.CompletedProcess:
    """``python run.py <overrides>`` in ``cwd`` (run directory ``cwd/run``), W&B offline."""
    env = {**os.environ, "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "1"}
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *overrides, f"hydra.run.dir={cwd / 'run'}"],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


#: a one-epoch run of a tiny network without a tracker (train_cli)
TINY_RUN = ("trainer.epochs=1", "logger=none", "backbone.width=0.0625", "trainer.progress=false", "trainer.batch_size=4")


def train_cli(cwd: Path, *overrides: str) -> dict:
    """``python run.py <overrides>`` as a tiny one-epoch run (:data:`TINY_RUN`) that must succeed; its summary."""
    proc = run_cli(cwd, *overrides, *TINY_RUN)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads((cwd / "run" / "summary.json").read_text())


def dataset_tree_fixtures(layout: str, n_train: int, n_test: int, height: int, width: int):
    """The fixtures ``pristine`` (a tiny synthetic tree in ``layout``'s format, written once per module)
    and ``tree`` (a fresh copy of it that a test may damage)."""
    from okd.data.synthetic import write_layout

    @pytest.fixture(scope="module")
    def pristine(tmp_path_factory) -> Path:
        return write_layout(tmp_path_factory.mktemp(layout) / layout, layout, n_train, n_test, height, width)

    @pytest.fixture
    def tree(pristine, tmp_path) -> Path:
        return Path(shutil.copytree(pristine, tmp_path / layout))

    return pristine, tree
