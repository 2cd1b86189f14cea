"""Predictions on images or dataset samples: raw arrays (``.npz``) and a picture per input (``.png``).

:func:`collect_inputs` turns an input spec into :class:`PredictInput` items: an image file
(PNG/JPEG/... read with PIL), a folder of images (sorted by file name), or ``split:<name>`` /
``split:<name>:<count>`` (samples of a dataset split, with their ground truth). Images are resized
(bilinear, antialiased when shrinking) to the model's input size when one is given, and the
predictions are resized back to the image's own size, so every output matches the input picture.

:func:`write_predictions` runs the model in batches under ``torch.inference_mode`` and writes, per
input ``<name>``:

* ``<name>.npz``: ``image`` (3xHxW float32 in [0, 1]) and one array per predicted task:
  ``segmentation`` (HxW int32 class ids), ``depth`` (HxW float32, the dataset's unit),
  ``normal`` (3xHxW float32 unit vectors);
* ``<name>.png``: a panel ``input | segmentation | depth | normal`` (the model's tasks only), a
  second row with the ground truth when the input has targets, a colour bar for depth (in the
  dataset's unit, e.g. metres, with the range shown) and a class legend when class names are given.
  Layout (:func:`panel_layout`): column titles over cells of the input's size, enlarged by a whole
  factor (nearest neighbour) where the image is narrower than :data:`MIN_CELL` pixels, separated by
  :data:`GAP` pixels of white; text is drawn with matplotlib at :data:`FONT_MIN` pixels or more
  (the cell width / 15), titles wrapped rather than cut, so they stay readable at any image size.

:func:`predict` yields the arrays without writing them; :func:`prediction_panels` returns the
panels as PIL images, :func:`prediction_views` the panels and, with segmentation, the class-id masks
(:class:`SegmentationMasks`: the input picture with prediction and ground-truth masks and the class
labels, which W&B draws as overlays toggleable per class); both are logged to W&B during training.

Colours (fixed, so pictures of different runs compare):

* segmentation: class ``c`` gets entry ``c + 1`` of the PASCAL VOC colour map (the bits of the
  index spread over the high bits of R, G and B: 0 -> (128, 0, 0), 1 -> (0, 128, 0),
  2 -> (128, 128, 0), 3 -> (0, 0, 128), ...); VOC entry 0 (black) is kept for ignored pixels;
* depth: matplotlib's ``viridis`` (near = dark blue, far = yellow) over one range shared by the
  prediction and the ground truth of the same input (the colour bar under the depth column);
* normals: RGB = (n + 1) / 2 per component (the column's title says so);
* ground-truth pixels without a target (label -1, depth 0, normal all zero) are black.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from okd.data.base import TASK_NAMES

if TYPE_CHECKING:
    import PIL.Image

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
GAP = 2            # px: white border between cells
MIN_CELL = 192     # px: narrower images are enlarged by a whole factor (nearest neighbour) in the panel
FONT_MIN, FONT_MAX = 12, 32  # px: text height, the cell width / 15 in between (readable at any size)
LINE_SPACING = 1.25
DPI = 100          # the panel's text is laid out in pixels: points = pixels * 72 / DPI
DEPTH_COLORMAP = "viridis"
#: the dataset's ``depth_unit`` (okd/data: ``info``) -> the unit in the panel's depth title and colour bar
DEPTH_UNITS = {"metres": "m", "meters": "m", "m": "m", "disparity": "disparity"}
NORMAL_TITLE = "normal: RGB = (n + 1) / 2"


@dataclass
class PredictInput:
    """One picture to predict on.

    ``image`` is what the model sees (3xHxW float in [0, 1], already at the model's size);
    ``original`` is the image as read when it was resized (predictions go back to its size);
    ``targets`` are ground-truth tensors in the sample conventions of okd/data/base.py, at the
    size of ``original`` (or of ``image`` when not resized).
    """

    name: str
    image: Tensor
    targets: dict[str, Tensor] | None = None
    original: Tensor | None = None

    @property
    def output_size(self) -> tuple[int, int]:
        shown = self.original if self.original is not None else self.image
        return int(shown.shape[-2]), int(shown.shape[-1])

    @property
    def shown_image(self) -> Tensor:
        return self.original if self.original is not None else self.image


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------
def collect_inputs(spec: str, splits: Mapping[str, Dataset] | None = None,
                   size: tuple[int, int] | None = None) -> list[PredictInput]:
    """Inputs named by ``spec``: an image file, a folder of images, or ``split:<name>[:<count>]``."""
    if size is not None:
        size = _check_size(size)
    if spec.startswith("split:"):
        return _split_inputs(spec, splits, size)
    path = Path(spec).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise FileNotFoundError(f"input folder {path} holds no images; expected files ending in "
                                    f"{', '.join(IMAGE_EXTENSIONS)}")
        names = _unique_names(files)
        return [_image_input(name, read_image(f), size) for name, f in zip(names, files)]
    if path.is_file():
        return [_image_input(path.stem, read_image(path), size)]
    available = f" (splits: {', '.join(sorted(splits))})" if splits else ""
    raise FileNotFoundError(f"input {spec!r}: no such file or folder; expected an image file, a folder of "
                            f"images or split:<name>{available}")


def read_image(path: str | Path) -> Tensor:
    """An image file as 3xHxW float32 in [0, 1] (RGB; grey, alpha and palettes converted)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()  # decode now: a truncated file fails here, with the file named
            img = ImageOps.exif_transpose(img).convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise ValueError(f"cannot read image {path}: {err} (expected a PNG/JPEG/... image file)") from err
    array = np.asarray(img, dtype=np.float32) / 255.0
    return torch.from_numpy(array.transpose(2, 0, 1).copy())


def _split_inputs(spec: str, splits: Mapping[str, Dataset] | None,
                  size: tuple[int, int] | None) -> list[PredictInput]:
    parts = spec.split(":")
    if len(parts) not in (2, 3) or not parts[1]:
        raise ValueError(f"input {spec!r}: expected split:<name> or split:<name>:<count>")
    name = parts[1]
    if not splits:
        raise ValueError(f"input {spec!r}: dataset splits are needed for a split input, none were given")
    if name not in splits:
        raise ValueError(f"input {spec!r}: unknown split {name!r}; available: {', '.join(sorted(splits))}")
    dataset = splits[name]
    count = len(dataset)
    if len(parts) == 3:
        if not parts[2].isdigit() or int(parts[2]) < 1:
            raise ValueError(f"input {spec!r}: the count must be a positive integer, got {parts[2]!r}")
        count = min(count, int(parts[2]))
    inputs = []
    for i in range(count):
        sample = dataset[i]
        targets = {k: v for k, v in sample.items() if k in TASK_NAMES}
        inputs.append(_image_input(f"{name}_{i}", sample["image"].float(), size, targets or None))
    return inputs


def _image_input(name: str, image: Tensor, size: tuple[int, int] | None,
                 targets: dict[str, Tensor] | None = None) -> PredictInput:
    if size is None or tuple(image.shape[-2:]) == size:
        return PredictInput(name, image, targets)
    return PredictInput(name, resize_image(image, size), targets, original=image)


def resize_image(image: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of a 3xHxW image; antialiased when shrinking (like PIL) to avoid aliasing."""
    shrink = size[0] < image.shape[-2] or size[1] < image.shape[-1]
    return F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=shrink)[0]


def _check_size(size) -> tuple[int, int]:
    size = tuple(int(s) for s in size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"size must be (height, width) with positive values, got {size}")
    return size


def _unique_names(files: Sequence[Path]) -> list[str]:
    """File stems, with the extension kept where two files share a stem (a.png and a.jpg)."""
    stems = [f.stem for f in files]
    return [f.stem if stems.count(f.stem) == 1 else f.name.replace(".", "_") for f in files]


# ---------------------------------------------------------------------------------------------
# Predictions
# ---------------------------------------------------------------------------------------------
def write_predictions(model: torch.nn.Module, tasks: Sequence, inputs: Sequence[PredictInput],
                      out_dir: str | Path, device: str | torch.device, batch_size: int = 8,
                      class_names: Sequence[str] | None = None, depth_unit: str | None = None) -> list[Path]:
    """Predict every input and write ``<name>.npz`` and ``<name>.png`` into ``out_dir``.

    ``tasks``: the tasks to predict (Task objects or names), each one the model predicts. The model
    is moved to ``device`` and put in eval mode. ``class_names`` label the segmentation legend and
    ``depth_unit`` (the dataset's, e.g. ``metres``) the depth title and colour bar. Inputs are batched by image size; each batch's
    files are written before the next batch runs, so memory stays flat on long splits. Returns the
    written paths in input order (npz, png, npz, png, ...).
    """
    duplicates = sorted({i.name for i in inputs if sum(j.name == i.name for j in inputs) > 1})
    if duplicates:
        raise ValueError(f"input names must be unique (they name the output files): {duplicates}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = _task_names(model, tasks)
    written: dict[str, list[Path]] = {}
    for item, pred in predict(model, names, inputs, device, batch_size):
        written[item.name] = _write_one(item, pred, names, out_dir, class_names, depth_unit)
    return [p for item in inputs for p in written[item.name]]


def prediction_panels(model: torch.nn.Module, tasks: Sequence, inputs: Sequence[PredictInput],
                      device: str | torch.device, batch_size: int = 8, class_names: Sequence[str] | None = None,
                      depth_unit: str | None = None) -> list[tuple[str, "PIL.Image.Image"]]:
    """``(name, PIL image)`` panels without writing files (e.g. a few fixed images for W&B)."""
    return [(v.name, v.panel) for v in prediction_views(model, tasks, inputs, device, batch_size, class_names,
                                                        depth_unit, masks=False)]


@dataclass
class SegmentationMasks:
    """An input picture with its segmentation as class-id masks, for trackers that draw them as overlays
    toggleable per class (W&B: ``wandb.Image(image, masks=...)``, :meth:`wandb_masks`).

    ``prediction`` and ``ground_truth`` are HxW uint8 class ids at the picture's size; ground-truth pixels
    without a label carry :data:`IGNORED_MASK_ID`. ``class_labels``: id -> name for every class (the
    dataset's class names, else ``class <id>``), plus ``ignored`` where the ground truth has such pixels.
    """

    image: np.ndarray
    prediction: np.ndarray
    ground_truth: np.ndarray | None
    class_labels: dict[int, str]

    def wandb_masks(self) -> dict[str, dict]:
        masks = {"prediction": {"mask_data": self.prediction, "class_labels": self.class_labels}}
        if self.ground_truth is not None:
            masks["ground_truth"] = {"mask_data": self.ground_truth, "class_labels": self.class_labels}
        return masks


#: the mask id of ground-truth pixels without a label (masks hold 0..255)
IGNORED_MASK_ID = 255


def segmentation_masks(image: Tensor, pred: np.ndarray, target: np.ndarray | None, num_classes: int,
                       class_names: Sequence[str] | None = None) -> SegmentationMasks | None:
    """The masks of one input (None when the class ids do not fit a mask: 255 classes or more)."""
    if num_classes >= IGNORED_MASK_ID:
        return None
    labels = {c: (str(class_names[c]) if class_names and c < len(class_names) else f"class {c}")
              for c in range(num_classes)}
    truth = None
    if target is not None:
        target = np.asarray(target)
        valid = (target >= 0) & (target < num_classes)
        truth = np.where(valid, target, IGNORED_MASK_ID).astype(np.uint8)
        if not valid.all():
            labels[IGNORED_MASK_ID] = "ignored"
    return SegmentationMasks(image_to_rgb(image), np.asarray(pred).astype(np.uint8), truth, labels)


@dataclass
class PredictionView:
    """What a tracker shows of one input: the panel and, with segmentation, its masks."""

    name: str
    panel: "PIL.Image.Image"
    masks: SegmentationMasks | None = None


def prediction_views(model: torch.nn.Module, tasks: Sequence, inputs: Sequence[PredictInput],
                     device: str | torch.device, batch_size: int = 8, class_names: Sequence[str] | None = None,
                     depth_unit: str | None = None, masks: bool = True) -> list[PredictionView]:
    """The panel of every input and (``masks``, when the model segments) its :class:`SegmentationMasks`,
    from one prediction per input."""
    names = _task_names(model, tasks)
    num_classes = _num_classes(model, tasks, class_names) if masks and "segmentation" in names else None
    views = []
    for item, pred in predict(model, names, inputs, device, batch_size):
        targets = _target_arrays(item.targets, names) if item.targets else None
        view = PredictionView(item.name, render_panel(item.shown_image, pred, names, targets, class_names, depth_unit))
        if num_classes:
            view.masks = segmentation_masks(item.shown_image, pred["segmentation"],
                                            (targets or {}).get("segmentation"), num_classes, class_names)
        views.append(view)
    return views


def _num_classes(model: torch.nn.Module, tasks: Sequence, class_names: Sequence[str] | None) -> int:
    """The segmentation head's class count (the task's channels), else the number of class names."""
    for task in [*tasks, *getattr(model, "tasks", [])]:
        if not isinstance(task, str) and task.name == "segmentation" and getattr(task, "channels", None):
            return int(task.channels)
    return len(class_names or [])


def predict(model: torch.nn.Module, tasks: Sequence, inputs: Sequence[PredictInput],
            device: str | torch.device, batch_size: int = 8) -> Iterator[tuple[PredictInput, dict[str, np.ndarray]]]:
    """Yield ``(input, {task: array})`` batch by batch (arrays as in the npz, at the input's size)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not inputs:
        raise ValueError("no inputs to predict on")
    names = _task_names(model, tasks)  # checked now, not at the first iteration
    device = torch.device(device)
    model.to(device).eval()
    return _predict_batches(model, names, inputs, device, batch_size)


def _predict_batches(model, names, inputs, device, batch_size):
    for batch in _batches(inputs, batch_size):
        yield from zip(batch, _predict_batch(model, names, batch, device))


def _task_names(model: torch.nn.Module, tasks: Sequence) -> list[str]:
    names = [t if isinstance(t, str) else t.name for t in tasks]
    model_tasks = [t.name for t in getattr(model, "tasks", [])]
    if not names:
        raise ValueError("no task to predict")
    unknown = [n for n in names if model_tasks and n not in model_tasks]
    if unknown:
        raise ValueError(f"the model does not predict {unknown}; it predicts {model_tasks}")
    return names


def _batches(inputs: Sequence[PredictInput], batch_size: int) -> list[list[PredictInput]]:
    """Consecutive chunks of inputs of one model-input size (stacking needs equal sizes)."""
    by_size: dict[tuple, list[PredictInput]] = {}
    for item in inputs:
        by_size.setdefault(tuple(item.image.shape), []).append(item)
    return [items[i:i + batch_size] for items in by_size.values() for i in range(0, len(items), batch_size)]


@torch.inference_mode()
def _predict_batch(model: torch.nn.Module, names: Sequence[str], batch: Sequence[PredictInput],
                   device: torch.device) -> list[dict[str, np.ndarray]]:
    images = torch.stack([item.image for item in batch]).to(device)
    try:
        out = model(images).predictions
    except RuntimeError as err:
        raise RuntimeError(f"the model failed on inputs of size {tuple(images.shape[-2:])} "
                           f"({[i.name for i in batch]}); pass the training size to resize them: {err}") from err
    results: list[dict[str, np.ndarray]] = [{} for _ in batch]
    for name in names:
        raw = out[name].float()
        for j, item in enumerate(batch):
            results[j][name] = _to_output(name, raw[j:j + 1], item.output_size)
    return results


def _to_output(task: str, raw: Tensor, size: tuple[int, int]) -> np.ndarray:
    """One prediction (1xCxhxw) at the input's own size, as the npz array of its task."""
    if tuple(raw.shape[-2:]) != size:
        # logits, depth and normals are smooth fields: bilinear, then argmax / renormalise
        raw = F.interpolate(raw, size=size, mode="bilinear", align_corners=False)
        if task == "normal":
            raw = F.normalize(raw, p=2, dim=1)
    if task == "segmentation":
        return raw.argmax(dim=1)[0].to(torch.int32).cpu().numpy()
    if task == "depth":
        return raw[0, 0].cpu().numpy().astype(np.float32)
    return raw[0].cpu().numpy().astype(np.float32)


def _write_one(item: PredictInput, pred: Mapping[str, np.ndarray], names: Sequence[str], out_dir: Path,
               class_names: Sequence[str] | None, depth_unit: str | None = None) -> list[Path]:
    npz = out_dir / f"{item.name}.npz"
    np.savez_compressed(npz, image=item.shown_image.float().cpu().numpy().astype(np.float32), **pred)
    png = out_dir / f"{item.name}.png"
    targets = _target_arrays(item.targets, names) if item.targets else None
    render_panel(item.shown_image, pred, names, targets, class_names, depth_unit).save(png)
    return [npz, png]


def _target_arrays(targets: Mapping[str, Tensor], names: Sequence[str]) -> dict[str, np.ndarray]:
    out = {}
    for name in names:
        if name in targets:
            value = targets[name].cpu().numpy()
            out[name] = value[0] if name == "depth" and value.ndim == 3 else value
    return out


# ---------------------------------------------------------------------------------------------
# Pictures
# ---------------------------------------------------------------------------------------------
def palette(num_colors: int = 256) -> np.ndarray:
    """PASCAL VOC colour map (num_colors x 3 uint8): the index's bits fill R, G, B from the top bit."""
    colors = np.zeros((num_colors, 3), dtype=np.uint8)
    for index in range(num_colors):
        value, r, g, b = index, 0, 0, 0
        for bit in range(7, -1, -1):
            r |= (value & 1) << bit
            g |= ((value >> 1) & 1) << bit
            b |= ((value >> 2) & 1) << bit
            value >>= 3
        colors[index] = (r, g, b)
    return colors


_PALETTE = palette()


def colorize_segmentation(labels: np.ndarray) -> np.ndarray:
    """HxW class ids -> HxWx3 uint8: class c gets VOC colour c + 1; ignored (< 0 or > 254) black."""
    labels = np.asarray(labels).astype(np.int64)
    valid = (labels >= 0) & (labels < len(_PALETTE) - 1)
    return np.where(valid[..., None], _PALETTE[np.clip(labels + 1, 0, len(_PALETTE) - 1)], 0).astype(np.uint8)


def colorize_depth(depth: np.ndarray, vmin: float, vmax: float, valid: np.ndarray | None = None) -> np.ndarray:
    """HxW depth -> HxWx3 uint8 with matplotlib's viridis over [vmin, vmax]; invalid pixels black."""
    from matplotlib import colormaps

    scale = (vmax - vmin) if vmax > vmin else 1.0
    normed = np.clip((np.asarray(depth, dtype=np.float64) - vmin) / scale, 0.0, 1.0)
    rgb = (colormaps[DEPTH_COLORMAP](normed)[..., :3] * 255.0 + 0.5).astype(np.uint8)
    if valid is not None:
        rgb[~valid] = 0
    return rgb


def colorize_normal(normal: np.ndarray) -> np.ndarray:
    """3xHxW unit normals -> HxWx3 uint8 RGB = (n + 1) / 2; all-zero (invalid) pixels black."""
    normal = np.asarray(normal, dtype=np.float64)
    rgb = (np.clip((normal.transpose(1, 2, 0) + 1.0) / 2.0, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    rgb[~np.any(normal != 0, axis=0)] = 0
    return rgb


def image_to_rgb(image: Tensor | np.ndarray) -> np.ndarray:
    array = image.float().cpu().numpy() if isinstance(image, Tensor) else np.asarray(image)
    return (np.clip(array.transpose(1, 2, 0), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def depth_range(pred: np.ndarray, target: np.ndarray | None) -> tuple[float, float]:
    """One colour range for a prediction and its ground truth: min/max over both (valid GT only)."""
    values = [np.asarray(pred, dtype=np.float64).ravel()]
    if target is not None:
        values.append(np.asarray(target, dtype=np.float64)[np.asarray(target) != 0])
    finite = np.concatenate(values)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return 0.0, 1.0
    return float(finite.min()), float(finite.max())


def depth_label(depth_unit: str | None) -> str:
    """``depth (m)`` for metres, ``depth (disparity)`` for inverse depth, ``depth`` when unknown."""
    if not depth_unit:
        return "depth"
    return f"depth ({DEPTH_UNITS.get(str(depth_unit), str(depth_unit))})"


def _titles(names: Sequence[str], depth_unit: str | None) -> list[str]:
    titles = ["input"]
    for name in names:
        titles.append(depth_label(depth_unit) if name == "depth"
                      else NORMAL_TITLE if name == "normal" else name)
    return titles


@dataclass
class PanelLayout:
    """Pixel geometry of a panel (top-left origin).

    Cells are the image's size times ``scale`` (a whole factor, nearest neighbour, so that a cell
    is at least :data:`MIN_CELL` pixels wide and its title fits at a readable size), separated by
    :data:`GAP` pixels. Below the rows: the depth colour bar (under the depth column) and the
    class legend (``legend_cols`` columns of ``legend_line``-pixel lines).
    """

    image_size: tuple[int, int]
    scale: int
    ncols: int
    nrows: int
    font: int                  # px: text height (font size at :data:`DPI`)
    titles: list[str]          # one per column, possibly over several lines
    header: int                # px: the title strip
    colorbar: int              # px: the strip with the depth colour bar (0 without depth)
    legend: list[tuple[int, str]]
    legend_cols: int
    legend_line: int

    @property
    def cell_size(self) -> tuple[int, int]:
        return self.image_size[0] * self.scale, self.image_size[1] * self.scale

    @property
    def width(self) -> int:
        return self.ncols * self.cell_size[1] + (self.ncols + 1) * GAP

    @property
    def legend_top(self) -> int:
        return self.header + self.nrows * (self.cell_size[0] + GAP) + GAP + self.colorbar

    @property
    def height(self) -> int:
        rows = -(-len(self.legend) // self.legend_cols) if self.legend else 0
        return self.legend_top + rows * self.legend_line + (GAP if self.legend else 0)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height), as PIL reports it."""
        return self.width, self.height

    def cell(self, row: int, col: int) -> tuple[int, int]:
        """(top, left) pixel of a cell."""
        h, w = self.cell_size
        return self.header + GAP + row * (h + GAP), GAP + col * (w + GAP)

    def legend_entry(self, index: int) -> tuple[int, int, int]:
        """(top, left, width) of the legend entry ``index`` (filled row by row)."""
        col_width = (self.width - GAP) // self.legend_cols
        row, col = divmod(index, self.legend_cols)
        return self.legend_top + row * self.legend_line, GAP + col * col_width, col_width


def panel_layout(image_size: tuple[int, int], names: Sequence[str], ground_truth: bool = False,
                 legend: Sequence[tuple[int, str]] = (), depth_unit: str | None = None) -> PanelLayout:
    """The geometry of the panel of one input (see :class:`PanelLayout`); titles wrapped to fit."""
    h, w = int(image_size[0]), int(image_size[1])
    scale = max(1, -(-MIN_CELL // w))
    cell_w = w * scale
    font = int(min(FONT_MAX, max(FONT_MIN, cell_w // 15)))
    titles = [_fit_text(t, font, cell_w - 4) for t in _titles(names, depth_unit)]
    line = round(font * LINE_SPACING)
    header = max(t.count("\n") + 1 for t in titles) * line + font // 2
    colorbar = (font + 3 * line + font // 2) if "depth" in names else 0
    legend = list(legend)
    ncols = 1 + len(names)
    width = ncols * cell_w + (ncols + 1) * GAP
    entry = max((_text_width(f"{c}: {n}", font) for c, n in legend), default=0) + 2.5 * font
    legend_cols = max(1, min(len(legend), int((width - GAP) // max(entry, 1)))) if legend else 1
    return PanelLayout((h, w), scale, ncols, 1 + int(ground_truth), font, titles, header, colorbar, legend,
                       legend_cols, round(font * 1.5))


def render_panel(image: Tensor, pred: Mapping[str, np.ndarray], names: Sequence[str],
                 targets: Mapping[str, np.ndarray] | None = None,
                 class_names: Sequence[str] | None = None, depth_unit: str | None = None):
    """The PNG panel as a PIL image (layout: :class:`PanelLayout`; text drawn by matplotlib)."""
    from PIL import Image

    layout = panel_layout(image.shape[-2:], names, bool(targets),
                          _legend_classes(pred, targets, names, class_names), depth_unit)
    depth = depth_range(pred["depth"], (targets or {}).get("depth")) if "depth" in names else None
    fig = panel_figure(layout, names, depth, depth_unit)
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    rgb = np.asarray(canvas.buffer_rgba())[:layout.height, :layout.width, :3].copy()
    rows = [[image_to_rgb(image)] + _task_cells(pred, names, targets, ground_truth=False)]
    if targets:
        rows.append([None] + _task_cells(pred, names, targets, ground_truth=True))
    ch, cw = layout.cell_size
    for r, cells in enumerate(rows):
        for c, cell in enumerate(cells):
            if cell is None:  # the ground-truth row's first cell holds its label
                continue
            top, left = layout.cell(r, c)
            rgb[top:top + ch, left:left + cw] = cell.repeat(layout.scale, 0).repeat(layout.scale, 1)
    swatch = layout.font
    for i, (cls, _) in enumerate(layout.legend):
        top, left, _ = layout.legend_entry(i)
        y = top + (layout.legend_line - swatch) // 2
        rgb[y:y + swatch, left:left + swatch] = _PALETTE[cls + 1]
    return Image.fromarray(rgb)


def panel_figure(layout: PanelLayout, names: Sequence[str], depth: tuple[float, float] | None,
                 depth_unit: str | None = None):
    """The panel's text and depth colour bar as a matplotlib figure of exactly the panel's pixels
    (cells and legend swatches are left white: :func:`render_panel` pastes them pixel for pixel)."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator
    from matplotlib.transforms import IdentityTransform

    # a hair over the size: the canvas is int(inches * dpi) pixels, and 0.29 * 100 = 28.999...
    fig = Figure(figsize=((layout.width + 0.01) / DPI, (layout.height + 0.01) / DPI), dpi=DPI, facecolor="white")
    points = layout.font * 72 / DPI
    height = layout.height

    def text(x: float, y: float, s: str, **kw):  # pixel coordinates from the top left
        return fig.text(x, height - y, s, transform=IdentityTransform(), fontsize=points,
                        linespacing=LINE_SPACING, **kw)

    ch, cw = layout.cell_size
    for c, title in enumerate(layout.titles):
        text(GAP + c * (cw + GAP) + cw / 2, layout.font // 4, title, ha="center", va="top")
    if layout.nrows > 1:
        top, left = layout.cell(1, 0)
        text(left + cw / 2, top + ch / 2, "ground truth", ha="center", va="center")
    if depth is not None and layout.colorbar:
        col = 1 + list(names).index("depth")
        left = GAP + col * (cw + GAP) + cw * 0.08
        bar_top = layout.header + layout.nrows * (ch + GAP) + GAP + layout.font // 2
        cax = fig.add_axes((left / layout.width, 1 - (bar_top + layout.font) / height,
                            cw * 0.84 / layout.width, layout.font / height))
        vmin, vmax = depth
        # colorize_depth maps a constant depth to the low end: so does a bar of range [vmin, vmin + 1]
        norm = Normalize(vmin, vmax if vmax > vmin else vmin + 1.0)
        bar = fig.colorbar(ScalarMappable(norm, colormaps[DEPTH_COLORMAP]), cax=cax,
                           orientation="horizontal")
        bar.locator = MaxNLocator(nbins=max(2, int(cw * 0.84 // (4 * layout.font))))
        bar.update_ticks()
        cax.tick_params(labelsize=points, length=layout.font / 4 * 72 / DPI, pad=1)
        bar.set_label(f"{depth_label(depth_unit)}: {vmin:.3g} to {vmax:.3g}", fontsize=points, labelpad=1)
        bar.outline.set_linewidth(0.5)
    for i, (cls, label) in enumerate(layout.legend):
        top, left, width = layout.legend_entry(i)
        text(left + layout.font * 1.5, top + layout.legend_line / 2, _fit_text(f"{cls}: {label}", layout.font,
             width - layout.font * 2, wrap=False), ha="left", va="center")
    return fig


def _task_cells(pred: Mapping[str, np.ndarray], names: Sequence[str], targets: Mapping[str, np.ndarray] | None,
                ground_truth: bool) -> list[np.ndarray]:
    cells = []
    for name in names:
        value = (targets or {}).get(name) if ground_truth else pred[name]
        shape = pred[name].shape[-2:]
        if value is None:  # the input has no target for this task
            cells.append(np.zeros((*shape, 3), np.uint8))
        elif name == "segmentation":
            cells.append(colorize_segmentation(value))
        elif name == "depth":
            vmin, vmax = depth_range(pred[name], (targets or {}).get(name))
            cells.append(colorize_depth(value, vmin, vmax, (value != 0) if ground_truth else None))
        else:
            cells.append(colorize_normal(value))
    return cells


def _legend_classes(pred, targets, names, class_names) -> list[tuple[int, str]]:
    if not class_names or "segmentation" not in names:
        return []
    present = set(np.unique(pred["segmentation"]).tolist())
    if targets and "segmentation" in targets:
        present |= set(np.unique(targets["segmentation"]).tolist())
    # classes beyond the palette (>= 255) have no colour of their own and stay out of the legend
    return [(c, class_names[c] if c < len(class_names) else str(c)) for c in sorted(present)
            if 0 <= c < len(_PALETTE) - 1]


_MEASURE = None


def _text_width(text: str, font: int) -> float:
    """Width in pixels of one line of ``text`` at ``font`` pixels (matplotlib's default font)."""
    global _MEASURE
    from matplotlib.backends.backend_agg import RendererAgg
    from matplotlib.font_manager import FontProperties

    if _MEASURE is None:
        _MEASURE = RendererAgg(8, 8, DPI)
    width, _, _ = _MEASURE.get_text_width_height_descent(text, FontProperties(size=font * 72 / DPI), ismath=False)
    return float(width)


def _fit_text(text: str, font: int, width: float, wrap: bool = True) -> str:
    """``text`` broken at spaces into lines that fit ``width`` pixels (a word too long for a line
    keeps its own line; ``wrap=False``: one line, shortened with an ellipsis only if it cannot fit)."""
    if _text_width(text, font) <= width:
        return text
    if not wrap:
        while len(text) > 1 and _text_width(text + "…", font) > width:
            text = text[:-1]
        return text + "…"
    lines: list[str] = []
    for word in text.split(" "):
        if lines and _text_width(f"{lines[-1]} {word}", font) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return "\n".join(lines)


__all__ = ["PredictInput", "collect_inputs", "read_image", "resize_image", "write_predictions", "predict",
           "prediction_panels", "prediction_views", "PredictionView", "SegmentationMasks", "segmentation_masks",
           "IGNORED_MASK_ID", "palette", "panel_layout", "PanelLayout", "depth_label",
           "colorize_segmentation", "colorize_depth", "colorize_normal", "render_panel", "IMAGE_EXTENSIONS"]
