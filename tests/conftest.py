"""Test-wide settings and shared fixtures: W&B never touches the network, torch stays on few threads
(2-core CI). Shared helper functions are in tests/helpers.py (``from tests.helpers import ...``)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HYDRA_FULL_ERROR", "1")
# One thread: the tests use tiny tensors, where extra threads only add overhead (and oversubscribe
# the 2-core CI machine while subprocess tests run).
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")  # what trainer.threads=null then gives every run


@pytest.fixture
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module's tests (``pytestmark = pytest.mark.usefixtures("one_thread")``),
    restored afterwards: tiny networks gain nothing from intra-op threads, and on the shared 2-core
    machine a second thread per process made each forward pass several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
