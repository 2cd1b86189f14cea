"""Checks of a method's constructor arguments: the one place their error message is written.

Every method checks its arguments when it is built (before the run starts), and says
``<Method>: <name> must be <what>, got <value>``; ``run.py`` prints that as one line
(okd/errors.py).
"""
from __future__ import annotations

import math
from typing import Iterable


def is_number(value: object) -> bool:
    """A finite int or float; bool is excluded (True is not a hyper-parameter value)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def require(ok: bool, owner: str, name: str, must: str, value: object) -> None:
    """Raise ``ValueError("<owner>: <name> must be <must>, got <value!r>")`` unless ``ok``."""
    if not ok:
        raise ValueError(f"{owner}: {name} must be {must}, got {value!r}")


def require_choice(owner: str, name: str, value: object, allowed: Iterable) -> None:
    """``value`` is one of ``allowed`` (a tuple, or a dict's keys)."""
    allowed = list(allowed)
    require(value in allowed, owner, name, f"one of {allowed}", value)
