"""Convert the official raw Cityscapes release into mtan's ``.npy`` layout (docs/data.md#converting-raw-cityscapes).

``python -m okd.data.prepare cityscapes --raw DIR --out DIR --size 128x256``

Input (``--raw``; each folder may also sit inside its archive folder, e.g.
``leftImg8bit_trainvaltest/leftImg8bit``):

* ``leftImg8bit/{train,val}/<city>/<stem>_leftImg8bit.png``   RGB, 8 bit
* ``gtFine/{train,val}/<city>/<stem>_gtFine_labelIds.png``      label ids 0..33, 8 bit
* ``disparity/{train,val}/<city>/<stem>_disparity.png``         16-bit disparity code p

Output (``--out``): ``{train,val}/{image,depth,label_7,label_19}/{i}.npy`` (2975 train, 500 val),
samples numbered in sorted ``<city>/<stem>`` order, plus ``sources.json`` (the stem of every index
and the settings). All arrays are float32, HWC:

* image: bilinear resize (antialiased, as PIL), RGB in [0, 1];
* label_19: cityscapesscripts ``trainId`` of each label id (19 classes), -1 where it is 255/-1;
* label_7: cityscapesscripts ``categoryId - 1`` (flat, construction, object, nature, sky, human,
  vehicle). ``--categories eval`` (default) keeps it only where the train id is valid, so label_7
  is the category of label_19 as in the official category-level evaluation (parking, rail track,
  guard rail, bridge, tunnel, polegroup, caravan, trailer -> -1); ``all`` keeps every label id's
  category;
* depth: the disparity map resized with nearest neighbour (never blended across the invalid 0),
  then converted. The official definition: p > 0 is disparity ``d = (p - 1) / 256`` pixels at the
  raw width (2048), p = 0 invalid. ``--disparity mtan`` (default) stores ``d / 256`` =
  ``(p - 1) / 65536``: the scale of mtan's download (its maximum 0.4922 is p = 32257 over 65536;
  mtan's maintainer states the raw disparity was used without further processing); it does not
  change with the output resolution. ``--disparity pixels`` stores d in pixels of the OUTPUT width
  (``d * W_out / W_raw``, as Auto-Lambda's loader). p = 1 (zero disparity) also becomes 0 = invalid.

Nearest-neighbour resizes sample the source pixel under each output pixel centre,
``floor((i + 0.5) * n_in / n_out)`` (torch's ``nearest-exact``, PIL's NEAREST).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from okd.data.validate import DATA_DOCS, DatasetError

RAW_FOLDERS = {"image": ("leftImg8bit", "_leftImg8bit.png"), "label": ("gtFine", "_gtFine_labelIds.png"),
               "disparity": ("disparity", "_disparity.png")}
ARCHIVES = {"leftImg8bit": "leftImg8bit_trainvaltest", "gtFine": "gtFine_trainvaltest",
            "disparity": "disparity_trainvaltest"}
SPLITS = ("train", "val")
OUT_FOLDERS = ("image", "depth", "label_7", "label_19")


# ----------------------------------------------------------------------------------------------
# Label and disparity definitions
# ----------------------------------------------------------------------------------------------
@lru_cache(maxsize=2)
def label_tables(categories: str = "eval") -> tuple[np.ndarray, np.ndarray]:
    """Lookup tables label id (0..255) -> train id (0..18, else -1) and -> category (0..6, else -1).

    From ``cityscapesscripts.helpers.labels``; ``categories="eval"`` keeps a category only where
    the train id is valid (see the module docstring), ``"all"`` for every non-void label id.
    """
    from cityscapesscripts.helpers.labels import labels

    if categories not in ("eval", "all"):
        raise ValueError(f"categories={categories!r} is invalid: expected 'eval' or 'all'")
    train = np.full(256, -1, dtype=np.int64)
    category = np.full(256, -1, dtype=np.int64)
    for label in labels:
        if not 0 <= label.id < 256:
            continue  # license plate (-1) never appears in *_labelIds.png
        valid = label.trainId not in (255, -1)
        if valid:
            train[label.id] = label.trainId
        if label.categoryId > 0 and (valid or categories == "all"):
            category[label.id] = label.categoryId - 1
    return train, category


def disparity_values(code: np.ndarray, mode: str = "mtan", width_ratio: float = 1.0) -> np.ndarray:
    """Disparity PNG codes p -> stored disparity (float32), 0 = invalid (see module docstring)."""
    code = code.astype(np.float64)
    pixels = np.where(code > 0, (code - 1.0) / 256.0, 0.0)  # official: d = (p - 1) / 256, p = 0 invalid
    if mode == "mtan":
        return (pixels / 256.0).astype(np.float32)
    if mode == "pixels":
        return (pixels * width_ratio).astype(np.float32)
    raise ValueError(f"disparity mode {mode!r} is invalid: expected 'mtan' or 'pixels'")


def nearest_indices(n_in: int, n_out: int) -> np.ndarray:
    """Source index of each output index: the pixel under the output pixel's centre."""
    return np.minimum(((np.arange(n_out) + 0.5) * n_in / n_out).astype(np.int64), n_in - 1)


