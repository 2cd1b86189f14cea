"""Predictions: inputs from files, folders and dataset splits; npz arrays and PNG panels that a test opens."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from okd.data.synthetic import SyntheticScenes
from okd.models.segnet import SegNet
from okd.predict import (FONT_MIN, MIN_CELL, PredictInput, collect_inputs, colorize_depth, colorize_normal,
                         colorize_segmentation, depth_range, palette, panel_figure, panel_layout,
                         prediction_panels, render_panel, write_predictions)
from okd.tasks import build_tasks

ALL = ["segmentation", "depth", "normal"]
GAP_PX = 2  # okd.predict.GAP


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tiny_model(names=ALL, num_classes=6, seed=0):
    torch.manual_seed(seed)
    tasks = build_tasks(names, num_classes if "segmentation" in names else None)
    return SegNet(tasks, width=0.125).eval(), tasks


def enlarge(rgb, k):
    """An HxWx3 picture k times larger, nearest neighbour (as the panel shows small images)."""
    return np.asarray(rgb).repeat(k, 0).repeat(k, 1)


def write_png(path, height, width, seed):
    rgb = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)
    return rgb


def test_folder_of_pngs_gives_npz_and_panels_at_the_image_size(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    pixels = {"a": write_png(folder / "a.png", 32, 32, 0), "b": write_png(folder / "b.png", 32, 32, 1),
              "c": write_png(folder / "c.png", 40, 48, 2)}
    (folder / "notes.txt").write_text("not an image, not listed")
    model, tasks = tiny_model()
    inputs = collect_inputs(str(folder), size=(32, 32))
    assert [i.name for i in inputs] == ["a", "b", "c"]
    assert inputs[0].original is None and tuple(inputs[2].image.shape) == (3, 32, 32)
    assert tuple(inputs[2].original.shape) == (3, 40, 48)  # kept to resize predictions back

    paths = write_predictions(model, tasks, inputs, tmp_path / "out", "cpu", batch_size=2)
    assert [p.name for p in paths] == ["a.npz", "a.png", "b.npz", "b.png", "c.npz", "c.png"]
    for name, (h, w) in (("a", (32, 32)), ("c", (40, 48))):
        with np.load(tmp_path / "out" / f"{name}.npz") as npz:
            assert set(npz.files) == {"image", "segmentation", "depth", "normal"}
            assert npz["segmentation"].shape == (h, w) and npz["segmentation"].dtype == np.int32
            assert npz["segmentation"].min() >= 0 and npz["segmentation"].max() < 6
            assert npz["depth"].shape == (h, w) and npz["depth"].dtype == np.float32
            assert npz["normal"].shape == (3, h, w) and npz["normal"].dtype == np.float32
            np.testing.assert_allclose(np.linalg.norm(npz["normal"], axis=0), 1.0, atol=1e-4)
            # the image as read from the PNG, at its own size
            np.testing.assert_allclose(npz["image"].transpose(1, 2, 0) * 255, pixels[name], atol=1e-3)
        with Image.open(tmp_path / "out" / f"{name}.png") as png:
            # one row (no ground truth), four columns, no legend (no class names given)
            layout = panel_layout((h, w), ALL)
            assert png.size == layout.size and layout.nrows == 1 and not layout.legend
            canvas = np.asarray(png.convert("RGB"))
        top, left = layout.cell(0, 0)  # the input, enlarged by a whole factor (32 px -> 6 x 32 = 192 px)
        assert layout.scale == -(-MIN_CELL // w)
        cell = canvas[top:top + layout.cell_size[0], left:left + layout.cell_size[1]]
        np.testing.assert_array_equal(cell, enlarge(pixels[name], layout.scale))

    # the arrays are the model's own output for that image (batching and eval mode change nothing)
    with torch.inference_mode():
        out = model(inputs[1].image[None]).predictions
    with np.load(tmp_path / "out" / "b.npz") as npz:
        np.testing.assert_array_equal(npz["segmentation"], out["segmentation"][0].argmax(0).numpy())
        np.testing.assert_allclose(npz["depth"], out["depth"][0, 0].numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(npz["normal"], out["normal"][0].numpy(), rtol=1e-5, atol=1e-6)


def test_split_inputs_carry_targets_and_the_panel_shows_a_ground_truth_row(tmp_path):
    data = SyntheticScenes(3, height=32, width=32, num_classes=6, split="val")
    inputs = collect_inputs("split:val:2", {"val": data})
    assert [i.name for i in inputs] == ["val_0", "val_1"]
    assert set(inputs[0].targets) == set(ALL)
    model, tasks = tiny_model()
    names = [f"class{i}" for i in range(6)]
    write_predictions(model, tasks, inputs, tmp_path, "cpu", class_names=names)

    with np.load(tmp_path / "val_1.npz") as npz:
        pred_labels = npz["segmentation"]
    gt = data[1]
    shown = set(np.unique(pred_labels)) | set(np.unique(gt["segmentation"].numpy())) - {-1}
    layout = panel_layout((32, 32), ALL, ground_truth=True, legend=[(c, names[c]) for c in sorted(shown)])
    with Image.open(tmp_path / "val_1.png") as png:
        assert png.size == layout.size and layout.nrows == 2 and len(layout.legend) == len(shown)
        canvas = np.asarray(png.convert("RGB"))
    k, (ch, cw) = layout.scale, layout.cell_size
    top, left = layout.cell(1, 1)  # second row, segmentation column
    gt_cell = canvas[top:top + ch, left:left + cw]
    np.testing.assert_array_equal(gt_cell, enlarge(colorize_segmentation(gt["segmentation"].numpy()), k))
    ptop, _ = layout.cell(0, 1)
    np.testing.assert_array_equal(canvas[ptop:ptop + ch, left:left + cw], enlarge(colorize_segmentation(pred_labels), k))
    # ground-truth normals: (n + 1) / 2, black where the target is missing
    _, nleft = layout.cell(1, 3)
    np.testing.assert_array_equal(canvas[top:top + ch, nleft:nleft + cw],
                                  enlarge(colorize_normal(gt["normal"].numpy()), k))
    # the legend: one swatch of each class's colour
    for i, (cls, _) in enumerate(layout.legend):
        ltop, lleft, _ = layout.legend_entry(i)
        swatch = canvas[ltop + (layout.legend_line - layout.font) // 2, lleft + layout.font // 2]
        np.testing.assert_array_equal(swatch, palette()[cls + 1])


def test_split_errors_name_what_was_expected():
    data = SyntheticScenes(1, height=32, width=32, num_classes=6, split="val")
    with pytest.raises(ValueError, match="unknown split 'train'; available: val"):
        collect_inputs("split:train", {"val": data})
    with pytest.raises(ValueError, match="splits are needed"):
        collect_inputs("split:val")
    with pytest.raises(ValueError, match="count must be a positive integer"):
        collect_inputs("split:val:x", {"val": data})


def test_bad_files_and_folders_are_clear_errors(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"definitely not a PNG")
    with pytest.raises(ValueError, match=r"cannot read image .*bad\.png"):
        collect_inputs(str(tmp_path))
    write_png(tmp_path / "good.png", 32, 32, 0)
    truncated = (tmp_path / "good.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(truncated[: len(truncated) // 2])
    with pytest.raises(ValueError, match=r"cannot read image .*cut\.png"):
        collect_inputs(str(tmp_path / "cut.png"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="holds no images; expected files ending in .png"):
        collect_inputs(str(empty))
    with pytest.raises(FileNotFoundError, match="no such file or folder; expected an image file"):
        collect_inputs(str(tmp_path / "missing.jpg"))


def test_task_subsets_write_only_their_arrays_and_columns(tmp_path):
    write_png(tmp_path / "x.jpg", 64, 64, 3)  # JPEG, resized to 32x32 and predictions back to 64x64
    inputs = collect_inputs(str(tmp_path / "x.jpg"), size=(32, 32))
    model, tasks = tiny_model(["depth", "normal"])
    write_predictions(model, tasks, inputs, tmp_path / "dn", "cpu")
    with np.load(tmp_path / "dn" / "x.npz") as npz:
        assert set(npz.files) == {"image", "depth", "normal"} and npz["depth"].shape == (64, 64)
    with Image.open(tmp_path / "dn" / "x.png") as png:
        assert png.size == panel_layout((64, 64), ["depth", "normal"]).size and png.size[0] == 3 * 192 + 4 * 2
    # a subset of a three-task model, by name
    model3, _ = tiny_model()
    write_predictions(model3, ["depth"], inputs, tmp_path / "d", "cpu")
    with np.load(tmp_path / "d" / "x.npz") as npz:
        assert set(npz.files) == {"image", "depth"}
    with pytest.raises(ValueError, match=r"does not predict \['segmentation'\]"):
        write_predictions(model, ["segmentation"], inputs, tmp_path / "s", "cpu")


def test_fixed_colours():
    # PASCAL VOC colour map, shifted by one so that black stays for ignored pixels
    np.testing.assert_array_equal(palette(5), [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0], [0, 0, 128]])
    np.testing.assert_array_equal(palette()[8], [64, 0, 0])
    labels = np.array([[0, 1], [2, -1]])
    np.testing.assert_array_equal(colorize_segmentation(labels),
                                  [[[128, 0, 0], [0, 128, 0]], [[128, 128, 0], [0, 0, 0]]])
    depth = colorize_depth(np.array([[1.0, 3.0], [2.0, 0.0]]), 1.0, 3.0, valid=np.array([[1, 1], [1, 0]], bool))
    np.testing.assert_array_equal(depth[0, 0], [68, 1, 84])     # viridis(0)
    np.testing.assert_array_equal(depth[0, 1], [253, 231, 37])  # viridis(1)
    np.testing.assert_array_equal(depth[1, 1], [0, 0, 0])
    normal = np.zeros((3, 1, 2), np.float32)
    normal[:, 0, 0] = (0.0, 0.0, 1.0)
    np.testing.assert_array_equal(colorize_normal(normal), [[[128, 128, 255], [0, 0, 0]]])


def test_duplicate_names_are_refused(tmp_path):
    model, tasks = tiny_model()
    image = torch.rand(3, 32, 32)
    with pytest.raises(ValueError, match="unique"):
        write_predictions(model, tasks, [PredictInput("a", image), PredictInput("a", image)], tmp_path, "cpu")


def test_panels_without_files_match_the_written_png(tmp_path):
    data = SyntheticScenes(2, height=32, width=32, num_classes=6, split="test")
    inputs = collect_inputs("split:test", {"test": data})
    model, tasks = tiny_model()
    panels = prediction_panels(model, tasks, inputs, "cpu", batch_size=1)
    write_predictions(model, tasks, inputs, tmp_path, "cpu")
    assert [name for name, _ in panels] == ["test_0", "test_1"]
    with Image.open(tmp_path / "test_1.png") as png:
        np.testing.assert_array_equal(np.asarray(png.convert("RGB")), np.asarray(panels[1][1].convert("RGB")))


def text_boxes(fig):
    """(text, font size in px, window extent) of every visible text of a panel figure, as drawn."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.text import Text

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    return [(t.get_text(), t.get_fontsize() * fig.dpi / 72, t.get_window_extent(renderer))
            for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]


