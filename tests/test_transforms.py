"""Geometric transforms: hand-computed scale-crop and resize, flip consistent with the scene geometry."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from okd.data.synthetic import intrinsics, render_scene, sample_rng
from okd.data.transforms import Augment, hflip, resize, scale_crop


def ramp_sample(height: int = 4, width: int = 6) -> dict[str, torch.Tensor]:
    """Values that vary with the column (and row for the targets), so every index shows."""
    cols = torch.arange(width, dtype=torch.float32)
    rows = torch.arange(height, dtype=torch.float32)[:, None]
    image = torch.stack([cols.expand(height, width), 10 + cols.expand(height, width), 20 + rows.expand(height, width)])
    label = (rows * width + cols).long()
    depth = (1 + rows * width + cols)[None]
    normal = torch.stack([(cols / 10 + 0.1).expand(height, width), -(rows / 10 + 0.1).expand(height, width),
                          torch.ones(height, width)])
    return {"image": image, "segmentation": label, "depth": depth, "normal": normal}


def rendered_sample(seed: int, height: int = 48, width: int = 64) -> dict[str, torch.Tensor]:
    s = render_scene(sample_rng(seed, "train", 0), height, width, 13)
    return {"image": torch.from_numpy(s["image"]).permute(2, 0, 1),
            "segmentation": torch.from_numpy(s["label"]).long(),
            "depth": torch.from_numpy(s["depth"]).permute(2, 0, 1),
            "normal": torch.from_numpy(s["normal"]).permute(2, 0, 1)}


def normal_errors_from_depth(sample) -> np.ndarray:
    """Angle (deg) between each target normal and the normal of the back-projected depth surface.

    Back-projection with the renderer's intrinsics (cx = W/2, so a mirrored image is the image of
    the mirrored scene); only pixels whose 2x2 neighbourhood is valid and on one class count.
    """
    depth = sample["depth"][0].numpy().astype(np.float64)
    normal = sample["normal"].permute(1, 2, 0).numpy().astype(np.float64)
    label = sample["segmentation"].numpy()
    height, width = depth.shape
    fx, fy, cx, cy = intrinsics(height, width)
    v, u = np.meshgrid(np.arange(height) + 0.5, np.arange(width) + 0.5, indexing="ij")
    points = np.stack([(u - cx) / fx, (v - cy) / fy, np.ones_like(u)], -1) * depth[..., None]
    du = points[:-1, 1:] - points[:-1, :-1]
    dv = points[1:, :-1] - points[:-1, :-1]
    n = np.cross(du, dv)
    n /= np.linalg.norm(n, axis=-1, keepdims=True) + 1e-12
    n *= -np.sign((n * points[:-1, :-1]).sum(-1))[..., None]  # face the camera
    lab = label[:-1, :-1]
    ok = ((depth[:-1, :-1] > 0) & (depth[1:, :-1] > 0) & (depth[:-1, 1:] > 0) & (lab >= 0)
          & (lab == label[1:, :-1]) & (lab == label[:-1, 1:]))
    cos = np.clip((n * normal[:-1, :-1]).sum(-1), -1, 1)
    return np.degrees(np.arccos(cos))[ok]


# ----------------------------------------------------------------------------------------------
def test_flip_twice_is_identity_and_negates_normal_x_only():
    sample = ramp_sample()
    once = hflip(sample)
    assert torch.equal(once["image"], sample["image"].flip(-1))
    assert torch.equal(once["segmentation"][0], torch.tensor([5, 4, 3, 2, 1, 0]))
    assert torch.equal(once["normal"][0], -sample["normal"][0].flip(-1))
    assert torch.equal(once["normal"][1:], sample["normal"][1:].flip(-1))
    assert torch.equal(once["depth"], sample["depth"].flip(-1))
    twice = hflip(once)
    for key in sample:
        assert torch.equal(twice[key], sample[key]), key


@pytest.mark.parametrize("seed", [0, 1])
def test_flipped_normals_agree_with_flipped_depth_geometry(seed):
    sample = rendered_sample(seed)
    flipped = hflip(sample)
    wrong = dict(flipped, normal=sample["normal"].flip(-1))  # mirrored without negating x
    before, after, bad = (normal_errors_from_depth(s) for s in (sample, flipped, wrong))
    assert np.median(before) < 1.0  # the estimator itself agrees with the renderer
    assert np.median(after) < 1.0
    assert abs((after < 5).mean() - (before < 5).mean()) < 0.02
    assert np.median(bad) > 10.0  # and it can tell a wrong flip


def test_scale_crop_by_hand():
    sample = ramp_sample()
    out = scale_crop(sample, 2.0, top=1, left=2)  # window rows 1-2, columns 2-4, back to 4x6
    # nearest targets: each window pixel becomes a 2x2 block
    window_labels = torch.tensor([[8, 9, 10], [14, 15, 16]])
    expected = window_labels.repeat_interleave(2, 0).repeat_interleave(2, 1)
    assert torch.equal(out["segmentation"], expected)
    assert torch.allclose(out["depth"][0], (expected + 1).float() / 2.0)  # depth divided by s
    assert torch.allclose(out["normal"][0], (expected % 6).float() / 10 + 0.1)  # directions kept
    # bilinear image (align_corners=False): columns 2, 3, 4 -> 2, 2.25, 2.75, 3.25, 3.75, 4
    assert torch.allclose(out["image"][0, 0], torch.tensor([2, 2.25, 2.75, 3.25, 3.75, 4]))
    # rows 1, 2 of channel 2 (20 + row) -> 21, 21.25, 21.75, 22
    assert torch.allclose(out["image"][2, :, 0], torch.tensor([21, 21.25, 21.75, 22]))
    disparity = scale_crop(sample, 2.0, top=1, left=2, disparity=True)
    assert torch.allclose(disparity["depth"][0], (expected + 1).float() * 2.0)  # inverse depth times s


def test_scale_crop_identity_and_bounds():
    sample = ramp_sample()
    same = scale_crop(sample, 1.0, 0, 0)
    for key in sample:
        assert torch.equal(same[key], sample[key])
    with pytest.raises(ValueError, match="leaves the 4x6 image"):
        scale_crop(sample, 2.0, top=3, left=0)
    with pytest.raises(ValueError, match="scale must be >= 1"):
        scale_crop(sample, 0.5, 0, 0)


def test_resize_down_bilinear_antialiased_and_nearest_by_hand():
    sample = ramp_sample(4, 8)
    out = resize(sample, (2, 4))
    # nearest-exact: output pixel i reads source pixel 2i + 1 (the pixel under its centre)
    assert torch.equal(out["segmentation"], sample["segmentation"][1::2, 1::2])
    assert torch.equal(out["depth"], sample["depth"][:, 1::2, 1::2])
    # antialiased bilinear at factor 2: weights 1/8, 3/8, 3/8, 1/8 (renormalised at the border)
    cols = torch.arange(8.0)
    first = (3 * cols[0] + 3 * cols[1] + cols[2]) / 7
    inner = (cols[1] + 3 * cols[2] + 3 * cols[3] + cols[4]) / 8
    assert torch.allclose(out["image"][0, 0, :2], torch.stack([first, inner]))
    assert resize(sample, (4, 8))["image"] is sample["image"]  # same size: untouched


def test_augment_draws_from_torch_rng_reproducibly():
    sample = ramp_sample(8, 12)
    aug = Augment(scales=(1.0, 1.2, 1.5), flip=True)
    torch.manual_seed(3)
    first = [aug(sample) for _ in range(4)]
    torch.manual_seed(3)
    second = [aug(sample) for _ in range(4)]
    for a, b in zip(first, second):
        for key in sample:
            assert torch.equal(a[key], b[key])
    # with scale 1 only, every output is the sample or its mirror, and both occur
    flips = Augment(scales=(1.0,), flip=True)
    torch.manual_seed(0)
    kinds = set()
    for _ in range(40):
        out = flips(sample)
        if torch.equal(out["image"], sample["image"]):
            kinds.add("same")
        else:
            assert torch.equal(out["image"], sample["image"].flip(-1))
            assert torch.equal(out["normal"][0], -sample["normal"][0].flip(-1))
            kinds.add("mirror")
    assert kinds == {"same", "mirror"}


def test_augment_rejects_bad_scales():
    with pytest.raises(ValueError, match="scales"):
        Augment(scales=(0.5, 1.0))
    with pytest.raises(ValueError, match="scales"):
        Augment(scales=())
