"""Errors a user can fix: ``run.py`` prints them as one line, ``okd: error: <message>``, and exits
with status 2 (README, "Bad input").

Raise :class:`OkdError` (or a subclass) for bad input -- a config value, a missing or unreadable file,
a checkpoint that does not fit -- with a message that says what was wrong, what is expected and
where. ``ValueError``/``OSError`` from okd's own checks are reported the same way. Any other exception
is a bug and keeps its traceback.
"""
from __future__ import annotations


class OkdError(Exception):
    """Bad input, reported as one line with exit status 2."""


class CheckpointError(OkdError, RuntimeError):
    """A checkpoint file that cannot be read: truncated, not a torch file, or unsafe to unpickle.
    (A RuntimeError too, which is what ``load_checkpoint`` raised before.)"""
