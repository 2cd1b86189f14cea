"""One evaluation loop for every network okd evaluates (the student, OKD's teachers): the task losses
and split-level metrics of a split, summed over its batches and, under DDP, over the processes' shards."""
from __future__ import annotations

from typing import Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor

from okd import distributed
from okd.tasks import Task


@torch.inference_mode()
def evaluate_split(predict: Callable[[Tensor], Mapping[str, Tensor]], tasks: Sequence[Task],
                   batches: Iterable[tuple[Tensor, Mapping[str, Tensor]]], device: torch.device,
                   prefix: str = "") -> dict[str, float]:
    """``predict(images)`` -> predictions by task name, for (images, targets) ``batches`` already on
    ``device``. Returns ``<prefix>loss/<task>`` (the batch losses, averaged with the batch sizes as
    weights) and ``<prefix><task>/<metric>``. Predictions are compared in fp32 whatever the precision."""
    metrics = {t.name: t.metric() for t in tasks}
    loss_sum = torch.zeros(len(tasks), device=device, dtype=torch.float64)
    count = 0
    for images, targets in batches:
        predictions = predict(images)
        for i, t in enumerate(tasks):
            pred = predictions[t.name].float()
            loss_sum[i] += t.loss(pred, targets[t.name]).double() * images.shape[0]
            metrics[t.name].update(pred, targets[t.name])
        count += images.shape[0]
    # under DDP: every process evaluated its shard; summing the accumulators gives the split's numbers
    count = distributed.reduce_evaluation_(loss_sum, count, metrics.values())
    row: dict[str, float] = {}
    for t, loss in zip(tasks, (loss_sum / max(count, 1)).tolist()):
        row[f"{prefix}loss/{t.name}"] = loss
        row.update({f"{prefix}{t.name}/{m}": v for m, v in metrics[t.name].compute().items()})
    return row
