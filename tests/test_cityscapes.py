"""Cityscapes loader: mtan folders (no label_2 needed), 7/19 classes, load-time resize, AdaShare's json."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from okd.data.cityscapes import Cityscapes, build
from okd.data.validate import DatasetError
from tests.helpers import DATA_DOCS as DOCS, dataset_tree_fixtures, train_cli

N_TRAIN, N_TEST, H, W = 10, 3, 32, 64


pristine, tree = dataset_tree_fixtures("cityscapes", N_TRAIN, N_TEST, H, W)  # the tree, and a copy a test may damage


def on_disk(root: Path, rel: str) -> np.ndarray:
    return np.load(root / rel)


@pytest.mark.parametrize("num_classes", [7, 19])
def test_samples_match_the_files(pristine, num_classes):
    assert not (pristine / "train" / "label_2").exists()  # the loader must not need it
    bundle = build(pristine, num_classes=num_classes)
    assert bundle.name == "Cityscapes" and bundle.tasks == ["segmentation", "depth"]
    assert bundle.num_classes == num_classes and len(bundle.info["class_names"]) == num_classes
    assert bundle.info["depth_unit"] == "disparity" and bundle.info["index"] == "folders"
    assert {k: len(v) for k, v in bundle.eval_splits.items()} == {"val": 2, "test": N_TEST}
    sample = bundle.eval_splits["test"][2]
    label = on_disk(pristine, f"val/label_{num_classes}/2.npy")
    assert torch.equal(sample["segmentation"], torch.from_numpy(label).long())
    assert sample["segmentation"].max() < num_classes and (sample["segmentation"] == -1).any()
    assert torch.equal(sample["depth"], torch.from_numpy(on_disk(pristine, "val/depth/2.npy")).permute(2, 0, 1))
    assert 0 < float(sample["depth"].max()) <= 0.49
    assert torch.equal(sample["image"], torch.from_numpy(on_disk(pristine, "val/image/2.npy")).permute(2, 0, 1))


def test_resize_at_load_time(pristine):
    bundle = build(pristine, resize_to=[16, 32])
    assert (bundle.info["height"], bundle.info["width"]) == (16, 32)
    for split in (bundle.train, bundle.eval_splits["val"], bundle.eval_splits["test"]):
        sample = split[0]
        assert sample["image"].shape == (3, 16, 32) and sample["depth"].shape == (1, 16, 32)
    sample = bundle.eval_splits["test"][0]
    label = torch.from_numpy(on_disk(pristine, "val/label_7/0.npy")).long()
    depth = torch.from_numpy(on_disk(pristine, "val/depth/0.npy")[..., 0])
    assert torch.equal(sample["segmentation"], label[1::2, 1::2])  # nearest: the pixel under the centre
    assert torch.equal(sample["depth"][0], depth[1::2, 1::2])  # never blended with invalid zeros
    image = torch.from_numpy(on_disk(pristine, "val/image/0.npy")).permute(2, 0, 1)
    assert torch.allclose(sample["image"].mean((1, 2)), image.mean((1, 2)), atol=2e-3)
    with pytest.raises(ValueError, match="resize_to"):
        build(pristine, resize_to=[16])


def test_augmentation_multiplies_disparity(pristine):
    plain = build(pristine, val_fraction=0.0, select_split="test")
    aug = build(pristine, val_fraction=0.0, select_split="test", augment=True, scales=[1.5], flip=False)
    torch.manual_seed(0)
    a, b = aug.train[0], plain.train[0]
    # a 1.5x zoom brings the scene 1.5x closer: every disparity is 1.5 times a stored one
    stored = np.unique(b["depth"][b["depth"] > 0].numpy())
    zoomed = np.unique(a["depth"][a["depth"] > 0].numpy())
    assert np.abs(zoomed[:, None] - 1.5 * stored[None]).min(1).max() < 1e-6
    assert np.abs(zoomed[:, None] - stored[None] / 1.5).min(1).max() > 1e-3  # not divided


def test_bad_options(pristine):
    with pytest.raises(ValueError, match="unknown task"):
        build(pristine, tasks=["segmentation", "normal"])
    with pytest.raises(DatasetError, match="num_classes=5 is invalid"):
        build(pristine, num_classes=5)
    with pytest.raises(DatasetError, match="index='csv' is invalid"):
        build(pristine, index="csv")
    with pytest.raises(DatasetError, match="dataset.root is not set") as info:
        build(None)
    assert "dataset=cityscapes dataset.root=" in str(info.value) and DOCS in str(info.value)


def test_missing_label_folder_names_it(tree):
    shutil.rmtree(tree / "train" / "label_19")
    build(tree, num_classes=7)  # only the chosen label folder is needed
    with pytest.raises(DatasetError, match=r"missing modality folder 'label_19'.*found \[depth/, image/, label_7/\]"):
        build(tree, num_classes=19)


def test_bad_label_range_for_7_classes(tree):
    label = on_disk(tree, "train/label_7/0.npy")
    label[0, 0] = 7
    np.save(tree / "train" / "label_7" / "0.npy", label)
    with pytest.raises(DatasetError, match=r"label values out of range.*found values 7; expected class indices 0..6"):
        build(tree)


def test_ignore_255_is_read_as_minus_one(tree):
    label = on_disk(tree, "val/label_19/0.npy")
    label[label == -1] = 255
    np.save(tree / "val" / "label_19" / "0.npy", label)
    sample = build(tree, num_classes=19).eval_splits["test"][0]
    assert (sample["segmentation"] == -1).sum() == int((label == 255).sum()) > 0


# ----------------------------------------------------------------------------------------------
# AdaShare's cityscape.json
# ----------------------------------------------------------------------------------------------
def write_index(root: Path, train: list[int], test: list[int], **extra) -> None:
    def entry(split, i):
        return [f"{split}/image/{i}.npy", f"{split}/depth/{i}.npy", f"{split}/label_2/{i}.npy",
                f"{split}/label_7/{i}.npy", f"{split}/label_19/{i}.npy"]
    index = {"train": [entry("train", i) for i in train], "test": [entry("val", i) for i in test],
             "train1": [entry("train", i) for i in train[:2]], **extra}
    (root / "cityscape.json").write_text(json.dumps(index))


def test_json_index_is_used_when_present(tree):
    write_index(tree, train=[9, 3, 5, 1, 0], test=[2, 0])
    bundle = build(tree, val_fraction=0.0, select_split="test")
    assert bundle.info["index"] == "cityscape.json"
    assert len(bundle.train) == 5 and len(bundle.eval_splits["test"]) == 2
    assert torch.equal(bundle.train[0]["depth"][0], torch.from_numpy(on_disk(tree, "train/depth/9.npy")[..., 0]))
    assert torch.equal(bundle.eval_splits["test"][0]["segmentation"],
                       torch.from_numpy(on_disk(tree, "val/label_7/2.npy")).long())
    folders = build(tree, val_fraction=0.0, select_split="test", index="folders")
    assert len(folders.train) == N_TRAIN and folders.info["index"] == "folders"
    direct = Cityscapes(tree, "test", num_classes=19)
    assert len(direct) == 2


@pytest.mark.parametrize("case, fragments", [
    ("not json", ["unreadable index", "cityscape.json", "JSONDecodeError"]),
    ("no test", ["index has no test list", "found keys ['train']", "['test', 'val']"]),
    ("bad entry", ["unexpected entries in index list 'train'", "[image, depth, label_2, label_7, label_19]"]),
    ("missing file", ["file listed in cityscape.json ['train'] is missing", "train/image/42.npy",
                      "found 1 of 2 listed image files missing"]),
])
def test_json_index_errors(tree, case, fragments):
    path = tree / "cityscape.json"
    if case == "not json":
        path.write_text("{train: ")
    elif case == "no test":
        path.write_text(json.dumps({"train": [["a", "b", "c", "d", "e"]]}))
    elif case == "bad entry":
        path.write_text(json.dumps({"train": [["train/image/0.npy"]], "test": []}))
    else:
        write_index(tree, train=[0, 42], test=[0])
    with pytest.raises(DatasetError) as info:
        build(tree)
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))


def test_json_index_required_when_asked(tree):
    with pytest.raises(DatasetError, match="dataset.index=json but the index is missing"):
        build(tree, index="json")


def test_cli_end_to_end(pristine, tmp_path):
    summary = train_cli(tmp_path, "dataset=cityscapes", f"dataset.root={pristine}", "dataset.num_classes=19")
    assert summary["dataset"] == "Cityscapes" and summary["tasks"] == ["segmentation", "depth"]
    assert set(summary["final"]) == {"train", "val", "test"}
