"""Test-wide settings: W&B never touches the network, torch stays on few threads (2-core CI)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))  # test helpers (wandb_records)

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HYDRA_FULL_ERROR", "1")
# One thread: the tests use tiny tensors, where extra threads only add overhead (and oversubscribe
# the 2-core CI machine while subprocess tests run).
torch.set_num_threads(1)


@pytest.fixture
def repo_root() -> Path:
    return ROOT
