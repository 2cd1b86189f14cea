"""What every dataset hands to the rest of the framework.

A sample is a dict of tensors keyed by name: ``"image"`` (float32, 3xHxW, RGB in [0, 1]) and one
entry per selected task, in the conventions of docs/data.md#sample-conventions:

* ``"segmentation"``: int64, HxW, class index, -1 = ignore;
* ``"depth"``: float32, 1xHxW, metres (or disparity), 0 = invalid;
* ``"normal"``: float32, 3xHxW, unit vectors in the camera frame, all-zero = invalid.

A dataset config instantiates a :class:`DataBundle`: the training split, the evaluation splits, the
task list and the class count, plus which split selects the best checkpoint and which is reported.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from torch.utils.data import Dataset

TASK_NAMES = ("segmentation", "depth", "normal")


@dataclass
class DataBundle:
    """Splits and task facts of one dataset, as the trainer and model builder need them."""

    name: str
    train: Dataset
    eval_splits: dict[str, Dataset]
    tasks: list[str]
    num_classes: int
    #: the default model-selection split (selection.split overrides it); None: the dataset has none
    select_split: str | None = "val"
    report_split: str = "test"
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_tasks(self.tasks, where=f"dataset {self.name!r}")
        for role, split in (("select_split", self.select_split), ("report_split", self.report_split)):
            if split is not None and split not in self.eval_splits:
                raise ValueError(
                    f"dataset {self.name!r}: {role}={split!r} is not one of its evaluation splits "
                    f"{sorted(self.eval_splits)}"
                )


def check_tasks(tasks, where: str = "tasks", available=TASK_NAMES) -> list[str]:
    """Validate a task list: non-empty, no duplicates, each known. Returns it as a list."""
    tasks = list(tasks)
    if not tasks:
        raise ValueError(f"{where}: the task list is empty; choose from {list(available)}")
    unknown = [t for t in tasks if t not in available]
    if unknown:
        raise ValueError(f"{where}: unknown task(s) {unknown}; available: {list(available)}")
    if len(set(tasks)) != len(tasks):
        raise ValueError(f"{where}: duplicate task names in {tasks}")
    return tasks
