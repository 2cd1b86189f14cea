"""Where a run computes: its device (``trainer.device``) and its CPU threads (``trainer.threads``)."""
from __future__ import annotations

import os
from typing import Mapping

import torch


def select_device(device: str) -> torch.device:
    """``auto`` picks CUDA when present, else the CPU; anything else is passed to torch.device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except RuntimeError as err:  # torch's own message lists every device type it knows
        raise ValueError(f"trainer.device={device!r} is not a device: expected auto, cpu, cuda or cuda:<index> "
                         f"({str(err).splitlines()[0]})") from err
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"trainer.device={device!r} but no CUDA device is available; use auto or cpu")
    return chosen


def default_threads(env: Mapping[str, str] | None = None) -> int:
    """The CPU threads this job was given: ``OMP_NUM_THREADS`` (set by okd's joblib launcher and by
    users), else SLURM's ``--cpus-per-task``, else the cores this process may run on.

    torch's own default is every core of the machine: on a shared node, or under SLURM without CPU
    binding, several jobs then each spin that many threads (an epoch measured 18.4 s instead of 2.4 s
    on a busy 2-core machine)."""
    env = os.environ if env is None else env
    for key in ("OMP_NUM_THREADS", "SLURM_CPUS_PER_TASK"):
        value = env.get(key, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
