"""Raw Cityscapes -> mtan layout on a tiny raw tree written here: labels, disparity, resize, CLI."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from okd.data.cityscapes import build
from okd.data.prepare import disparity_values, label_tables, main, nearest_indices, prepare_cityscapes
from okd.data.validate import DatasetError

RAW_H, RAW_W = 16, 32
OUT = (8, 16)
CITIES = {"train": {"bonn": 2, "aachen": 1}, "val": {"lindau": 2}}
# Hand table from the Cityscapes label definition: label id -> (train id, category index) or -1.
HAND = {0: (-1, -1), 1: (-1, -1), 6: (-1, -1), 7: (0, 0), 8: (1, 0), 9: (-1, -1), 10: (-1, -1),
        11: (2, 1), 12: (3, 1), 13: (4, 1), 14: (-1, -1), 17: (5, 2), 18: (-1, -1), 19: (6, 2),
        20: (7, 2), 21: (8, 3), 22: (9, 3), 23: (10, 4), 24: (11, 5), 25: (12, 5), 26: (13, 6),
        27: (14, 6), 28: (15, 6), 29: (-1, -1), 30: (-1, -1), 31: (16, 6), 32: (17, 6), 33: (18, 6)}
# Under --categories all the ignored ids keep their category: parking, rail track -> flat, ...
HAND_ALL = {9: 0, 10: 0, 14: 1, 15: 1, 16: 1, 18: 2, 29: 6, 30: 6, 0: -1, 5: -1}


def write_raw(root: Path, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """leftImg8bit/gtFine/disparity PNGs of the official layout; returns the arrays by key."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, cities in CITIES.items():
        for city, count in cities.items():
            for k in range(count):
                stem = f"{city}_{k:06d}_{19 + k:06d}"
                rgb = rng.integers(0, 256, (RAW_H, RAW_W, 3), dtype=np.uint8)
                ids = rng.choice(np.array(list(HAND)), (RAW_H, RAW_W)).astype(np.uint8)
                codes = rng.integers(0, 32258, (RAW_H, RAW_W)).astype(np.uint16)
                codes[0, :4] = [0, 1, 257, 32257]
                for folder, suffix, array in (("leftImg8bit", "leftImg8bit", rgb), ("gtFine", "gtFine_labelIds", ids),
                                              ("disparity", "disparity", codes)):
                    path = root / folder / split / city / f"{stem}_{suffix}.png"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(array).save(path)
                arrays[f"{split}/{city}/{stem}"] = {"rgb": rgb, "ids": ids, "codes": codes}
    return arrays


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    base = tmp_path_factory.mktemp("prepare")
    arrays = write_raw(base / "raw")
    out = prepare_cityscapes(base / "raw", base / "out", OUT, workers=1, log=lambda _: None)
    return arrays, out


def test_layout_counts_and_order(converted):
    arrays, out = converted
    sources = json.loads((out / "sources.json").read_text())
    # sorted <city>/<stem>: aachen before bonn
    assert sources["train"] == ["aachen/aachen_000000_000019", "bonn/bonn_000000_000019", "bonn/bonn_000001_000020"]
    assert sources["val"] == ["lindau/lindau_000000_000019", "lindau/lindau_000001_000020"]
    assert sources["size"] == list(OUT) and sources["disparity"] == "mtan"
    for split, n in (("train", 3), ("val", 2)):
        for folder in ("image", "depth", "label_7", "label_19"):
            assert sorted(p.name for p in (out / split / folder).iterdir()) == [f"{i}.npy" for i in range(n)]
    image = np.load(out / "train" / "image" / "0.npy")
    assert image.shape == (*OUT, 3) and image.dtype == np.float32
    assert np.load(out / "train" / "depth" / "0.npy").shape == (*OUT, 1)
    assert np.load(out / "train" / "label_7" / "0.npy").shape == OUT


def test_labels_match_the_hand_table(converted):
    arrays, out = converted
    raw = arrays["train/bonn/bonn_000001_000020"]
    rows, cols = np.array([1, 3, 5, 7, 9, 11, 13, 15]), np.arange(1, 32, 2)  # centre pixels of 2x2 blocks
    assert list(nearest_indices(RAW_H, OUT[0])) == list(rows)
    ids = raw["ids"][rows[:, None], cols[None, :]]
    label_19 = np.load(out / "train" / "label_19" / "2.npy")
    label_7 = np.load(out / "train" / "label_7" / "2.npy")
    assert np.array_equal(label_19, np.vectorize(lambda i: HAND[i][0])(ids).astype(np.float32))
    assert np.array_equal(label_7, np.vectorize(lambda i: HAND[i][1])(ids).astype(np.float32))
    assert label_19.min() == -1 and label_19.max() <= 18 and label_7.max() <= 6


