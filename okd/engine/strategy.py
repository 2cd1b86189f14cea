"""How the student is spread over processes: one process, or DistributedDataParallel under torchrun.

The low-level collectives live in :mod:`okd.distributed`; this part decides what the training loop
does with them: wrap the student, keep DDP's reducer out of methods that backpropagate once per task,
and average by hand the gradients DDP does not see. In one process every method is the identity.
"""
from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

from torch import nn

from okd import distributed
from okd.weighting.base import LossWeighting


class Strategy:
    """The distributed side of a fit (the trainer's ``strategy``)."""

    def __init__(self) -> None:
        self.world_size = 1
        self.is_main = True
        self.manual_sync = False                    # gradients averaged by hand instead of by DDP
        self.hand_synced: list[nn.Parameter] = []  # parameters whose gradients the trainer averages

    def setup(self) -> None:
        """Read this process's place in the job (torchrun's environment; 1 process otherwise)."""
        self.world_size, self.is_main = distributed.world_size(), distributed.is_main()

    def wrap(self, model: nn.Module, weighting: nn.Module, distiller: nn.Module, device: Any) -> nn.Module:
        """DDP around the student (rank 0's weights everywhere from the start); the model itself in one process."""
        if self.world_size == 1:
            return model
        # the weighting's and distiller's own parameters (UW's s, teachers, gates) start equal too
        distributed.broadcast_module_(weighting)
        distributed.broadcast_module_(distiller)
        # Methods that manipulate per-task gradients backpropagate K times: DDP's reducer must stay
        # out of it (no_sync); they average per-task gradients themselves, the trainer the result.
        self.manual_sync = not isinstance(weighting, LossWeighting)
        ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids, output_device=None if ids is None else ids[0])

    def track_parameters(self, optimizer: Any, student: nn.Module) -> None:
        """Note the optimizer's parameters whose gradients DDP does not average: those outside the
        student (learnable weights, AFD gates), or all of them when the weighting runs no_sync."""
        if self.world_size == 1:
            self.hand_synced = []
            return
        params = [p for group in optimizer.param_groups for p in group["params"]]
        inside = {id(p) for p in student.parameters()}
        self.hand_synced = params if self.manual_sync else [p for p in params if id(p) not in inside]

    def no_sync(self, train_model: nn.Module) -> AbstractContextManager:
        return distributed.no_sync(train_model, self.manual_sync)

    def sync_gradients(self) -> None:
        distributed.average_gradients_(self.hand_synced)

    def check(self, ctx: Any) -> None:
        """What DDP cannot run, said before training (``ctx``: the run's RunContext)."""
        n = self.world_size
        if n == 1:
            return
        if ctx.weighting.needs_representation:
            raise ValueError(
                f"weighting {ctx.choices.get('weighting', type(ctx.weighting).__name__)} works on the gradients of the "
                f"shared representation, which are per sample: under DDP ({n} processes) each process only has its "
                f"shard's, and the method's solution on the whole batch cannot be formed from them. Run it in one "
                f"process, or use its parameter-gradient variant (e.g. weighting=mgda, weighting=alignedmtl); see the "
                f"README's DDP section for the list")
        for split, dataset in {"train": ctx.data.train, **ctx.data.eval_splits}.items():
            if len(dataset) < n:
                raise ValueError(f"split {split!r} of {ctx.data.name!r} has {len(dataset)} samples, fewer than the "
                                 f"{n} processes of this DDP job")