@pytest.mark.parametrize("size", [(8, 8), (16, 40), (32, 32), (120, 160), (288, 384)])
def test_titles_are_whole_and_readable_at_any_image_size(size):
    h, w = size
    rng = np.random.default_rng(0)
    pred = {"segmentation": rng.integers(0, 3, (h, w)), "depth": 1.0 + 5.0 * rng.random((h, w)),
            "normal": np.stack([np.zeros((h, w)), np.zeros((h, w)), np.ones((h, w))])}
    long_names = ["background", "a rather long class name for a small image", "chair"]
    legend = [(c, long_names[c]) for c in range(3)]
    layout = panel_layout((h, w), ALL, ground_truth=True, legend=legend, depth_unit="metres")
    assert layout.cell_size[1] >= MIN_CELL and layout.font >= FONT_MIN  # >= 12 px: 8.6 pt at 100 dpi
    assert [t.replace("\n", " ") for t in layout.titles] == ["input", "segmentation", "depth (m)",
                                                             "normal: RGB = (n + 1) / 2"]  # never cut
    fig = panel_figure(layout, ALL, depth_range(pred["depth"], None), "metres")
    boxes = text_boxes(fig)
    assert all(px >= FONT_MIN for _, px, _ in boxes)
    ch, cw = layout.cell_size
    for c, title in enumerate(layout.titles):  # each title inside its column and the header strip
        (box,) = [b for t, _, b in boxes if t == title]
        _, left = layout.cell(0, c)
        assert left - 1 <= box.x0 and box.x1 <= left + cw + 1
        assert box.y0 >= layout.height - layout.header - 1 and box.y1 <= layout.height
    # the depth colour bar: metres and the range shared by prediction and ground truth
    (label,) = [t for t, _, _ in boxes if t.startswith("depth (m): ")]
    lo, hi = depth_range(pred["depth"], None)
    assert label == f"depth (m): {lo:.3g} to {hi:.3g}"
    (bar,) = fig.axes
    assert len([t for t in bar.get_xticks() if lo <= t <= hi]) >= 2 and bar.get_xlim() == pytest.approx((lo, hi))
    # class names are whole where they fit, shortened with "…" only where a column is too narrow
    legend_texts = [t for t, _, _ in boxes if t[:3] in ("0: ", "1: ", "2: ")]
    assert "0: background" in legend_texts and len(legend_texts) == 3
    for t, _, b in boxes:
        assert 0 <= b.x0 and b.x1 <= layout.width + 1, t  # no text leaves the picture


