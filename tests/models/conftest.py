"""Backbone tests run torch on one thread (tests/conftest.py ``one_thread``): the tiny networks gain nothing
from intra-op parallelism, and on the shared 2-core machine two threads per process made each forward pass
10-100x slower."""
from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield
