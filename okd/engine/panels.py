"""Prediction panels (and segmentation masks) sent to the experiment tracker during training: a few
fixed samples of the report split, drawn every epoch so that runs and epochs compare image for image."""
from __future__ import annotations

from typing import Sequence

import torch

from okd.data.base import DataBundle
from okd.logging import Logger
from okd.models.base import MultiTaskModel
from okd.tasks import Task


def log_panels(logger: Logger, model: MultiTaskModel, tasks: Sequence[Task], data: DataBundle,
               device: torch.device, count: int, step: int) -> None:
    """Render the first ``count`` report-split samples and hand them to ``logger`` (nothing when the
    logger takes no images or ``count`` is 0): ``<split>/panel/<sample>`` (the panel of okd/predict.py)
    and, when the model segments, ``<split>/masks/<sample>`` (the input with prediction and ground-truth
    class masks, labelled with the dataset's class names)."""
    if not count or not logger.accepts_images:
        return
    from okd.predict import collect_inputs, prediction_views  # matplotlib: only when panels are drawn

    split = data.report_split
    count = min(count, len(data.eval_splits[split]))
    inputs = collect_inputs(f"split:{split}:{count}", data.eval_splits)
    views = prediction_views(model, tasks, inputs, device, class_names=data.info.get("class_names"),
                             depth_unit=data.info.get("depth_unit"))
    images = {f"{split}/panel/{v.name}": v.panel for v in views}
    images.update({f"{split}/masks/{v.name}": v.masks for v in views if v.masks is not None})
    logger.log_images(images, step=step)