def resize_nearest(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    rows, cols = nearest_indices(array.shape[0], size[0]), nearest_indices(array.shape[1], size[1])
    return array[rows[:, None], cols[None, :]]


def resize_image(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 HxWx3 -> float32 HxWx3 in [0, 1] at ``size``, bilinear (antialiased when shrinking)."""
    image = torch.from_numpy(rgb).permute(2, 0, 1).float().div_(255.0)
    if tuple(image.shape[-2:]) != tuple(size):
        shrink = size[0] < image.shape[-2] or size[1] < image.shape[-1]
        image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False,
                              antialias=shrink)[0]
    return image.clamp_(0.0, 1.0).permute(1, 2, 0).contiguous().numpy()


# ----------------------------------------------------------------------------------------------
# Raw tree
# ----------------------------------------------------------------------------------------------
def _raw_folder(raw: Path, name: str) -> Path:
    for candidate in (raw / name, raw / ARCHIVES[name] / name):
        if candidate.is_dir():
            return candidate
    raise DatasetError(f"Cityscapes raw: missing folder {name!r}: {raw / name}: found "
                       f"{sorted(p.name for p in raw.iterdir()) if raw.is_dir() else 'no such directory'}; "
                       f"expected {raw}/{name}/{{train,val}}/<city>/ (or {raw}/{ARCHIVES[name]}/{name}/...) "
                       f"from the official leftImg8bit, gtFine and disparity packages (see {DATA_DOCS})")


def find_samples(raw, split: str) -> list[tuple[str, dict[str, Path]]]:
    """[(``<city>/<stem>``, {image, label, disparity: path})] of one split, sorted by name."""
    raw = Path(raw)
    folders = {k: _raw_folder(raw, name) / split for k, (name, _) in RAW_FOLDERS.items()}
    image_dir, image_suffix = folders["image"], RAW_FOLDERS["image"][1]
    images = sorted(image_dir.glob(f"*/*{image_suffix}"))
    if not images:
        raise DatasetError(f"Cityscapes raw: no images: {image_dir}: found none matching "
                           f"<city>/*{image_suffix}; expected the {split} images of leftImg8bit "
                           f"(see {DATA_DOCS})")
    samples = []
    for image in images:
        key = f"{image.parent.name}/{image.name[:-len(image_suffix)]}"
        paths = {"image": image}
        for kind in ("label", "disparity"):
            path = folders[kind] / f"{key}{RAW_FOLDERS[kind][1]}"
            if not path.is_file():
                raise DatasetError(f"Cityscapes raw: missing {kind} file: {path}: found no such file; "
                                   f"expected one for every image (image: {image}; see {DATA_DOCS})")
            paths[kind] = path
        samples.append((key, paths))
    return samples


def _read_png(path: Path, expect: str) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as img:
            if expect == "rgb":
                return np.array(img.convert("RGB"))  # a writable copy (torch.from_numpy needs one)
            array = np.array(img)
    except OSError as err:
        raise DatasetError(f"Cityscapes raw: cannot read {path}: {err}") from None
    if array.ndim != 2:
        raise DatasetError(f"Cityscapes raw: {path}: found an image of shape {array.shape}; expected a "
                           f"single-channel {'16' if expect == 'disparity' else '8'}-bit PNG")
    return array


def convert_sample(paths: dict[str, Path], size: tuple[int, int], disparity: str = "mtan",
                   categories: str = "eval") -> dict[str, np.ndarray]:
    """One raw sample -> {image, depth, label_7, label_19} arrays in the mtan conventions."""
    train_table, category_table = label_tables(categories)
    rgb = _read_png(paths["image"], "rgb")
    ids = _read_png(paths["label"], "label")
    codes = _read_png(paths["disparity"], "disparity")
    for name, other in (("label", ids), ("disparity", codes)):
        if other.shape != rgb.shape[:2]:
            raise DatasetError(f"Cityscapes raw: {paths[name]}: found shape {other.shape}; expected "
                               f"{rgb.shape[:2]} like its image {paths['image']}")
    ids = resize_nearest(ids.astype(np.int64), size)
    depth = disparity_values(resize_nearest(codes, size), disparity, size[1] / codes.shape[1])
    return {"image": resize_image(rgb, size), "depth": depth[..., None],
            "label_7": category_table[ids].astype(np.float32),
            "label_19": train_table[ids].astype(np.float32)}


def _convert_and_save(job: tuple[Path, int, dict[str, Path], tuple[int, int], str, str]) -> None:
    out_dir, index, paths, size, disparity, categories = job
    torch.set_num_threads(1)  # parallelism comes from the worker processes
    arrays = convert_sample(paths, size, disparity, categories)
    for folder in OUT_FOLDERS:
        np.save(out_dir / folder / f"{index}.npy", arrays[folder])


def prepare_cityscapes(raw, out, size: tuple[int, int] = (128, 256), disparity: str = "mtan",
                       categories: str = "eval", workers: int = 1, overwrite: bool = False,
                       splits: Sequence[str] = SPLITS, log=print) -> Path:
    """Convert ``raw`` into ``out/{train,val}/...``; returns ``out``. See the module docstring."""
    out = Path(out)
    height, width = size
    if height < 1 or width < 1:
        raise ValueError(f"--size must be positive, got {height}x{width}")
    disparity_values(np.zeros(1, np.uint16), disparity)  # reject a bad mode before any work
    label_tables(categories)
    found = {split: find_samples(raw, split) for split in splits}
    for split in splits:
        target = out / split
        if target.exists() and any(target.iterdir()) and not overwrite:
            raise DatasetError(f"Cityscapes prepare: output exists: {target}: found a non-empty folder; "
                               f"expected a new or empty --out (or pass --overwrite)")
        for folder in OUT_FOLDERS:
            (target / folder).mkdir(parents=True, exist_ok=True)
    jobs = [(out / split, i, paths, (height, width), disparity, categories)
            for split in splits for i, (_, paths) in enumerate(found[split])]
    start = time.perf_counter()
    if workers <= 1:
        for job in jobs:
            _convert_and_save(job)
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            list(pool.map(_convert_and_save, jobs, chunksize=16))
    sources = {"dataset": "cityscapes", "size": [height, width], "disparity": disparity,
               "categories": categories, "raw": str(raw),
               **{split: [key for key, _ in found[split]] for split in splits}}
    (out / "sources.json").write_text(json.dumps(sources, indent=1))
    counts = ", ".join(f"{split} {len(found[split])}" for split in splits)
    log(f"wrote Cityscapes ({counts} samples, {height}x{width}, disparity {disparity}, categories "
        f"{categories}) to {out} in {time.perf_counter() - start:.1f} s; "
        f"train with `python run.py dataset=cityscapes dataset.root={out}`")
    return out


def _parse_size(text: str) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size {text!r}: expected HEIGHTxWIDTH, e.g. 128x256") from None
    return height, width


def main(argv: Sequence[str] | None = None) -> Path:
    """CLI: ``python -m okd.data.prepare cityscapes --raw DIR --out DIR --size 128x256``."""
    parser = argparse.ArgumentParser(prog="python -m okd.data.prepare",
                                     description="Convert a raw dataset release into the layout okd reads.")
    sub = parser.add_subparsers(dest="dataset", required=True)
    city = sub.add_parser("cityscapes", help="official leftImg8bit + gtFine + disparity -> mtan .npy layout")
    city.add_argument("--raw", required=True, help="folder holding leftImg8bit/, gtFine/ and disparity/")
    city.add_argument("--out", required=True, help="output folder (becomes dataset.root)")
    city.add_argument("--size", type=_parse_size, default=(128, 256), help="HEIGHTxWIDTH (default 128x256)")
    city.add_argument("--disparity", choices=("mtan", "pixels"), default="mtan",
                      help="stored disparity: mtan = (p-1)/65536 (default), pixels = at the output width")
    city.add_argument("--categories", choices=("eval", "all"), default="eval",
                      help="label_7 where the train id is valid (eval, default) or for every label id")
    city.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                      help="processes converting in parallel")
    city.add_argument("--overwrite", action="store_true", help="write into a non-empty --out")
    args = parser.parse_args(argv)
    try:
        return prepare_cityscapes(args.raw, args.out, args.size, args.disparity, args.categories,
                                  args.workers, args.overwrite)
    except (DatasetError, ValueError) as err:
        print(f"okd.data.prepare: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