def test_category_variants():
    train, category = label_tables("eval")
    _, everything = label_tables("all")
    for label_id, (train_id, cat) in HAND.items():
        assert train[label_id] == train_id and category[label_id] == cat, label_id
    for label_id, cat in HAND_ALL.items():
        assert everything[label_id] == cat, label_id
    assert (train[34:] == -1).all() and (category[34:] == -1).all()


def test_disparity_formula(converted):
    arrays, out = converted
    raw = arrays["val/lindau/lindau_000000_000019"]["codes"]
    depth = np.load(out / "val" / "depth" / "0.npy")[..., 0]
    codes = raw[1::2, 1::2].astype(np.float64)
    expected = np.where(codes > 0, (codes - 1) / 65536, 0)
    assert np.allclose(depth, expected, rtol=0, atol=1e-7)
    # the codes written at row 0 are not sampled by the 2x resize: check the formula on them directly
    assert np.allclose(disparity_values(np.array([0, 1, 257, 32257])), [0, 0, 1 / 256, 0.4921875])
    # official disparity in pixels, rescaled to the output width
    assert np.allclose(disparity_values(np.array([0, 257, 513]), "pixels", 0.5), [0, 0.5, 1.0])
    with pytest.raises(ValueError, match="disparity mode"):
        disparity_values(np.array([1]), "metres")


def test_image_resize_matches_pil_bilinear(converted):
    arrays, out = converted
    rgb = arrays["train/aachen/aachen_000000_000019"]["rgb"]
    expected = np.asarray(Image.fromarray(rgb).resize((OUT[1], OUT[0]), Image.BILINEAR), dtype=np.float32) / 255
    image = np.load(out / "train" / "image" / "0.npy")
    assert np.abs(image - expected).max() <= 1.5 / 255  # PIL rounds to 8 bits
    assert image.min() >= 0 and image.max() <= 1


def test_output_loads_as_cityscapes(converted):
    _, out = converted
    bundle = build(out, num_classes=19, val_fraction=0.0, select_split="test")
    assert len(bundle.train) == 3 and len(bundle.eval_splits["test"]) == 2
    assert bundle.train[0]["segmentation"].shape == OUT


def test_cli_parallel_and_errors(tmp_path, capsys):
    write_raw(tmp_path / "raw", seed=1)
    out = main(["cityscapes", "--raw", str(tmp_path / "raw"), "--out", str(tmp_path / "out"), "--size", "8x16",
                "--workers", "2", "--disparity", "pixels"])
    assert "wrote Cityscapes (train 3, val 2 samples, 8x16" in capsys.readouterr().out
    depth = np.load(out / "train" / "depth" / "1.npy")
    assert depth.max() > 1  # pixels at the output width, not the mtan scale
    with pytest.raises(SystemExit):
        main(["cityscapes", "--raw", str(tmp_path / "raw"), "--out", str(tmp_path / "out"), "--size", "8x16"])
    assert "output exists" in capsys.readouterr().err
    missing = tmp_path / "raw" / "disparity" / "val" / "lindau" / "lindau_000001_000020_disparity.png"
    missing.unlink()
    with pytest.raises(DatasetError, match=f"missing disparity file: {missing}"):
        prepare_cityscapes(tmp_path / "raw", tmp_path / "out2", OUT)
    with pytest.raises(DatasetError, match="missing folder 'leftImg8bit'.*no such directory"):
        prepare_cityscapes(tmp_path / "nothing", tmp_path / "out3", OUT)


def test_archive_folders_are_found(tmp_path):
    write_raw(tmp_path / "flat")
    for name in ("leftImg8bit", "gtFine", "disparity"):
        target = tmp_path / "raw" / f"{name}_trainvaltest"
        target.mkdir(parents=True)
        (tmp_path / "flat" / name).rename(target / name)
    out = prepare_cityscapes(tmp_path / "raw", tmp_path / "out", OUT, splits=["val"], log=lambda _: None)
    assert len(list((out / "val" / "image").iterdir())) == 2
