"""Per-sample geometric transforms on sample dicts (okd/data/base.py conventions), as torch ops.

* :func:`resize` (load-time resolution change): bilinear image (antialiased when shrinking, like
  PIL), nearest targets: labels, depth and normals are never blended across pixels, which would
  mix classes and average valid values with the 0 that marks invalid ones.
* :func:`scale_crop` / :func:`hflip` and their random composition :class:`Augment` (docs/data.md,
  the augmentation of mtan's SegNet benchmarks): crop an (H/s, W/s) window and resize it back to
  H x W (bilinear image, nearest targets); zooming by s makes the scene look s times closer, so
  depth is divided by s (disparity, i.e. inverse depth, is multiplied by s); a horizontal flip
  mirrors the camera-frame x axis, so the normal's x component is negated.

Randomness comes from torch's global generator: the DataLoader seeds it per worker from the
trainer's loader generator, and with ``num_workers=0`` it is the main process's generator that
checkpoints save, so augmented runs are reproducible.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

Sample = dict[str, Tensor]
# Targets resized with nearest neighbour, in the order they are stacked for one interpolate call.
_NEAREST_KEYS = ("segmentation", "depth", "normal")


def _size_of(sample: Mapping[str, Tensor]) -> tuple[int, int]:
    h, w = sample["image"].shape[-2:]
    return int(h), int(w)


def _resize_image(image: Tensor, size: tuple[int, int]) -> Tensor:
    shrink = size[0] < image.shape[-2] or size[1] < image.shape[-1]
    out = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=shrink)
    return out[0]


def _resize_targets(sample: Mapping[str, Tensor], size: tuple[int, int]) -> Sample:
    """Nearest-neighbour resize of every target in ONE interpolate call (labels go through float)."""
    keys = [k for k in _NEAREST_KEYS if k in sample]
    if not keys:
        return {}
    parts = [sample[k].unsqueeze(0).float() if k == "segmentation" else sample[k] for k in keys]
    stacked = F.interpolate(torch.cat(parts)[None], size=size, mode="nearest-exact")[0]
    out, start = {}, 0
    for key, part in zip(keys, parts):
        chunk = stacked[start:start + part.shape[0]]
        out[key] = chunk[0].to(torch.int64) if key == "segmentation" else chunk
        start += part.shape[0]
    return out


def resize(sample: Mapping[str, Tensor], size: Sequence[int]) -> Sample:
    """Resize a sample to ``size`` = (H, W): bilinear image, nearest-neighbour targets."""
    size = (int(size[0]), int(size[1]))
    if _size_of(sample) == size:
        return dict(sample)
    out = dict(sample)
    out["image"] = _resize_image(sample["image"], size)
    out.update(_resize_targets(sample, size))
    return out


def scale_crop(sample: Mapping[str, Tensor], scale: float, top: int, left: int,
               disparity: bool = False) -> Sample:
    """Crop the (int(H/scale), int(W/scale)) window at (top, left) and resize it back to H x W.

    Depth is divided by ``scale`` (disparity multiplied), since the zoomed view shows the scene
    ``scale`` times closer (docs/data.md#augmentation; mtan's RandomScaleCrop). Normals keep their directions.
    """
    if scale < 1:
        raise ValueError(f"scale_crop: scale must be >= 1 (a crop), got {scale}")
    height, width = _size_of(sample)
    h, w = int(height / scale), int(width / scale)
    if not (0 <= top <= height - h and 0 <= left <= width - w):
        raise ValueError(f"scale_crop: window {h}x{w} at ({top}, {left}) leaves the {height}x{width} image")
    if (h, w) == (height, width):
        return dict(sample)
    window = {k: v[..., top:top + h, left:left + w] for k, v in sample.items()}
    out = resize(window, (height, width))
    if "depth" in out:
        out["depth"] = out["depth"] * scale if disparity else out["depth"] / scale
    return out


def hflip(sample: Mapping[str, Tensor]) -> Sample:
    """Mirror left-right; the normal's x component (camera x points right) changes sign."""
    out = {k: v.flip(-1) for k, v in sample.items()}
    if "normal" in out:
        sign = torch.tensor([-1.0, 1.0, 1.0], dtype=out["normal"].dtype).view(3, 1, 1)
        out["normal"] = out["normal"] * sign
    return out


class Augment:
    """Random scale-crop (s uniform over ``scales``, window position uniform) then a coin-flip hflip.

    docs/data.md#augmentation: scales {1.0, 1.2, 1.5}, flip probability 1/2. ``disparity`` marks depth stored
    as inverse depth (Cityscapes), which a zoom multiplies instead of divides.
    """

    def __init__(self, scales: Sequence[float] = (1.0, 1.2, 1.5), flip: bool = True,
                 disparity: bool = False) -> None:
        scales = [float(s) for s in scales]
        if not scales or any(s < 1 for s in scales):
            raise ValueError(f"augmentation scales must be a non-empty list of values >= 1, got {scales}")
        self.scales = scales
        self.flip = bool(flip)
        self.disparity = bool(disparity)

    def __call__(self, sample: Mapping[str, Tensor]) -> Sample:
        height, width = _size_of(sample)
        scale = self.scales[int(torch.randint(len(self.scales), ()))]
        h, w = int(height / scale), int(width / scale)
        top = int(torch.randint(height - h + 1, ()))
        left = int(torch.randint(width - w + 1, ()))
        out = scale_crop(sample, scale, top, left, disparity=self.disparity)
        if self.flip and bool(torch.rand(()) < 0.5):
            out = hflip(out)
        return out

    def __repr__(self) -> str:
        return f"Augment(scales={self.scales}, flip={self.flip}, disparity={self.disparity})"
