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


def place_model(model: torch.nn.Module, device: torch.device, *, channels_last: bool = False,
                cudnn_benchmark: bool = True, deterministic: bool = False) -> torch.nn.Module:
    """Move ``model`` to ``device`` in the memory format asked for, and set the kernel choices."""
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    model = model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if device.type == "cuda":
        # static shapes (fixed-size datasets): let cuDNN pick the fastest kernels once
        torch.backends.cudnn.benchmark = cudnn_benchmark and not deterministic
    return model


def compile_forward(module: torch.nn.Module, options: Mapping) -> torch.nn.Module:
    """``torch.compile`` a forward pass for static shapes (``trainer.compile``: its arguments)."""
    try:
        return torch.compile(module, **{"dynamic": False, **options})
    except (TypeError, RuntimeError) as err:
        raise ValueError(f"trainer.compile={dict(options)}: torch.compile rejected it: {err}") from err
