"""Datasets stored as one ``.npy`` file per sample and modality (the mtan layouts of docs/data.md).

:class:`NpySamples` reads a split lazily: each ``__getitem__`` memory-maps the sample's files
(``np.load(mmap_mode="r")``), copies them once into tensors, and applies the optional resize and
augmentation as torch ops, so no split is ever loaded whole into memory. :func:`make_bundle` turns
the files of a dataset's train and test folders into a :class:`~okd.data.base.DataBundle`, with a
validation split carved from train (:func:`carve`) and the selection / report split roles.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from okd.data.base import DataBundle
from okd.data.transforms import Augment, resize
from okd.data.validate import (
    DATA_DOCS, ArraySpec, DatasetError, check_shape, open_npy, validate_split,
)

Sample = dict[str, torch.Tensor]


class NpySamples(Dataset):
    """One split: ``files[key][i]`` is the ``.npy`` file of modality ``key`` of sample i.

    Keys are ``image`` and task names (``segmentation``, ``depth``, ``normal``); ``specs`` gives
    each key's :class:`ArraySpec`. ``size`` is the (H, W) that every file of the split must have
    (checked per sample from the ``.npy`` header, so a stray file names itself instead of breaking
    a batch). ``indices`` selects a subset (the carved train/val parts) without copying the lists.
    """

    def __init__(self, name: str, files: Mapping[str, Sequence[Path]], specs: Mapping[str, ArraySpec],
                 size: tuple[int, int], indices: Sequence[int] | None = None,
                 resize_to: Sequence[int] | None = None, augment: Augment | None = None) -> None:
        self.name = name
        self.files = {k: [str(p) for p in v] for k, v in files.items()}
        self.specs = dict(specs)
        self.size = (int(size[0]), int(size[1]))
        total = len(next(iter(self.files.values())))
        self.indices = list(range(total)) if indices is None else [int(i) for i in indices]
        self.resize_to = None if resize_to is None else (int(resize_to[0]), int(resize_to[1]))
        self.augment = augment

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def output_size(self) -> tuple[int, int]:
        return self.resize_to or self.size

    def _read(self, key: str, index: int) -> torch.Tensor:
        path = self.files[key][index]
        array = open_npy(path)
        spec = self.specs[key]
        check_shape(self.name, Path(path), array.shape, spec, self.size)
        # The one copy out of the page cache; dtype conversion (e.g. float64 files) happens in it.
        if spec.kind == "label":
            labels = torch.from_numpy(np.array(array)).to(torch.int64)
            return labels.masked_fill_(labels == 255, -1)  # 255: the other common ignore value
        data = torch.from_numpy(np.array(array, dtype=np.float32))
        if data.ndim == 2:
            return data[None]
        return data.permute(2, 0, 1)  # HWC on disk -> CHW; collate's stack makes it contiguous

    def __getitem__(self, i: int) -> Sample:
        index = self.indices[i]  # IndexError for an out-of-range i, as Dataset requires
        sample = {key: self._read(key, index) for key in self.files}
        if self.resize_to is not None:
            sample = resize(sample, self.resize_to)
        if self.augment is not None:
            sample = self.augment(sample)
        return sample

    def subset(self, indices: Sequence[int], augment: Augment | None) -> "NpySamples":
        """The samples at ``indices`` (positions in this split), with their own augmentation."""
        return NpySamples(self.name, self.files, self.specs, self.size,
                          [self.indices[i] for i in indices], self.resize_to, augment)


def carve(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Split 0..n-1 into (train, val) with round(n * fraction) validation indices, seeded.

    A fixed permutation from ``torch.Generator().manual_seed(seed)``; both parts are returned
    sorted, so the same (n, fraction, seed) gives the same disjoint parts on every machine.
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"dataset.val_fraction must be in [0, 1), got {fraction}")
    n_val = int(round(n * fraction))
    if fraction > 0 and not 1 <= n_val < n:
        raise ValueError(f"dataset.val_fraction={fraction} of {n} training samples leaves "
                         f"{n_val} validation and {n - n_val} training samples; both need at least 1")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed))).tolist()
    return sorted(order[n_val:]), sorted(order[:n_val])


def roles(select_split: str | None, report_split: str, carved: bool) -> tuple[str | None, str]:
    """(select, report): the default selection split is ``val`` when one was carved; without one there
    is none, and selecting on ``test`` must be asked for (selection.split=test; okd.engine.selection)."""
    if select_split is None and carved:
        select_split = "val"
    return select_split, report_split


def make_bundle(name: str, files: Mapping[str, Mapping[str, Sequence[Path]]],
                specs: Mapping[str, ArraySpec], tasks: Sequence[str], num_classes: int,
                augment: Augment | None, val_fraction: float, val_seed: int,
                select_split: str | None, report_split: str, resize_to: Sequence[int] | None = None,
                info: dict | None = None) -> DataBundle:
    """Check the files of ``files["train"]`` and ``files["test"]`` and build the bundle.

    Checks (before any training): complete files (sizes vs headers) in every folder, and shape,
    dtype and value range of the first sample of each split; all samples of both splits must
    share one (H, W) unless ``resize_to`` is given.
    """
    if resize_to is not None and (len(resize_to) != 2 or min(int(v) for v in resize_to) < 1):
        raise ValueError(f"dataset.resize_to must be [height, width] with positive values, got {resize_to}")
    if not 0 <= val_fraction < 1:
        raise ValueError(f"dataset.val_fraction must be in [0, 1), got {val_fraction}")
    select, report = roles(select_split, report_split, carved=val_fraction > 0)  # config errors first
    splits: dict[str, NpySamples] = {}
    size = None
    for split in ("train", "test"):
        split_size = validate_split(name, files[split], specs, num_classes,
                                    None if resize_to is not None else size)
        size = size or split_size
        splits[split] = NpySamples(name, files[split], specs, split_size, resize_to=resize_to)
    train_idx, val_idx = carve(len(splits["train"]), val_fraction, val_seed)
    train = splits["train"].subset(train_idx, augment)
    evals = {"test": splits["test"]}
    if val_idx:
        evals = {"val": splits["train"].subset(val_idx, None), **evals}
    height, width = train.output_size
    meta = {"height": height, "width": width, "sizes": {k: len(v) for k, v in {"train": train, **evals}.items()},
            "val_fraction": val_fraction, "val_seed": val_seed, "augment": repr(train.augment), **(info or {})}
    try:
        return DataBundle(name=name, train=train, eval_splits=evals, tasks=list(tasks),
                          num_classes=num_classes, select_split=select, report_split=report, info=meta)
    except ValueError as err:
        raise DatasetError(f"{err} (see {DATA_DOCS})") from None
