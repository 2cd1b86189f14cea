"""What a non-finite training loss does (``trainer.nan_policy``): ``stop`` ends the run naming the task,
epoch and step (the last good checkpoint is kept); ``skip`` drops such a step before it changes anything."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

POLICIES = ("stop", "skip")


class NanPolicy:
    def __init__(self, policy: str = "stop") -> None:
        if policy not in POLICIES:
            raise ValueError(f"trainer.nan_policy must be 'stop' or 'skip', got {policy!r}")
        self.skip = policy == "skip"

    def check(self, first_bad: Tensor, tasks: Sequence[str], epoch: int, last_checkpoint: Path) -> None:
        """``first_bad``: per task, the first step of the epoch with a non-finite loss (-1: none); one
        host sync, made at log intervals and epoch ends only."""
        if self.skip:
            return
        bad = [(name, s) for name, s in zip(tasks, first_bad.tolist()) if s >= 0]
        if bad:
            where = ", ".join(f"task {name!r} at step {s}" for name, s in bad)
            raise FloatingPointError(
                f"non-finite training loss in epoch {epoch}: {where}; stopping. The last good checkpoint is "
                f"{last_checkpoint} (trainer.nan_policy=skip skips such steps instead)")

    def check_means(self, losses: Sequence[float], tasks: Sequence[str], epoch: int, last_checkpoint: Path) -> None:
        """An epoch's mean training losses (host values): a non-finite one stops the run under either policy."""
        for name, value in zip(tasks, losses):
            if not math.isfinite(value):
                raise FloatingPointError(f"the training loss of task {name!r} is {value} in epoch {epoch}; stopping "
                                         f"(last good checkpoint: {last_checkpoint})")

    def step_is_finite(self, losses: Tensor, optimizer: torch.optim.Optimizer, scaled: bool) -> bool:
        """Under ``skip``: are this step's losses and gradients finite? (The one per-step host sync this
        policy needs; with fp16 loss scaling overflowing gradients are the scaler's business.)"""
        if scaled:
            return bool(torch.isfinite(losses.detach()).all())
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        norms = torch.stack([losses.detach().sum()] + [g.norm() for g in grads]) if grads else losses.detach()
        return bool(torch.isfinite(norms).all())
