"""Multi-GPU training of one run: ``torchrun --nproc_per_node=N run.py ...`` (DistributedDataParallel).

Every process runs the same Hydra job on its own shard of each batch. This module is the one place
that talks to ``torch.distributed``; every function is a no-op (or the identity) in a single
process, so the trainer, the weightings and the distillers call them unconditionally.

What makes N processes train the same model as one process with N times the batch:

* the student is wrapped in DDP, which averages gradients during ``backward`` for methods that
  backpropagate once (loss-based weightings); methods that manipulate per-task gradients run with
  DDP's synchronisation off and average the finished gradients themselves
  (:func:`average_gradients_`), after averaging the per-task gradients they reason about
  (``BoundModel.reduce_gradients`` = :func:`average`);
* loss values are made global (:func:`global_values`): every process sees the mean loss of the
  whole batch, so weights computed from losses (DWA, GradNorm, FAMO, OTW, ...) are the same
  everywhere while each process's autograd graph stays its own;
* parameters outside the DDP module (UW's log-variances, AFD gates and adaptors, OKD's teachers)
  have their gradients averaged with :func:`average_gradients_` before their optimizers step;
* evaluation shards a split without padding and sums the metric accumulators
  (:func:`reduce_metric_`), so the numbers equal a single-process evaluation.
"""
from __future__ import annotations

import os
from contextlib import nullcontext
from datetime import timedelta
from typing import Any, Iterable, Iterator, Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import Sampler

from okd.launch import launched_with_torchrun


def init_from_env(timeout_s: float = 1800.0) -> bool:
    """Join the process group torchrun describes in the environment (RANK, WORLD_SIZE, MASTER_*).

    CPU tensors go through gloo, CUDA tensors through NCCL (when available), so ``trainer.device=cpu``
    works on a GPU node too. Returns False (and does nothing) outside torchrun.
    """
    if not launched_with_torchrun() or is_distributed():
        return is_distributed()
    backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    return True


def shutdown() -> None:
    if is_distributed():
        dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", rank())) if is_distributed() else 0


def is_main() -> bool:
    """Rank 0: the only process that logs, prints and writes files."""
    return rank() == 0


def device_for(requested: torch.device) -> torch.device:
    """Each process gets its own GPU (``cuda:LOCAL_RANK``); CPU stays CPU."""
    if is_distributed() and requested.type == "cuda":
        return torch.device("cuda", local_rank() % torch.cuda.device_count())
    return requested


# -- collectives (identity in one process) ------------------------------------------------------
def all_reduce_sum_(tensor: Tensor) -> Tensor:
    """Sum ``tensor`` over the processes, in place."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def average(tensor: Tensor) -> Tensor:
    """The mean of ``tensor`` over the processes (a new tensor; autograd does not see it)."""
    if not is_distributed():
        return tensor
    out = tensor.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.div_(world_size())


def global_values(losses: Tensor) -> Tensor:
    """Loss values of the whole batch with the gradient of this process's shard.

    ``L + (mean_r L_r - L).detach()`` has the value mean_r L_r (the same on every process) and
    d/dtheta = dL_r/dtheta. Any f(L) a method backpropagates then gives, averaged by DDP,
    f'(mean L) * mean_r dL_r/dtheta = d f(L_global)/dtheta: exactly the one-process gradient.
    """
    if not is_distributed():
        return losses
    detached = losses.detach()
    return losses + (average(detached) - detached)


def average_gradients_(params: Iterable[nn.Parameter]) -> None:
    """Average ``.grad`` of ``params`` over the processes, in one flat all-reduce per dtype/device.

    A parameter without a gradient on this process contributes zeros (every process must take part
    in the same collective, whatever its own graph reached) and keeps ``grad=None`` (the optimizer
    skips it, as it would in one process).
    """
    if not is_distributed():
        return
    params = [p for p in params if p.requires_grad]
    groups: dict[tuple, list[nn.Parameter]] = {}
    for p in params:
        groups.setdefault((p.device, p.dtype), []).append(p)
    for group in groups.values():
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in group])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat.div_(world_size())
        offset = 0
        for p in group:
            n = p.numel()
            if p.grad is not None:
                p.grad.copy_(flat[offset: offset + n].view_as(p))
            offset += n


def broadcast_module_(module: nn.Module, buffers_only: bool = False) -> None:
    """Copy rank 0's parameters and buffers (e.g. batch-norm statistics) to every process."""
    if not is_distributed():
        return
    tensors = list(module.buffers()) if buffers_only else [*module.parameters(), *module.buffers()]
    with torch.no_grad():
        for t in tensors:
            dist.broadcast(t.data, src=0)


def any_rank(value: int) -> int:
    """The largest ``value`` over the processes (e.g. a signal number, 0 for none).

    A CPU tensor: the process group always has gloo for CPU tensors (see :func:`init_from_env`).
    """
    if not is_distributed():
        return value
    t = torch.tensor([value], dtype=torch.long)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


class SignalVote:
    """A per-step agreement on a pending signal under DDP that never waits on the network or the GPU.

    Each step starts a non-blocking all-reduce (MAX, a CPU tensor through gloo) of this process's
    pending signal and reads the one started a step earlier, which has long arrived: every process
    sees the same result after the same step, so all stop one step after the first of them got the
    signal. (torchrun and SLURM kill processes that have not ended some 30 s after SIGTERM: an
    agreement only every ``log_every_n_steps`` steps could come too late.) In one process it returns
    the local value.
    """

    def __init__(self) -> None:
        self._work: Any = None
        self._value: torch.Tensor | None = None

    def step(self, local: int) -> int:
        if not is_distributed():
            return local
        agreed = self.drain()
        self._value = torch.tensor([local], dtype=torch.long)
        self._work = dist.all_reduce(self._value, op=dist.ReduceOp.MAX, async_op=True)
        return agreed

    def drain(self) -> int:
        """The result of the vote in flight (0 if none); every process must call it at the same point."""
        if self._work is None:
            return 0
        self._work.wait()
        self._work = None
        return int(self._value.item())


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def broadcast_object(value: object) -> object:
    """Rank 0's ``value`` on every process (a small picklable object)."""
    if not is_distributed():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def reduce_metric_(metric) -> None:
    """Sum a TaskMetric's accumulators over the processes (same names, shapes and order everywhere)."""
    if not is_distributed():
        return
    for name, value in sorted(metric.state().items()):
        dist.all_reduce(value, op=dist.ReduceOp.SUM)


def reduce_evaluation_(loss_sum: Tensor, count: int, metrics: Iterable) -> int:
    """Sum an evaluation's per-split accumulators (loss sums, sample count, TaskMetrics) over the
    processes, each of which evaluated its shard; returns the split's sample count."""
    if not is_distributed():
        return count
    dist.all_reduce(loss_sum, op=dist.ReduceOp.SUM)
    for metric in metrics:
        reduce_metric_(metric)
    return int(all_reduce_sum_(torch.tensor([count], dtype=torch.long)).item())


def no_sync(model: nn.Module, active: bool):
    """DDP's ``no_sync()`` when ``active`` (gradients averaged by hand afterwards), else nothing."""
    if active and isinstance(model, nn.parallel.DistributedDataParallel):
        return model.no_sync()
    return nullcontext()


# -- samplers -----------------------------------------------------------------------------------
class ShardSampler(Sampler[int]):
    """Evaluation shard of this process: indices rank, rank + N, ... -- no padding, no sample twice,
    so summing the per-process accumulators gives the single-process numbers exactly."""

    def __init__(self, num_samples: int, rank: int, world_size: int) -> None:
        self.indices: Sequence[int] = range(rank, num_samples, world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
