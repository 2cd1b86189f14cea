"""NYUv2 loader on tiny trees in the mtan layout: contents, splits, every start-up error, the CLI."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from okd.data.npy import carve
from okd.data.nyuv2 import NYUv2, build
from okd.data.validate import CorruptFileError, DatasetError
from tests.helpers import DATA_DOCS as DOCS, dataset_tree_fixtures, run_cli, train_cli

N_TRAIN, N_TEST, H, W = 10, 3, 32, 64


pristine, tree = dataset_tree_fixtures("nyuv2", N_TRAIN, N_TEST, H, W)  # the tree, and a copy a test may damage


def on_disk(root: Path, folder: str, kind: str, i: int) -> np.ndarray:
    return np.load(root / folder / kind / f"{i}.npy")


# ----------------------------------------------------------------------------------------------
def test_samples_match_the_files(pristine):
    bundle = build(pristine)
    assert bundle.name == "NYUv2" and bundle.num_classes == 13 and bundle.tasks == ["segmentation", "depth", "normal"]
    assert (bundle.select_split, bundle.report_split) == ("val", "test")
    assert {k: len(v) for k, v in bundle.eval_splits.items()} == {"val": 2, "test": N_TEST}
    assert len(bundle.train) == N_TRAIN - 2
    test = bundle.eval_splits["test"]  # the val/ folder
    sample = test[1]
    assert sample["image"].shape == (3, H, W) and sample["image"].dtype == torch.float32
    assert sample["segmentation"].shape == (H, W) and sample["segmentation"].dtype == torch.int64
    assert sample["depth"].shape == (1, H, W) and sample["normal"].shape == (3, H, W)
    assert torch.equal(sample["image"], torch.from_numpy(on_disk(pristine, "val", "image", 1)).permute(2, 0, 1))
    label = on_disk(pristine, "val", "label", 1)
    assert torch.equal(sample["segmentation"], torch.from_numpy(label).long())
    assert (sample["segmentation"] == -1).any()  # the invalid blobs keep the ignore value
    assert torch.equal(sample["depth"][0], torch.from_numpy(on_disk(pristine, "val", "depth", 1)[..., 0]))
    assert torch.equal(sample["normal"], torch.from_numpy(on_disk(pristine, "val", "normal", 1)).permute(2, 0, 1))
    train_idx, val_idx = carve(N_TRAIN, 0.2, 688)
    first_val = bundle.eval_splits["val"][0]
    assert torch.equal(first_val["depth"][0], torch.from_numpy(on_disk(pristine, "train", "depth", val_idx[0])[..., 0]))
    assert bundle.info["class_names"][0] == "bed" and bundle.info["height"] == H


def test_carve_is_deterministic_disjoint_and_80_20():
    train, val = carve(795, 0.2, 688)
    assert (len(train), len(val)) == (636, 159)
    assert not set(train) & set(val) and sorted(train + val) == list(range(795))
    assert carve(795, 0.2, 688) == (train, val)
    assert carve(795, 0.2, 689)[1] != val
    assert carve(10, 0.0, 688) == (list(range(10)), [])
    with pytest.raises(ValueError, match="val_fraction"):
        carve(10, 1.0, 688)


def test_bundle_split_roles(pristine):
    assert build(pristine, val_fraction=0.0).select_split is None  # no default: selection.split must say
    bundle = build(pristine, val_fraction=0.0, select_split="test")
    assert list(bundle.eval_splits) == ["test"] and len(bundle.train) == N_TRAIN
    with pytest.raises(DatasetError, match="select_split='val' is not one of its evaluation splits"):
        build(pristine, val_fraction=0.0, select_split="val")


def test_task_subset_reads_only_its_folders(tree):
    shutil.rmtree(tree / "train" / "normal")
    shutil.rmtree(tree / "val" / "normal")
    bundle = build(tree, tasks=["depth"])
    assert set(bundle.train[0]) == {"image", "depth"} and bundle.tasks == ["depth"]
    with pytest.raises(ValueError, match="unknown task"):
        build(tree, tasks=["depth", "edges"])


def test_augmentation_on_train_only(pristine):
    plain = build(pristine)
    aug = build(pristine, augment=True, scales=[1.5], flip=False)
    torch.manual_seed(0)
    a, b = aug.train[0], plain.train[0]
    assert not torch.equal(a["image"], b["image"])
    assert a["image"].shape == b["image"].shape
    for split in ("val", "test"):
        assert torch.equal(aug.eval_splits[split][0]["image"], plain.eval_splits[split][0]["image"])


def test_direct_dataset_class(pristine):
    ds = NYUv2(pristine, "val", tasks=["segmentation"])
    assert len(ds) == N_TEST and set(ds[0]) == {"image", "segmentation"}


# ----------------------------------------------------------------------------------------------
# Start-up errors: one message naming path, found and expected
# ----------------------------------------------------------------------------------------------
def _save(path: Path, array: np.ndarray) -> None:
    np.save(path, array)


def damage(root: Path, case: str) -> tuple[Path, list[str]]:
    """Apply one defect; returns (root to pass, fragments the message must contain)."""
    train = root / "train"
    if case == "missing folder":
        shutil.rmtree(train / "normal")
        return root, ["missing modality folder 'normal'", str(train / "normal"), "found [depth/, image/, label/]",
                      "expected folders"]
    if case == "missing split":
        shutil.rmtree(root / "val")
        return root, ["missing split folder 'val'", str(root / "val")]
    if case == "count mismatch":
        (root / "val" / "depth" / "2.npy").unlink()
        return root, ["file count differs", str(root / "val" / "depth"), "found 2 files",
                      "same count in every folder (3)"]
    if case == "non-consecutive":
        for kind in ("image", "label", "depth", "normal"):
            (train / kind / "4.npy").rename(train / kind / "12.npy")
        return root, ["non-consecutive indices", str(train / "image"), "missing 4.npy, 10.npy, 11.npy",
                      "consecutive indices 0..9"]
    if case == "stray name":
        shutil.copy(train / "image" / "0.npy", train / "image" / "0001.npy")
        return root, ["unexpected file name", "'0001.npy'", "no leading zeros"]
    if case == "wrong shape":
        _save(train / "label" / "0.npy", np.zeros((H, W - 1), np.float32))
        return root, ["wrong label array shape", str(train / "label" / "0.npy"), f"shape ({H}, {W - 1})",
                      f"({H}, {W})"]
    if case == "wrong channels":
        _save(train / "normal" / "0.npy", np.zeros((H, W, 2), np.float32))
        return root, ["wrong normal array shape", f"shape ({H}, {W}, 2)", f"({H}, {W}, 3)"]
    if case == "test size differs":
        for kind, c in (("image", 3), ("label", None), ("depth", 1), ("normal", 3)):
            shape = (H, W // 2) if c is None else (H, W // 2, c)
            _save(root / "val" / kind / "0.npy", np.zeros(shape, np.float32))
        return root, ["wrong image array shape", str(root / "val" / "image" / "0.npy"), f"({H}, {W}, 3) like the other"]
    if case == "bad label range":
        label = on_disk(root, "train", "label", 0)
        label[0, :3] = [13, 40, 12]
        _save(train / "label" / "0.npy", label)
        return root, ["label values out of range", str(train / "label" / "0.npy"), "found values 13, 40",
                      "class indices 0..12 and -1 (ignore)"]
    if case == "fractional label":
        label = on_disk(root, "train", "label", 0)
        label[0, 0] = 2.5
        _save(train / "label" / "0.npy", label)
        return root, ["non-integer label values", "2.5"]
    if case == "image range":
        _save(train / "image" / "0.npy", on_disk(root, "train", "image", 0) * 255)
        return root, ["image values out of range", str(train / "image" / "0.npy"), "RGB in [0, 1]"]
    if case == "image dtype":
        _save(train / "image" / "0.npy", (on_disk(root, "train", "image", 0) * 255).astype(np.uint8))
        return root, ["wrong image dtype", "found uint8", "floating-point"]
    if case == "negative depth":
        depth = on_disk(root, "train", "depth", 0)
        depth[0, 0, 0] = -1
        _save(train / "depth" / "0.npy", depth)
        return root, ["negative depth values", "min -1", "0 marking invalid"]
    if case == "nan normal":
        normal = on_disk(root, "train", "normal", 0)
        normal[1, 1, 0] = np.nan
        _save(train / "normal" / "0.npy", normal)
        return root, ["non-finite normal values", "found 1 NaN/inf"]
    if case == "truncated":
        path = train / "depth" / "5.npy"
        size = path.stat().st_size
        with open(path, "r+b") as f:
            f.truncate(size - 100)
        return root, ["truncated or padded .npy file", str(path), f"found {size - 100} bytes", f"expected {size} bytes"]
    if case == "empty file":
        (train / "normal" / "7.npy").write_bytes(b"")
        return root, ["cannot read the .npy header", str(train / "normal" / "7.npy")]
    if case == "nested root":
        nested = root.parent / "download"
        nested.mkdir()
        root.rename(nested / "nyuv2")
        return nested, ["missing split folder 'train'", f"did you mean dataset.root={nested / 'nyuv2'}?"]
    raise AssertionError(case)


CASES = ["missing folder", "missing split", "count mismatch", "non-consecutive", "stray name", "wrong shape",
         "wrong channels", "test size differs", "bad label range", "fractional label", "image range",
         "image dtype", "negative depth", "nan normal", "truncated", "empty file", "nested root"]


@pytest.mark.parametrize("case", CASES)
def test_startup_errors_name_path_found_expected(tree, case):
    root, fragments = damage(tree, case)
    with pytest.raises(DatasetError) as info:
        build(root)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    assert "\n" not in message and DOCS in message


def test_unset_and_missing_root_point_to_the_docs(tmp_path):
    with pytest.raises(DatasetError, match=r"dataset.root is not set: found null") as info:
        build(None)
    assert "dataset.root=/data/nyuv2" in str(info.value) and DOCS in str(info.value)
    with pytest.raises(DatasetError, match="dataset.root does not exist") as info:
        build(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(info.value) and DOCS in str(info.value)


# ----------------------------------------------------------------------------------------------
# Errors met after start-up name the file
# ----------------------------------------------------------------------------------------------
def test_corrupt_file_met_later_names_it(tree):
    path = tree / "train" / "normal" / "3.npy"
    size = path.stat().st_size
    path.write_bytes(b"\x00" * size)  # same size: the start-up size check passes
    bundle = build(tree, val_fraction=0.0, select_split="test")
    with pytest.raises(CorruptFileError, match=f"cannot read {path}"):
        bundle.train[3]
    loader = DataLoader(bundle.train, batch_size=5, num_workers=1)
    assert str(path) in first_error(loader)  # raised in a worker, re-raised here with the file name


def first_error(loader: DataLoader) -> str:
    """The message of the CorruptFileError a pass over ``loader`` raises ('' if none).

    The worker is shut down explicitly: the re-raised error keeps the iterator in a reference
    cycle, and the garbage collector's shutdown of it waits out a 5 s timeout.
    """
    iterator = iter(loader)
    try:
        for _ in iterator:
            pass
    except CorruptFileError as err:
        return str(err)
    finally:
        iterator._shutdown_workers()  # noqa: SLF001
    return ""


def test_odd_shape_met_later_names_it(tree):
    path = tree / "train" / "label" / "6.npy"
    np.save(path, np.zeros((W, H), np.float32))  # same byte count, transposed
    bundle = build(tree, val_fraction=0.0, select_split="test")
    with pytest.raises(DatasetError, match=rf"wrong label array shape: {path}: found shape \({W}, {H}\)"):
        bundle.train[6]


# ----------------------------------------------------------------------------------------------
def test_cli_end_to_end(pristine, tmp_path):
    summary = train_cli(tmp_path, "dataset=nyuv2", f"dataset.root={pristine}", "dataset.augment=true")
    assert summary["dataset"] == "NYUv2" and summary["select_split"] == "val"
    assert set(summary["final"]) == {"train", "val", "test"}
    assert summary["best"]["split"] == "val"


def test_cli_without_root_fails_before_training(tmp_path):
    proc = run_cli(tmp_path, "dataset=nyuv2", "logger=none")
    assert proc.returncode == 2
    assert "dataset.root is not set" in proc.stderr and DOCS in proc.stderr
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
