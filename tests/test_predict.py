"""Predictions: inputs from files, folders and dataset splits; npz arrays and PNG panels that a test opens."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from okd.data.synthetic import SyntheticScenes
from okd.models.segnet import SegNet
from okd.predict import (GAP, HEADER, LEGEND_LINE, PredictInput, collect_inputs, colorize_depth,
                         colorize_normal, colorize_segmentation, palette, prediction_panels,
                         write_predictions)
from okd.tasks import build_tasks

ALL = ["segmentation", "depth", "normal"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny convolutions: a second torch thread only adds contention on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_model(names=ALL, num_classes=6, seed=0):
    torch.manual_seed(seed)
    tasks = build_tasks(names, num_classes if "segmentation" in names else None)
    return SegNet(tasks, width=0.125).eval(), tasks


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
            assert png.size == (4 * w + 5 * GAP, HEADER + h + 2 * GAP)

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
    with Image.open(tmp_path / "val_1.png") as png:
        assert png.size == (4 * 32 + 5 * GAP, HEADER + 2 * 32 + 3 * GAP + LEGEND_LINE * len(shown))
        canvas = np.asarray(png.convert("RGB"))
    top, left = HEADER + GAP + 32 + GAP, GAP + 32 + GAP  # second row, segmentation column
    gt_cell = canvas[top:top + 32, left:left + 32]
    np.testing.assert_array_equal(gt_cell, colorize_segmentation(gt["segmentation"].numpy()))
    pred_cell = canvas[HEADER + GAP:HEADER + GAP + 32, left:left + 32]
    np.testing.assert_array_equal(pred_cell, colorize_segmentation(pred_labels))
    # ground-truth normals: (n + 1) / 2, black where the target is missing
    nleft = GAP + 3 * (32 + GAP)
    np.testing.assert_array_equal(canvas[top:top + 32, nleft:nleft + 32], colorize_normal(gt["normal"].numpy()))


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
        assert png.size == (3 * 64 + 4 * GAP, HEADER + 64 + 2 * GAP)
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
