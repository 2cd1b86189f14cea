"""Tests of the synthetic scene dataset (okd/data/synthetic.py): determinism, conventions,
geometric consistency of the three targets, class mapping, file layouts and the CLI."""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from okd.data import synthetic as S
from okd.data.base import DataBundle

H, W = 24, 32
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def scenes13() -> list[dict[str, np.ndarray]]:
    """12 scenes with all 13 fine classes, for the geometry checks."""
    return [S.render_scene(S.sample_rng(0, "geo", i), H, W, 13) for i in range(12)]


def back_project(depth: np.ndarray) -> np.ndarray:
    """HxWx3 camera-frame points from HxWx1 z-depth, with the documented NYUv2-like intrinsics
    (written out here rather than taken from the module, so a change there is caught)."""
    h, w = depth.shape[:2]
    f = 518.8579 / 640 * w
    v, u = np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij")
    rays = np.stack([(u - w / 2) / f, (v - h / 2) / f, np.ones_like(u)], axis=-1)
    return rays * depth.astype(np.float64)


def angle_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


# ------------------------------------------------------------------------------------ primitives
def test_primitives_hand_computed_hits_and_normals():
    o = np.zeros(3)
    d = S._Rays(np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]]))  # forward; up (hits only the plane)
    sphere = (np.array([0.0, 0.0, 5.0]), np.full(3, 1.0))
    np.testing.assert_allclose(S._hit_ellipsoid(sphere, o, d), [4.0, np.inf])
    np.testing.assert_allclose(S._normal_ellipsoid(sphere, np.array([[0.0, 0, 4]])), [[0, 0, -1]])
    ell = (np.array([0.0, 0.0, 5.0]), np.array([1.0, 1.0, 2.0]))  # semi-axis 2 along z
    np.testing.assert_allclose(S._hit_ellipsoid(ell, o, d)[0], 3.0)
    box = (np.array([-1.0, -1.0, 3.0]), np.array([1.0, 1.0, 4.0]))
    np.testing.assert_allclose(S._hit_box(box, o, d), [3.0, np.inf])
    np.testing.assert_allclose(S._normal_box(box, np.array([[0.2, -0.3, 3.0]])), [[0, 0, -1]])
    cyl = (0.0, 5.0, 1.0, -1.0, 1.0)  # axis x=0, z=5, radius 1, y in [-1, 1]
    np.testing.assert_allclose(S._hit_cylinder(cyl, o, d), [4.0, np.inf])
    np.testing.assert_allclose(S._normal_cylinder(cyl, np.array([[0.0, 0.5, 4.0]])), [[0, 0, -1]])
    # From above the top cap (y = 1) straight down onto it: t = 3 - 1.
    top = S._hit_cylinder(cyl, np.array([0.0, 3.0, 5.0]), S._Rays(np.array([[0.0, -1.0, 0.0]])))
    np.testing.assert_allclose(top, [2.0])
    np.testing.assert_allclose(S._normal_cylinder(cyl, np.array([[0.3, 1.0, 5.2]])), [[0, 1, 0]])
    ceiling = (1, 2.5, -1.0)  # plane y = 2.5 seen from below: inward normal -y
    np.testing.assert_allclose(S._hit_plane(ceiling, o, d), [np.inf, 2.5])
    np.testing.assert_allclose(S._normal_plane(ceiling, np.array([[1.0, 2.5, 3.0]])), [[0, -1, 0]])


def test_camera_rotation_is_proper_and_looks_forward():
    rot = S._camera_rotation(math.radians(10), math.radians(-8), math.radians(2))
    np.testing.assert_allclose(rot.T @ rot, np.eye(3), atol=1e-12)
    assert np.linalg.det(rot) == pytest.approx(1.0)
    # Forward column = (sin yaw cos pitch, sin pitch, cos yaw cos pitch); no roll: right is level.
    yaw, pitch = math.radians(10), math.radians(-8)
    np.testing.assert_allclose(rot[:, 2], [math.sin(yaw) * math.cos(pitch), math.sin(pitch),
                                           math.cos(yaw) * math.cos(pitch)])
    level = S._camera_rotation(0.0, 0.0, 0.0)
    np.testing.assert_allclose(level, [[-1, 0, 0], [0, -1, 0], [0, 0, 1]], atol=1e-12)


