"""Cityscapes in mtan's pre-processed layout (docs/data.md#cityscapes): ``dataset=cityscapes dataset.root=DIR``.

``root/{train,val}/{image,depth,label_7,label_19}/{i}.npy`` (mtan also ships ``label_2``, which is
not needed), 2975 train and 500 ``val`` images (the official validation set, used as the TEST
split). Files are HWC: image HxWx3 RGB in [0, 1]; depth HxWx1 disparity used as inverse depth
(about 0..0.49, 0 invalid); label_7 / label_19 HxW class ids as floats, -1 ignore. mtan's
downloads are 128x256 (the published benchmark) and 256x512; ``resize_to: [128, 256]`` resizes at
load time (bilinear image, nearest labels and depth).

The AdaShare download (256x512) also carries ``cityscape.json``. As AdaShare's own loader
(``dataloaders/cityscapes_dataloader.py``) reads it, we take it to map split names to lists of
``[image, depth, label_2, label_7, label_19]`` paths relative to the root, with ``train`` (2975),
``test`` (500, the official validation set) and the halves ``train1``/``train2`` of AdaShare's
policy search (ignored here). With ``index: auto`` the json is used when present, else the folders.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from okd.data.base import DataBundle, check_tasks
from okd.data.npy import NpySamples, make_bundle
from okd.data.synthetic import CITYSCAPES_7_NAMES, CITYSCAPES_19_NAMES
from okd.data.transforms import Augment
from okd.data.validate import ArraySpec, DatasetError, problem, resolve_root, split_files, validate_split

NAME = "Cityscapes"
TASKS = ("segmentation", "depth")
CLASS_NAMES = {7: CITYSCAPES_7_NAMES, 19: CITYSCAPES_19_NAMES}
SPECS = {"image": ArraySpec("image", 3), "segmentation": ArraySpec("label", None),
         "depth": ArraySpec("depth", 1)}
SPLIT_FOLDERS = {"train": "train", "test": "val"}  # bundle split -> folder on disk
INDEX_FILE = "cityscape.json"
# Column of each modality in a cityscape.json entry [image, depth, label_2, label_7, label_19].
JSON_COLUMNS = {"image": 0, "depth": 1, "label_7": 3, "label_19": 4}
JSON_SPLITS = {"train": ("train",), "test": ("test", "val")}  # first key present wins
EXAMPLE = "dataset=cityscapes dataset.root=/data/cityscapes"


def _folder(key: str, num_classes: int) -> str:
    return f"label_{num_classes}" if key == "segmentation" else key


def folder_files(root: Path, keys: Sequence[str], num_classes: int) -> dict[str, dict[str, list[Path]]]:
    """Files of the folder layout: {split: {key: [paths]}}."""
    files = {}
    for split, folder in SPLIT_FOLDERS.items():
        found = split_files(NAME, root, folder, [_folder(k, num_classes) for k in keys])
        files[split] = {k: found[_folder(k, num_classes)] for k in keys}
    return files


def json_files(root: Path, keys: Sequence[str], num_classes: int) -> dict[str, dict[str, list[Path]]]:
    """Files listed by ``root/cityscape.json`` (AdaShare): {split: {key: [paths]}}."""
    path = root / INDEX_FILE
    try:
        index = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise problem(NAME, "unreadable index", path, f"{type(err).__name__}: {err}", "a JSON object") from None
    if not isinstance(index, dict):
        raise problem(NAME, "unexpected index content", path, type(index).__name__,
                      "a JSON object {split: [[image, depth, label_2, label_7, label_19], ...]}")
    chosen = {}
    for split, candidates in JSON_SPLITS.items():
        key = next((c for c in candidates if c in index), None)
        if key is None:
            raise problem(NAME, f"index has no {split} list", path, f"keys {sorted(index)}",
                          f"one of the keys {list(candidates)}")
        chosen[split] = key
    return {split: _json_split(path, key, index[key], keys, num_classes) for split, key in chosen.items()}


def _json_split(path: Path, key: str, entries, keys: Sequence[str], num_classes: int) -> dict[str, list[Path]]:
    ok = isinstance(entries, list) and entries and all(
        isinstance(e, list) and len(e) == 5 and all(isinstance(x, str) for x in e) for e in entries)
    if not ok:
        shown = repr(entries[0] if isinstance(entries, list) and entries else entries)[:120]
        raise problem(NAME, f"unexpected entries in index list {key!r}", path, shown,
                      "a non-empty list of [image, depth, label_2, label_7, label_19] paths")
    root = path.parent
    out = {}
    for k in keys:
        column = JSON_COLUMNS[_folder(k, num_classes)]
        paths = [root / e[column] for e in entries]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise problem(NAME, f"file listed in {INDEX_FILE} [{key!r}] is missing", missing[0],
                          f"{len(missing)} of {len(paths)} listed {_folder(k, num_classes)} files missing",
                          "every listed file present (or use dataset.index=folders)")
        out[k] = paths
    return out


class Cityscapes(NpySamples):
    """One split of Cityscapes as a Dataset, for direct use (configs use :func:`build`).

    ``split`` is ``train`` or ``test`` (the ``val`` folder / the json's ``test`` list), e.g.
    ``Cityscapes("/data/cityscapes", "test", num_classes=19, resize_to=(128, 256))``.
    """

    def __init__(self, root, split: str = "train", tasks: Sequence[str] = TASKS, num_classes: int = 7,
                 resize_to: Sequence[int] | None = None, augment: Augment | None = None,
                 index: str = "auto") -> None:
        if split not in SPLIT_FOLDERS:
            raise DatasetError(f"{NAME}: split={split!r} is invalid: expected one of {list(SPLIT_FOLDERS)}")
        root, keys, files = _files(root, tasks, num_classes, index)
        size = validate_split(NAME, files[split], SPECS, num_classes)
        super().__init__(NAME, files[split], {k: SPECS[k] for k in keys}, size, resize_to=resize_to,
                         augment=augment)


def _files(root, tasks: Sequence[str], num_classes: int, index: str):
    """(root, keys, {split: {key: [paths]}}) after checking the arguments and the index choice."""
    root = resolve_root(root, NAME, EXAMPLE)
    tasks = check_tasks(tasks, where="dataset cityscapes tasks", available=TASKS)
    if num_classes not in CLASS_NAMES:
        raise DatasetError(f"{NAME}: dataset.num_classes={num_classes!r} is invalid: expected 7 "
                           f"(label_7, categories) or 19 (label_19, train ids)")
    if index not in ("auto", "folders", "json"):
        raise DatasetError(f"{NAME}: dataset.index={index!r} is invalid: expected auto, folders or json")
    if index == "json" and not (root / INDEX_FILE).is_file():
        raise problem(NAME, "dataset.index=json but the index is missing", root / INDEX_FILE,
                      "no such file", f"the {INDEX_FILE} of the AdaShare download (or dataset.index=folders)")
    use_json = index == "json" or (index == "auto" and (root / INDEX_FILE).is_file())
    keys = ["image", *tasks]
    return root, keys, (json_files if use_json else folder_files)(root, keys, num_classes)


def build(root=None, tasks: Sequence[str] = TASKS, num_classes: int = 7,
          resize_to: Sequence[int] | None = None, augment: bool = False,
          scales: Sequence[float] = (1.0, 1.2, 1.5), flip: bool = True, val_fraction: float = 0.2,
          val_seed: int = 688, select_split: str | None = None, report_split: str = "test",
          index: str = "auto") -> DataBundle:
    """Cityscapes as a DataBundle: ``train`` (carved), ``val`` (carved from train) and ``test``.

    ``num_classes`` 7 (categories, the published benchmark) or 19 (train ids) picks the label
    folder; ``index`` is ``auto`` (cityscape.json when present), ``folders`` or ``json``.
    """
    root, keys, files = _files(root, tasks, num_classes, index)
    tasks = keys[1:]
    use_json = (root / INDEX_FILE).is_file() and index != "folders"
    # Zooming in brings the scene closer: disparity (inverse depth) grows with the zoom factor.
    aug = Augment(scales, flip, disparity=True) if augment else None
    return make_bundle(
        NAME, files, {k: SPECS[k] for k in keys}, tasks, num_classes, aug, val_fraction, val_seed,
        select_split, report_split, resize_to=resize_to,
        info={"root": str(root), "class_names": list(CLASS_NAMES[num_classes]), "depth_unit": "disparity",
              "index": INDEX_FILE if use_json else "folders"})
