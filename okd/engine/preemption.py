"""Preemption: SIGTERM / SIGUSR1 end a run at a step boundary with a checkpoint, and SLURM requeues it.

The trainer installs :func:`install_handlers` for the length of ``fit``; a handler only records the
signal, and the loop acts on it at the end of the current step (under DDP: at the next point where the
processes agree), saves ``last.pt`` and raises :class:`Preempted`. :func:`after_save` then puts the job
back in SLURM's queue when the signal was the time-limit warning (SIGUSR1); on SIGTERM (preemption,
``scancel``) SLURM requeues jobs of ``--requeue`` partitions itself.
"""
from __future__ import annotations

import signal
import subprocess
import threading
from pathlib import Path
from typing import Any, Callable

from okd import distributed
from okd.logging import console as log

#: the signals that end a run with a checkpoint: SLURM's preemption/cancel (TERM), its time-limit warning (USR1)
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preempted(Exception):
    """Raised at the end of the step during which SIGTERM/SIGUSR1 arrived (after saving last.pt)."""

    def __init__(self, signum: int, epoch: int, step: int) -> None:
        super().__init__(f"signal {signum} in epoch {epoch} at step {step}")
        self.signum, self.epoch, self.step = signum, epoch, step

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # what a process killed by the signal reports (143 / 138)


class SignalFlag:
    """The pending signal of a fit (0: none): set by the handler, agreed across DDP processes so that
    all of them stop at the same step."""

    def __init__(self) -> None:
        self.signum = 0

    def __call__(self, signum: int, frame: Any) -> None:
        self.signum = signum  # acted on at the end of the current step (under DDP: the next one)

    def note(self, agreed: int) -> bool:
        """Take a vote's result (also in a process that did not receive the signal itself)."""
        if agreed:
            self.signum = agreed
        return bool(agreed)

    def agree(self) -> int:
        """The pending signal as every process sees it (a collective under DDP)."""
        self.note(distributed.any_rank(self.signum))
        return self.signum


def install_handlers(handler: Callable[[int, Any], None]) -> dict:
    """Route :data:`SIGNALS` to ``handler``; returns the previous handlers for :func:`restore_handlers`."""
    if threading.current_thread() is not threading.main_thread():
        return {}  # signal handlers can only be set from the main thread
    return {sig: signal.signal(sig, handler) for sig in SIGNALS}


def restore_handlers(previous: dict) -> None:
    for sig, old in previous.items():
        signal.signal(sig, old)


def after_save(stop: Preempted, checkpoint: Path, requeue: bool) -> None:
    """Say where the run stopped; on SIGUSR1 inside a SLURM job, requeue that job (trainer.requeue)."""
    from okd.slurm import requeue_target

    name = signal.Signals(stop.signum).name
    log.info(f"okd: {name} received: saved {checkpoint} at epoch {stop.epoch}, step {stop.step}; resume with "
             f"trainer.resume=true (or auto) in this run dir")
    job = requeue_target()
    if requeue and job and stop.signum == signal.SIGUSR1:
        # As Lightning's SLURM plugin does: put this job (only this array task) back in the queue; it
        # resumes from last.pt. SLURM then ends this process with SIGTERM: nothing may be left to do.
        result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
        log.info(f"okd: scontrol requeue {job}: {'ok' if result.returncode == 0 else result.stderr.strip()}")