# ---------------------------------------------------------------------------------- determinism
def test_deterministic_by_seed_split_and_index():
    a = S.SyntheticScenes(3, H, W, seed=4, split="train")
    b = S.SyntheticScenes(5, H, W, seed=4, split="train")  # size must not change sample i
    for i in range(3):
        sa, sb = a[i], b[i]
        assert sa.keys() == sb.keys()
        for k in sa:
            assert torch.equal(sa[k], sb[k]), k
        ref = S.render_scene(S.sample_rng(4, "train", i), H, W, 7)
        assert torch.equal(sa["image"], torch.from_numpy(ref["image"]).permute(2, 0, 1))
        assert torch.equal(sa["segmentation"], torch.from_numpy(ref["label"]).long())


def test_seeds_and_splits_differ():
    base = S.SyntheticScenes(2, H, W, seed=0, split="train")
    other_seed = S.SyntheticScenes(2, H, W, seed=1, split="train")
    other_split = S.SyntheticScenes(2, H, W, seed=0, split="val")
    for i in range(2):
        assert not torch.equal(base[i]["image"], other_seed[i]["image"])
        assert not torch.equal(base[i]["image"], other_split[i]["image"])
    assert not torch.equal(base[0]["depth"], base[1]["depth"])


# ----------------------------------------------------------------------------- sample format
def test_dataset_sample_shapes_dtypes_ranges():
    ds = S.SyntheticScenes(4, H, W, num_classes=9)
    assert len(ds) == 4
    for i in range(4):
        s = ds[i]
        assert set(s) == {"image", "segmentation", "depth", "normal"}
        assert s["image"].shape == (3, H, W) and s["image"].dtype == torch.float32
        assert s["segmentation"].shape == (H, W) and s["segmentation"].dtype == torch.int64
        assert s["depth"].shape == (1, H, W) and s["depth"].dtype == torch.float32
        assert s["normal"].shape == (3, H, W) and s["normal"].dtype == torch.float32
        assert 0.0 <= s["image"].min() and s["image"].max() <= 1.0
        assert s["image"].std() > 0.05  # not a blank image
        assert s["segmentation"].min() >= -1 and s["segmentation"].max() < 9
        assert s["depth"].min() >= 0.0 and s["depth"].max() < 12.0  # inside a room <= 7x3.2x8 m
    with pytest.raises(IndexError):
        ds[4]
    ds[0]["depth"].zero_()  # returned tensors are copies: the cached split is unchanged
    assert ds[0]["depth"].max() > 0


def test_render_scene_on_disk_conventions(scenes13):
    s = scenes13[0]
    assert set(s) == {"image", "label", "depth", "normal"}
    assert s["image"].shape == (H, W, 3) and s["label"].shape == (H, W)
    assert s["depth"].shape == (H, W, 1) and s["normal"].shape == (H, W, 3)
    assert all(v.dtype == np.float32 for v in s.values())
    assert np.array_equal(s["label"], np.round(s["label"]))  # class ids stored as floats


def test_invalid_pixels_consistent_present_and_valid_targets_sane(scenes13):
    for s in scenes13:
        ignore = s["label"] == -1
        assert np.array_equal(ignore, s["depth"][..., 0] == 0)
        assert np.array_equal(ignore, np.all(s["normal"] == 0, axis=-1))
        assert 0.0 < ignore.mean() < 0.15  # a few percent, never none
        valid = ~ignore
        assert (s["depth"][..., 0][valid] > 0.5).all()
        norms = np.linalg.norm(s["normal"][valid], axis=-1)
        np.testing.assert_allclose(norms, 1.0, atol=1e-5)


def test_normals_face_the_camera(scenes13):
    for s in scenes13:
        valid = s["depth"][..., 0] > 0
        rays = back_project(np.ones_like(s["depth"]))  # viewing ray of each pixel
        dots = (s["normal"] * rays).sum(-1)[valid]
        assert (dots < 0).all()