def test_panel_pixels_show_the_colour_bar_and_unknown_units_say_so():
    h, w = 24, 24
    depth = np.linspace(1.0, 4.0, h * w).reshape(h, w)
    pred = {"depth": depth, "normal": np.stack([np.zeros((h, w)), np.zeros((h, w)), np.ones((h, w))])}
    panel = np.asarray(render_panel(torch.rand(3, h, w), pred, ["depth", "normal"], depth_unit="metres"))
    layout = panel_layout((h, w), ["depth", "normal"], depth_unit="metres")
    assert panel.shape[:2] == (layout.height, layout.width)
    strip = panel[layout.cell(0, 0)[0] + layout.cell_size[0] + GAP_PX:layout.legend_top]
    _, left = layout.cell(0, 1)
    strip = strip[:, left:left + layout.cell_size[1]]
    viridis = colorize_depth(np.array([[1.0, 4.0]]), 1.0, 4.0)[0]  # both ends of the colour map
    for colour in viridis:
        assert (np.abs(strip.astype(int) - colour).sum(axis=-1) <= 6).any()
    assert panel_layout((h, w), ["depth"]).titles[1] == "depth"  # no unit known: none claimed
    assert panel_layout((h, w), ["depth"], depth_unit="disparity").titles[1] == "depth (disparity)"


