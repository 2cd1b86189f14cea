"""A shuffling sampler whose order is a function of (seed, epoch) and that can start mid-epoch.

The order of epoch e is ``randperm(n)`` from a generator seeded with f(seed, e), so an interrupted
epoch is resumed by regenerating the same permutation and skipping the samples already seen --
no sampler state has to be stored beyond (epoch, position).
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Sampler


class ResumableRandomSampler(Sampler[int]):
    def __init__(self, num_samples: int, seed: int) -> None:
        self.num_samples = num_samples
        self.seed = seed
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Order of ``epoch``, beginning at position ``start`` (samples already consumed)."""
        self.epoch, self.start = epoch, start

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.num_samples, generator=g)
        return iter(order[self.start:].tolist())

    def __len__(self) -> int:
        return self.num_samples - self.start
