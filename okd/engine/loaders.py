"""The data loaders of a fit: a resumable, seeded shuffle for training (this process's share under
DDP) and unpadded shards for evaluation."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from okd import distributed
from okd.engine.sampler import ResumableRandomSampler


def make_loader(dataset: Dataset, batch_size: int, *, shuffle: bool, seed: int, device: torch.device,
                num_workers: int = 0, pin_memory: bool | None = None, persistent_workers: bool = False,
                drop_last: bool = False) -> DataLoader:
    """Training (``shuffle``): the order is a function of (seed, epoch) and can restart mid-epoch
    (:class:`ResumableRandomSampler`, reached as ``loader.sampler``). Evaluation: every sample once."""
    rank, world = distributed.rank(), distributed.world_size()
    sampler: Any
    if shuffle:
        sampler = ResumableRandomSampler(len(dataset), seed, rank, world)
    else:  # evaluation: this process's shard, no padding (every sample counted once)
        sampler = distributed.ShardSampler(len(dataset), rank, world) if world > 1 else None
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
        pin_memory=device.type == "cuda" if pin_memory is None else pin_memory,
        persistent_workers=persistent_workers, drop_last=drop_last and shuffle,
        # worker seeds (augmentation) come from this generator: a function of the run seed
        generator=torch.Generator().manual_seed(seed),
    )


def batch_to_device(batch: Mapping[str, Tensor], task_names: Sequence[str], device: torch.device,
                    channels_last: bool = False) -> tuple[Tensor, dict[str, Tensor]]:
    """A loader's batch as (images, targets by task) on ``device`` (asynchronous copies from pinned
    memory on CUDA)."""
    nb = device.type == "cuda"
    images = batch["image"].to(device, non_blocking=nb)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, {name: batch[name].to(device, non_blocking=nb) for name in task_names}
