"""Task definitions: the one home for what a task predicts, how it is scored and which way is better.

Each task knows its head's channel count, how raw head outputs become predictions, its loss (with
masks, docs/metrics.md#losses) and its split-level metric accumulator (docs/metrics.md#metrics). Models, losses and metrics
are all built from a list of tasks, so one code path serves 1, 2 or 3 tasks and any dataset.

Metric accumulators sum over every valid pixel of a split (not per batch), so their result does not
depend on the batch size; they accumulate on the predictions' device and sync with the host once,
in ``compute()``.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from okd.data.base import TASK_NAMES, check_tasks

IGNORE_INDEX = -1


class Task:
    """Base class: a named prediction target with a loss and metrics."""

    name: str = ""
    #: metric name -> True when higher is better.
    higher_is_better: dict[str, bool] = {}

    @property
    def channels(self) -> int:
        raise NotImplementedError

    def activate(self, raw: Tensor) -> Tensor:
        """Turn a head's raw output into the task's prediction (identity unless overridden)."""
        return raw

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        raise NotImplementedError

    def metric(self) -> "TaskMetric":
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(channels={self.channels})"


def valid_mask(target: Tensor) -> Tensor:
    """Pixels with a dense target: not all channels zero (docs/metrics.md#valid-pixels). Shape B x H x W."""
    # "any channel non-zero" rather than "sum != 0": a valid unit normal can have components summing to 0.
    return (target != 0).any(dim=1)


class Segmentation(Task):
    """Semantic segmentation: C logits, cross-entropy with ignore index -1; mIoU and pixel accuracy."""

    name = "segmentation"
    higher_is_better = {"miou": True, "pix_acc": True}

    def __init__(self, num_classes: int) -> None:
        if num_classes < 2:
            raise ValueError(f"segmentation needs num_classes >= 2, got {num_classes}")
        self.num_classes = num_classes

    @property
    def channels(self) -> int:
        return self.num_classes

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(pred, target, ignore_index=IGNORE_INDEX)

    def metric(self) -> "TaskMetric":
        return SegmentationMetric(self.num_classes)


class Depth(Task):
    """Depth (metres or disparity): 1 channel, L1 over valid pixels; absolute and relative error."""

    name = "depth"
    higher_is_better = {"abs_err": False, "rel_err": False}

    @property
    def channels(self) -> int:
        return 1

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        mask = valid_mask(target).unsqueeze(1)
        return (pred - target).abs().masked_select(mask).mean()

    def metric(self) -> "TaskMetric":
        return DepthMetric()


class Normal(Task):
    """Surface normals: 3 channels L2-normalised; loss 1 - mean cosine; angular error in degrees."""

    name = "normal"
    higher_is_better = {
        "mean": False, "median": False, "within_11.25": True, "within_22.5": True, "within_30": True,
    }

    @property
    def channels(self) -> int:
        return 3

    def activate(self, raw: Tensor) -> Tensor:
        return F.normalize(raw, p=2, dim=1)

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        mask = valid_mask(target)
        cosine = (pred * target).sum(dim=1)
        return 1.0 - cosine.masked_select(mask).mean()

    def metric(self) -> "TaskMetric":
        return NormalMetric()


def build_tasks(names: Sequence[str], num_classes: int | None = None) -> list[Task]:
    """Tasks in the given order. ``num_classes`` is required when segmentation is among them."""
    names = check_tasks(names)
    tasks: list[Task] = []
    for name in names:
        if name == "segmentation":
            if num_classes is None:
                raise ValueError("segmentation needs num_classes")
            tasks.append(Segmentation(num_classes))
        elif name == "depth":
            tasks.append(Depth())
        else:
            tasks.append(Normal())
    return tasks


# ---------------------------------------------------------------------------------------------
# Split-level metric accumulators
# ---------------------------------------------------------------------------------------------
class TaskMetric:
    """Accumulates sufficient statistics over a split; ``compute()`` returns {metric: float}."""

    def update(self, pred: Tensor, target: Tensor) -> None:
        raise NotImplementedError

    def compute(self) -> dict[str, float]:
        raise NotImplementedError

    def state(self) -> dict[str, Tensor]:
        """Raw accumulators, e.g. to sum them across processes."""
        return {k: v for k, v in vars(self).items() if isinstance(v, Tensor)}


class SegmentationMetric(TaskMetric):
    """Confusion matrix over the split; mIoU over classes with non-empty union and pixel accuracy,
    both in percent like the published tables (docs/metrics.md#published-reference-numbers)."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.confusion: Tensor | None = None

    def update(self, pred: Tensor, target: Tensor) -> None:
        labels = pred.argmax(dim=1) if pred.dim() == target.dim() + 1 else pred
        c = self.num_classes
        keep = (target >= 0) & (target < c)
        index = target[keep] * c + labels[keep]
        counts = torch.bincount(index, minlength=c * c).reshape(c, c)
        self.confusion = counts if self.confusion is None else self.confusion + counts

    def compute(self) -> dict[str, float]:
        conf = self.confusion
        if conf is None:
            raise RuntimeError("SegmentationMetric.compute() before any update()")
        conf = conf.double()
        tp = conf.diag()
        union = conf.sum(0) + conf.sum(1) - tp
        present = union > 0
        miou = (tp[present] / union[present]).mean() if present.any() else torch.tensor(float("nan"))
        pix_acc = tp.sum() / conf.sum().clamp_min(1)
        return {"miou": 100.0 * float(miou), "pix_acc": 100.0 * float(pix_acc)}


class DepthMetric(TaskMetric):
    """Absolute error mean|p-g| and relative error mean(|p-g|/g) over all valid pixels of a split."""

    def __init__(self) -> None:
        self.abs_sum: Tensor | None = None
        self.rel_sum: Tensor | None = None
        self.count: Tensor | None = None

    def update(self, pred: Tensor, target: Tensor) -> None:
        mask = valid_mask(target).unsqueeze(1)
        p, g = pred.masked_select(mask).double(), target.masked_select(mask).double()
        err = (p - g).abs()
        sums = (err.sum(), (err / g).sum(), torch.tensor(g.numel(), device=g.device, dtype=torch.float64))
        if self.count is None:
            self.abs_sum, self.rel_sum, self.count = sums
        else:
            self.abs_sum, self.rel_sum, self.count = (
                self.abs_sum + sums[0], self.rel_sum + sums[1], self.count + sums[2])

    def compute(self) -> dict[str, float]:
        if self.count is None:
            raise RuntimeError("DepthMetric.compute() before any update()")
        n = self.count.clamp_min(1)
        return {"abs_err": float(self.abs_sum / n), "rel_err": float(self.rel_sum / n)}


class NormalMetric(TaskMetric):
    """Angular error (degrees) over all valid pixels: mean, median, % within 11.25/22.5/30 degrees.

    The median comes from a histogram of 0.01-degree bins (docs/metrics.md#metrics), so it is exact to 0.005 deg
    (bin centre) and the accumulator has a fixed size whatever the split.
    """

    BIN = 0.01
    THRESHOLDS = (11.25, 22.5, 30.0)

    def __init__(self) -> None:
        self.nbins = int(round(180.0 / self.BIN))
        self.hist: Tensor | None = None
        self.err_sum: Tensor | None = None
        self.within: Tensor | None = None

    def update(self, pred: Tensor, target: Tensor) -> None:
        mask = valid_mask(target)
        cos = F.cosine_similarity(pred.double(), target.double(), dim=1, eps=1e-12)
        err = torch.rad2deg(torch.acos(cos.clamp(-1.0, 1.0))).masked_select(mask)
        bins = (err / self.BIN).long().clamp_(0, self.nbins - 1)
        hist = torch.bincount(bins, minlength=self.nbins)
        within = torch.stack([(err < t).sum() for t in self.THRESHOLDS])
        if self.hist is None:
            self.hist, self.err_sum, self.within = hist, err.sum(), within
        else:
            self.hist, self.err_sum, self.within = self.hist + hist, self.err_sum + err.sum(), self.within + within

    def compute(self) -> dict[str, float]:
        if self.hist is None:
            raise RuntimeError("NormalMetric.compute() before any update()")
        n = int(self.hist.sum())
        if n == 0:
            nan = float("nan")
            return {"mean": nan, "median": nan, **{f"within_{_fmt(t)}": nan for t in self.THRESHOLDS}}
        # Median = the value of rank (n+1)/2, averaging ranks n/2 and n/2+1 when n is even (numpy's rule).
        ranks = torch.tensor([(n + 1) // 2, n // 2 + 1], device=self.hist.device)
        bins = torch.searchsorted(self.hist.cumsum(0), ranks)
        median = float((bins.double() + 0.5).mean()) * self.BIN
        out = {"mean": float(self.err_sum) / n, "median": median}
        for t, count in zip(self.THRESHOLDS, self.within.tolist()):
            out[f"within_{_fmt(t)}"] = 100.0 * count / n
        return out


def _fmt(threshold: float) -> str:
    return f"{threshold:g}"


#: every task type, in the order of ``TASK_NAMES`` (reports list metrics in this order).
TASK_TYPES: tuple[type[Task], ...] = (Segmentation, Depth, Normal)


def metric_directions(tasks: Sequence[Task | type[Task]] = TASK_TYPES) -> dict[str, bool]:
    """``"<task>/<metric>" -> higher_is_better`` for every metric of the given tasks (task objects or
    types; by default every task okd knows). The one definition of which way each metric is better:
    the trainer's best epoch, the tracker's summaries, Δm/Δp, the report and the sweep directions use it."""
    return {f"{t.name}/{m}": hib for t in tasks for m, hib in t.higher_is_better.items()}


__all__ = [
    "TASK_NAMES", "IGNORE_INDEX", "Task", "Segmentation", "Depth", "Normal", "build_tasks",
    "TaskMetric", "SegmentationMetric", "DepthMetric", "NormalMetric", "metric_directions", "valid_mask", "TASK_TYPES",
]
