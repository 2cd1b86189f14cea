"""NYUv2 in mtan's pre-processed layout (docs/data.md#nyuv2): ``dataset=nyuv2 dataset.root=DIR``.

``root/{train,val}/{image,label,depth,normal}/{i}.npy``, 795 train and 654 ``val`` images (the
``val`` folder is the NYUv2 TEST set and is exposed as the ``test`` split). Files are HWC:

======  ============  ==========================================
folder  shape         values
======  ============  ==========================================
image   288x384x3     RGB float in [0, 1]
label   288x384       13 classes 0..12 as floats, -1 ignore
depth   288x384x1     metres, 0 invalid
normal  288x384x3     unit vectors (camera frame), all-zero invalid
======  ============  ==========================================

A validation split is carved from train (80/20, seed 688; ``val_fraction``/``val_seed``), so
checkpoints can be selected without touching the test set. Only the folders of the selected
tasks are required and read.
"""
from __future__ import annotations

from collections.abc import Sequence

from okd.data.base import DataBundle, check_tasks
from okd.data.npy import NpySamples, make_bundle
from okd.data.transforms import Augment
from okd.data.validate import ArraySpec, resolve_root, split_files, validate_split

NUM_CLASSES = 13
# The 13-class NYUv2 labelling of Couprie et al. / SceneNet (label 1..13 -> class 0..12).
CLASS_NAMES = ("bed", "books", "ceiling", "chair", "floor", "furniture", "objects", "picture",
               "sofa", "table", "tv", "wall", "window")
FOLDERS = {"image": "image", "segmentation": "label", "depth": "depth", "normal": "normal"}
SPECS = {"image": ArraySpec("image", 3), "segmentation": ArraySpec("label", None),
         "depth": ArraySpec("depth", 1), "normal": ArraySpec("normal", 3)}
SPLIT_FOLDERS = {"train": "train", "test": "val"}  # bundle split -> folder on disk


class NYUv2(NpySamples):
    """One folder split of NYUv2 (``split`` = ``train`` or ``val``) as a Dataset, for direct use.

    ``build`` is what configs use; this class reads a folder split on its own, with the same
    start-up checks, e.g. ``NYUv2("/data/nyuv2", "val", tasks=["depth"])``.
    """

    def __init__(self, root, split: str = "train",
                 tasks: Sequence[str] = ("segmentation", "depth", "normal"),
                 augment: Augment | None = None) -> None:
        root = resolve_root(root, "NYUv2", "dataset=nyuv2 dataset.root=/data/nyuv2")
        tasks = check_tasks(tasks, where="NYUv2 tasks")
        keys = ["image", *tasks]
        folders = split_files("NYUv2", root, split, [FOLDERS[k] for k in keys])
        files = {k: folders[FOLDERS[k]] for k in keys}
        size = validate_split("NYUv2", files, SPECS, NUM_CLASSES)
        super().__init__("NYUv2", files, {k: SPECS[k] for k in keys}, size, augment=augment)


def build(root=None, tasks: Sequence[str] = ("segmentation", "depth", "normal"), augment: bool = False,
          scales: Sequence[float] = (1.0, 1.2, 1.5), flip: bool = True, val_fraction: float = 0.2,
          val_seed: int = 688, select_split: str | None = None, report_split: str = "test") -> DataBundle:
    """NYUv2 as a DataBundle: ``train`` (carved), ``val`` (carved from train) and ``test``."""
    root = resolve_root(root, "NYUv2", "dataset=nyuv2 dataset.root=/data/nyuv2")
    tasks = check_tasks(tasks, where="dataset nyuv2 tasks")
    keys = ["image", *tasks]
    files = {}
    for split, folder in SPLIT_FOLDERS.items():
        found = split_files("NYUv2", root, folder, [FOLDERS[k] for k in keys])
        files[split] = {k: found[FOLDERS[k]] for k in keys}
    aug = Augment(scales, flip, disparity=False) if augment else None
    return make_bundle(
        "NYUv2", files, {k: SPECS[k] for k in keys}, tasks, NUM_CLASSES, aug, val_fraction,
        val_seed, select_split, report_split,
        info={"root": str(root), "class_names": list(CLASS_NAMES), "depth_unit": "metres"})
