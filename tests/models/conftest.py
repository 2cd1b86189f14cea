"""Backbone tests run torch on one thread: the tiny networks gain nothing from intra-op parallelism, and
on the shared 2-core machine two threads per process made each forward pass 10-100x slower."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