# --------------------------------------------------------------------- geometric consistency
def plane_offsets(s: dict[str, np.ndarray], mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Normals of the masked pixels and -n.P: for one plane facing the camera, the constant
    distance from the camera centre to the plane."""
    points = back_project(s["depth"])[mask]
    normals = s["normal"][mask].astype(np.float64)
    return normals, -(normals * points).sum(-1)


def test_floor_normal_is_up_and_floor_points_lie_on_its_plane(scenes13):
    checked = 0
    for s in scenes13:
        floor = s["label"] == 0  # with 13 classes, 0 is the floor plane only (the rug is 8)
        if floor.sum() < 5:
            continue
        normals, dist = plane_offsets(s, floor)
        # One plane: one normal, about (0, -1, 0) (camera y points down) up to pitch <= 12 deg
        # and roll <= 3 deg.
        np.testing.assert_allclose(normals, normals[:1].repeat(len(normals), 0), atol=1e-6)
        assert angle_deg(normals[0], np.array([0.0, -1.0, 0.0])) < 12.5
        # Back-projected depth with the rendered normal: the floor plane n.P = -camera height.
        assert dist.max() - dist.min() < 1e-4
        assert 1.2 - 1e-4 < dist.mean() < 1.6 + 1e-4  # the camera stands 1.2-1.6 m high
        checked += 1
    assert checked >= 10


def test_ceiling_and_walls_are_planes_consistent_with_depth(scenes13):
    ceilings = walls = 0
    for s in scenes13:
        ceiling = s["label"] == 2
        if ceiling.sum() >= 5:
            normals, dist = plane_offsets(s, ceiling)
            assert angle_deg(normals[0], np.array([0.0, 1.0, 0.0])) < 12.5
            assert dist.max() - dist.min() < 1e-4
            assert 2.5 - 1.6 - 1e-4 < dist.mean() < 3.2 - 1.2 + 1e-4  # room height - camera height
            ceilings += 1
        wall_normals = s["normal"][s["label"] == 1]
        for n in np.unique(wall_normals, axis=0):  # each wall plane has one exact normal
            mask = (s["label"] == 1) & np.all(s["normal"] == n, axis=-1)
            if mask.sum() >= 5:
                normals, dist = plane_offsets(s, mask)
                assert abs(n[1]) < 0.25  # vertical plane: normal about horizontal
                assert dist.min() > 0 and dist.max() - dist.min() < 1e-4
                walls += 1
    assert ceilings >= 3 and walls >= 12


# ------------------------------------------------------------------------------------ classes
def test_class_counts_and_ranges():
    labels = set()
    for i in range(8):
        s = S.SyntheticScenes(1, H, W, num_classes=7, seed=i)[0]["segmentation"]
        labels |= set(s.unique().tolist())
    labels.discard(-1)
    assert len(labels) >= 6 and max(labels) < 7


def test_every_one_of_13_classes_occurs(scenes13):
    seen = set(np.unique(np.concatenate([s["label"].ravel() for s in scenes13])).tolist())
    assert seen == set(range(-1, 13))


# Hand-written from the module docstring's table, so a changed mapping is caught.
PARENT = {6: 1, 7: 1, 8: 0, 9: 4, 10: 4, 11: 5, 12: 3}
TO_CITYSCAPES_19 = {"floor": "road", "wall": "building", "ceiling": "sky", "sphere": "person",
                    "box": "car", "cylinder": "traffic light", "wall_panel": "fence",
                    "door": "wall", "rug": "sidewalk", "cabinet": "truck",
                    "table": "traffic sign", "pillar": "pole", "ellipsoid": "vegetation"}
CATEGORY = {"road": "flat", "sidewalk": "flat", "building": "construction", "wall": "construction",
            "fence": "construction", "pole": "object", "traffic light": "object",
            "traffic sign": "object", "vegetation": "nature", "terrain": "nature", "sky": "sky",
            "person": "human", "rider": "human", "car": "vehicle", "truck": "vehicle",
            "bus": "vehicle", "train": "vehicle", "motorcycle": "vehicle", "bicycle": "vehicle"}


def test_class_tables_match_the_documented_mapping():
    for k in range(6, 14):
        expected = [f if f < k else PARENT[f] for f in range(13)]
        assert S.class_table(k).tolist() == expected
        assert S.class_names(k) == list(S.FINE_CLASSES[:k])
    for fine, name in enumerate(S.FINE_CLASSES):
        city19 = S.CITYSCAPES_19_NAMES[S.FINE_TO_CITYSCAPES_19[fine]]
        assert city19 == TO_CITYSCAPES_19[name]
        assert S.CITYSCAPES_7_NAMES[S.FINE_TO_CITYSCAPES_7[fine]] == CATEGORY[city19]
    for train_id, name in enumerate(S.CITYSCAPES_19_NAMES):
        assert S.CITYSCAPES_7_NAMES[S.CITYSCAPES_19_TO_7[train_id]] == CATEGORY[name]


@pytest.mark.parametrize("k", [6, 7, 10])
def test_fewer_classes_map_fine_ids_to_parents(scenes13, k):
    # The same random streams as the scenes13 fixture, which between them hold all 13 classes.
    for i, fine in enumerate(scenes13):
        coarse = S.render_scene(S.sample_rng(0, "geo", i), H, W, k)
        np.testing.assert_array_equal(fine["image"], coarse["image"])  # same scene for any K
        np.testing.assert_array_equal(fine["depth"], coarse["depth"])
        expected = [c if c < k else PARENT[int(c)] for c in fine["label"].ravel()]
        np.testing.assert_array_equal(coarse["label"].ravel(), expected)
        assert coarse["label"].max() < k


# ------------------------------------------------------------------------------ tasks / build
@pytest.mark.parametrize("tasks", [("depth",), ("normal", "segmentation"), ("segmentation",)])
def test_task_subsets(tasks):
    ds = S.SyntheticScenes(2, H, W, tasks=tasks)
    assert set(ds[1]) == {"image", *tasks}
    assert set(ds.data) == {"image", *tasks}  # unselected targets are not kept in memory


def test_build_bundle_and_disjoint_splits():
    bundle = S.build(tasks=("segmentation", "depth"), num_classes=8, height=H, width=W,
                     train_size=6, val_size=3, test_size=2, seed=1)
    assert isinstance(bundle, DataBundle) and bundle.name == "synthetic"
    assert bundle.tasks == ["segmentation", "depth"] and bundle.num_classes == 8
    assert set(bundle.eval_splits) == {"val", "test"}
    assert (len(bundle.train), len(bundle.eval_splits["val"]), len(bundle.eval_splits["test"])) \
        == (6, 3, 2)
    assert bundle.select_split == "val" and bundle.report_split == "test"
    images = [ds[i]["image"] for ds in (bundle.train, *bundle.eval_splits.values())
              for i in range(len(ds))]
    for i in range(len(images)):
        for j in range(i):
            assert not torch.equal(images[i], images[j])


@pytest.mark.parametrize("kwargs, name", [
    (dict(num_samples=0), "num_samples"), (dict(height=7), "height"), (dict(width=4), "width"),
    (dict(num_classes=5), "num_classes"), (dict(num_classes=14), "num_classes"),
    (dict(num_classes=7.0), "num_classes"), (dict(seed=-1), "seed"), (dict(split=""), "split"),
    (dict(tasks=("segmentation", "albedo")), "albedo"), (dict(tasks=()), "empty"),
])
def test_dataset_bad_arguments(kwargs, name):
    args = dict(num_samples=1, height=H, width=W) | kwargs
    with pytest.raises(ValueError, match=name):
        S.SyntheticScenes(**args)


@pytest.mark.parametrize("kwargs, name", [
    (dict(train_size=0), "train_size"), (dict(val_size=-1), "val_size"),
    (dict(test_size=0), "test_size"), (dict(select_split="train"), "select_split"),
    (dict(num_classes=3), "num_classes"),
])
def test_build_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        S.build(**(dict(height=8, width=8, train_size=1, val_size=1, test_size=1) | kwargs))


def test_render_and_layout_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="height"):
        S.render_scene(np.random.default_rng(0), 4, W, 7)
    with pytest.raises(ValueError, match="layout"):
        S.write_layout(tmp_path, "kitti", 1, 1, H, W)
    with pytest.raises(ValueError, match="n_val"):
        S.write_layout(tmp_path, "nyuv2", 1, 0, H, W)
    with pytest.raises(ValueError, match="num_classes"):
        S.write_layout(tmp_path, "cityscapes", 1, 1, H, W, num_classes=13)


# ----------------------------------------------------------------------------------- layouts
def layout_files(root: Path) -> dict[str, list[str]]:
    return {str(p.relative_to(root)): sorted(f.name for f in p.iterdir())
            for p in sorted(root.glob("*/*"))}


def assert_layout(root: Path, folders: tuple[str, ...], n_train: int, n_val: int) -> None:
    """The layout holds 0.npy, 1.npy, ... in every folder of train/ and val/, and nothing else."""
    expected = {f"{split}/{f}": [f"{i}.npy" for i in range(n)]
                for split, n in (("train", n_train), ("val", n_val)) for f in folders}
    assert layout_files(root) == expected


def test_write_layout_nyuv2(tmp_path):
    root = S.write_layout(tmp_path / "nyu", "nyuv2", 3, 2, H, W, seed=7)
    folders = ("image", "label", "depth", "normal")
    assert_layout(root, folders, 3, 2)
    ref = S.SyntheticScenes(3, H, W, num_classes=13, seed=7, split="train")
    for split, n in (("train", 3), ("val", 2)):
        for i in range(n):
            a = {f: np.load(root / split / f / f"{i}.npy") for f in folders}
            assert a["image"].shape == (H, W, 3) and a["label"].shape == (H, W)
            assert a["depth"].shape == (H, W, 1) and a["normal"].shape == (H, W, 3)
            assert all(v.dtype == np.float32 for v in a.values())
            assert 0 <= a["image"].min() and a["image"].max() <= 1
            assert set(np.unique(a["label"])) <= set(range(-1, 13))
            if split == "train":  # the files hold the dataset's samples
                np.testing.assert_array_equal(a["label"], ref[i]["segmentation"].numpy())
                np.testing.assert_array_equal(a["depth"][..., 0], ref[i]["depth"][0].numpy())


def test_write_layout_cityscapes(tmp_path):
    root = S.write_layout(tmp_path / "cs", "cityscapes", 2, 1, H, W, seed=3)
    folders = ("image", "depth", "label_7", "label_19")
    assert_layout(root, folders, 2, 1)
    nyu = S.write_layout(tmp_path / "nyu", "nyuv2", 2, 1, H, W, seed=3)  # same scenes
    for i in range(2):
        a = {f: np.load(root / "train" / f / f"{i}.npy") for f in folders}
        assert a["image"].shape == (H, W, 3) and a["depth"].shape == (H, W, 1)
        assert a["label_7"].shape == (H, W) and a["label_19"].shape == (H, W)
        assert all(v.dtype == np.float32 for v in a.values())
        disp, lab19, lab7 = a["depth"][..., 0], a["label_19"], a["label_7"]
        assert 0 <= disp.min() and disp.max() <= 0.49
        assert np.array_equal(disp == 0, lab19 == -1) and np.array_equal(lab7 == -1, lab19 == -1)
        valid = lab19 >= 0
        # label_7 is the Cityscapes category of the 19-class train id.
        np.testing.assert_array_equal(lab7[valid], S.CITYSCAPES_19_TO_7[lab19[valid].astype(int)])
        assert set(np.unique(lab19[valid]).astype(int)) <= set(S.FINE_TO_CITYSCAPES_19.tolist())
        # Disparity is inverse depth: 0.49 m / depth (clipped at 0.49).
        metres = np.load(nyu / "train" / "depth" / f"{i}.npy")[..., 0]
        np.testing.assert_allclose(disp[valid], np.minimum(0.49 / metres[valid], 0.49),
                                   rtol=1e-6)
        fine = np.load(nyu / "train" / "label" / f"{i}.npy")
        names = [TO_CITYSCAPES_19[S.FINE_CLASSES[int(f)]] for f in fine[valid]]
        np.testing.assert_array_equal(lab19[valid],
                                      [S.CITYSCAPES_19_NAMES.index(n) for n in names])


def test_cli_subprocess_and_default_val_count(tmp_path):
    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "okd.data.synthetic", "--layout", "cityscapes", "--out", str(out),
           "--n", "2", "--size", "8x12", "--seed", "1"]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "wrote cityscapes" in res.stdout and "train 2 + val 1" in res.stdout
    assert sorted(p.name for p in (out / "val" / "label_19").iterdir()) == ["0.npy"]
    assert np.load(out / "train" / "image" / "1.npy").shape == (8, 12, 3)
    # In process: --val defaults to ceil(n / 4); bad sizes exit with a usage error.
    S.main(["--layout", "nyuv2", "--out", str(tmp_path / "n"), "--n", "5", "--size", "8x8"])
    assert sorted(p.name for p in (tmp_path / "n" / "val" / "image").iterdir()) == \
        ["0.npy", "1.npy"]
    with pytest.raises(SystemExit):
        S.main(["--layout", "nyuv2", "--out", str(tmp_path / "bad"), "--size", "8by8"])
    with pytest.raises(SystemExit):
        S.main(["--layout", "nyuv2", "--out", str(tmp_path / "bad"), "--size", "4x8"])