def test_views_carry_segmentation_masks_with_class_labels(tmp_path):
    """The masks W&B overlays: the predicted class ids of the npz, the ground truth with ignored pixels
    as IGNORED_MASK_ID, every class labelled by name; the panel is the one written to the PNG."""
    from okd.predict import IGNORED_MASK_ID, prediction_views

    dataset = SyntheticScenes(2, height=32, width=32, seed=3, split="test")
    model, tasks = tiny_model(num_classes=dataset.num_classes)
    inputs = collect_inputs("split:test", {"test": dataset})
    views = prediction_views(model, tasks, inputs, "cpu", class_names=dataset.class_names)
    write_predictions(model, tasks, inputs, tmp_path, "cpu", class_names=dataset.class_names)
    for i, view in enumerate(views):
        masks = view.masks
        with np.load(tmp_path / f"test_{i}.npz") as npz:
            np.testing.assert_array_equal(masks.prediction, npz["segmentation"])
            np.testing.assert_array_equal(masks.image, (np.clip(npz["image"].transpose(1, 2, 0), 0, 1) * 255 + 0.5)
                                          .astype(np.uint8))
        truth = dataset[i]["segmentation"].numpy()
        np.testing.assert_array_equal(masks.ground_truth, np.where(truth < 0, IGNORED_MASK_ID, truth))
        assert masks.prediction.dtype == np.uint8 and masks.ground_truth.dtype == np.uint8
        named = {c: n for c, n in masks.class_labels.items() if c != IGNORED_MASK_ID}
        assert named == dict(enumerate(dataset.class_names))
        assert (IGNORED_MASK_ID in masks.class_labels) == bool((truth < 0).any())
        np.testing.assert_array_equal(np.asarray(view.panel), np.asarray(Image.open(tmp_path / f"test_{i}.png")))
        wandb_masks = masks.wandb_masks()
        assert set(wandb_masks) == {"prediction", "ground_truth"}
        assert wandb_masks["ground_truth"]["class_labels"] == masks.class_labels
    # without segmentation there is nothing to mask
    model, tasks = tiny_model(["depth"])
    assert all(v.masks is None for v in prediction_views(model, tasks, inputs, "cpu"))
