"""A shuffling sampler whose order is a function of (seed, epoch) and that can start mid-epoch.

The order of epoch e is ``randperm(n)`` from a generator seeded with f(seed, e), so an interrupted
epoch is resumed by regenerating the same permutation and skipping the samples already seen --
no sampler state has to be stored beyond (epoch, position).

Under DDP (``world_size`` > 1) every process draws the same permutation and takes every
``world_size``-th sample from position ``rank``; like torch's DistributedSampler, the permutation
is padded with its own first samples to a multiple of ``world_size`` so that every process runs
the same number of steps (collectives need every process at every step).
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Sampler


class ResumableRandomSampler(Sampler[int]):
    def __init__(self, num_samples: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        self.num_samples = num_samples
        self.seed = seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Order of ``epoch``, beginning at position ``start`` of this process's shard."""
        self.epoch, self.start = epoch, start

    @property
    def shard_size(self) -> int:
        return -(-self.num_samples // self.world_size)  # ceil: padded

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.num_samples, generator=g)
        if self.world_size > 1:
            padded = self.shard_size * self.world_size
            order = torch.cat([order, order[: padded - self.num_samples]])[self.rank::self.world_size]
        return iter(order[self.start:].tolist())

    def __len__(self) -> int:
        return self.shard_size - self.start
