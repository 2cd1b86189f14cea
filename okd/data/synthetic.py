"""Synthetic scenes: the embedded default dataset (docs/data.md#synthetic-scenes).

Procedural rooms with objects, ray-cast per pixel from a pinhole camera, so that segmentation,
depth and surface normals come from one geometry and agree with each other; RGB is albedo times a
procedural texture, Lambert-shaded from the same normals, plus noise. Everything is numpy,
vectorised over pixels; only the scene primitives are looped over.

Geometry and conventions
------------------------
* World frame: metres, y up. The room is the box x in [-W/2, W/2], y in [0, H], z in [0, D]
  (W 4-7 m, H 2.5-3.2 m, D 5-8 m); the floor is y = 0.
* Camera frame (OpenCV): x right, y down, z forward along the optical axis. The camera stands near
  the back wall (height 1.2-1.6 m) looking down the room along +z with random jitter of yaw
  (+-15 deg), pitch (-12..+4 deg) and roll (+-3 deg). Floor normals are therefore about
  (0, -1, 0) in the camera frame.
* Intrinsics (:func:`intrinsics`): fx = fy = width * 518.8579 / 640 (the NYUv2 Kinect focal length
  scaled to the image width; 63 deg horizontal field of view), cx = width / 2, cy = height / 2;
  pixel (row v, column u) has its centre at (u + 0.5, v + 0.5). Back-projection:
  P = depth * ((u + 0.5 - cx) / fx, (v + 0.5 - cy) / fy, 1).
* depth: metres along the optical axis (z-depth, like NYUv2), 0 = invalid.
* normal: unit vectors in the camera frame, facing the camera (dot with the viewing ray < 0),
  all-zero = invalid.
* 1-4 random elliptical blobs per image (0.5-8 % of the pixels, about 3.5 % on average) are
  invalid in all three targets, like NYUv2's missing depth; the image itself stays intact there.

Classes
-------
Every scene is built from 13 fine classes; ``num_classes`` = K (6..13) keeps fine id f when f < K
and maps it to its parent class otherwise (so the scene content does not depend on K and every id
in [0, K) can occur):

====  ==========  ======  =========================  ===================  ==================
fine  name        parent  geometry                   Cityscapes 19 (id)   Cityscapes 7 (id)
====  ==========  ======  =========================  ===================  ==================
0     floor       -       plane y = 0                road (0)             flat (0)
1     wall        -       4 planes of the room       building (2)         construction (1)
2     ceiling     -       plane y = H                sky (10)             sky (4)
3     sphere      -       sphere on the floor        person (11)          human (5)
4     box         -       axis-aligned box           car (13)             vehicle (6)
5     cylinder    -       vertical capped cylinder   traffic light (6)    object (2)
6     wall_panel  wall    thin box on a wall         fence (4)            construction (1)
7     door        wall    thin tall box on a wall    wall (3)             construction (1)
8     rug         floor   thin slab on the floor     sidewalk (1)         flat (0)
9     cabinet     box     tall box against a wall    truck (14)           vehicle (6)
10    table       box     top slab and four legs     traffic sign (7)     object (2)
11    pillar      cyl.    floor-to-ceiling cylinder  pole (5)             object (2)
12    ellipsoid   sphere  axis-aligned ellipsoid     vegetation (8)       nature (3)
====  ==========  ======  =========================  ===================  ==================

The Cityscapes 7-class label is the official category of the 19-class train id (cityscapesscripts:
flat, construction, object, nature, sky, human, vehicle), so the two label maps agree. Train ids 9
(terrain), 12 (rider) and 15-18 (bus, train, motorcycle, bicycle) never occur in synthetic data.

Determinism: sample ``index`` of ``split`` under ``seed`` is drawn from
``numpy.random.default_rng(SeedSequence([seed, crc32(split), index]))`` (:func:`sample_rng`), so it
is the same on every call and does not depend on the split size. Across machines it is the same
for the same NumPy version (NumPy only changes Generator distributions between feature releases;
last-bit float rounding of sin/sqrt may differ between CPU builds).

CLI: ``python -m okd.data.synthetic --layout nyuv2 --out DIR --n 16 --size 288x384`` writes a
tree in a real dataset's published layout (:func:`write_layout`).
"""
from __future__ import annotations

import argparse
import math
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from okd.data.base import DataBundle, check_tasks

FINE_CLASSES = (
    "floor", "wall", "ceiling", "sphere", "box", "cylinder", "wall_panel", "door", "rug",
    "cabinet", "table", "pillar", "ellipsoid",
)
# Parent of each fine class, used when num_classes <= fine id (every parent is < MIN_CLASSES).
PARENT = np.array([0, 1, 2, 3, 4, 5, 1, 1, 0, 4, 4, 5, 3])
MIN_CLASSES, MAX_CLASSES = 6, len(FINE_CLASSES)

CITYSCAPES_19_NAMES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
    "bicycle",
)
CITYSCAPES_7_NAMES = ("flat", "construction", "object", "nature", "sky", "human", "vehicle")
# cityscapesscripts category of each train id (labels.py: trainId -> categoryId - 1).
CITYSCAPES_19_TO_7 = np.array([0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 4, 5, 5, 6, 6, 6, 6, 6, 6])
FINE_TO_CITYSCAPES_19 = np.array([0, 2, 10, 11, 13, 6, 4, 3, 1, 14, 7, 5, 8])
FINE_TO_CITYSCAPES_7 = CITYSCAPES_19_TO_7[FINE_TO_CITYSCAPES_19]

# NYUv2 Kinect focal length (pixels) over its image width: fx / W.
FOCAL_PER_WIDTH = 518.8579 / 640.0
# Cityscapes-layout disparity = DISPARITY_SCALE / depth, clipped at DISPARITY_MAX (mtan's
# pre-processed Cityscapes depth is inverse depth in about 0..0.49): 0.49 at 1 m. Rendered depth
# is >= 1.15 m in practice (400 scenes), so the clip is a guard, and values span about 0.05-0.43.
DISPARITY_SCALE = 0.49
DISPARITY_MAX = 0.49

LAYOUT_FOLDERS = {
    "nyuv2": ("image", "label", "depth", "normal"),
    "cityscapes": ("image", "depth", "label_7", "label_19"),
}

# Base albedo (RGB) per fine class; instances jitter around it.
_BASE_ALBEDO = np.array([
    [0.55, 0.40, 0.25], [0.80, 0.78, 0.70], [0.92, 0.92, 0.90], [0.85, 0.20, 0.20],
    [0.20, 0.45, 0.85], [0.25, 0.70, 0.30], [0.15, 0.15, 0.22], [0.60, 0.35, 0.15],
    [0.55, 0.15, 0.45], [0.85, 0.75, 0.35], [0.40, 0.25, 0.12], [0.65, 0.65, 0.60],
    [0.95, 0.55, 0.15],
])
_PLAIN, _STRIPES, _CHECKER, _NOISE = 0, 1, 2, 3
# Textures each fine class may carry (floors are tiled or grainy, ceilings plain, ...).
_TEXTURES = (
    (_CHECKER, _NOISE), (_PLAIN, _STRIPES), (_PLAIN,), (_PLAIN, _STRIPES, _CHECKER, _NOISE),
    (_PLAIN, _STRIPES, _CHECKER, _NOISE), (_PLAIN, _STRIPES, _CHECKER, _NOISE), (_PLAIN, _NOISE),
    (_STRIPES, _NOISE), (_STRIPES, _CHECKER, _NOISE), (_PLAIN, _STRIPES, _NOISE),
    (_PLAIN, _NOISE), (_PLAIN, _STRIPES), (_PLAIN, _STRIPES, _CHECKER, _NOISE),
)
_LATTICE = 8  # side of the per-scene random lattice behind the "noise" texture
_EPS = 1e-6  # minimum ray parameter: hits behind or at the camera do not count


# ----------------------------------------------------------------------------------------------
# Argument checks
# ----------------------------------------------------------------------------------------------
def _check_int(name: str, value, minimum: int, maximum: int | None = None) -> int:
    """Return ``value`` if it is an int in [minimum, maximum], else raise a ValueError naming it."""
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if ok and value >= minimum and (maximum is None or value <= maximum):
        return int(value)
    bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
    raise ValueError(f"{name}={value!r} is invalid: expected an integer {bound}")


def _check_size(height, width) -> tuple[int, int]:
    return _check_int("height", height, 8), _check_int("width", width, 8)


def _check_split(split) -> str:
    if not isinstance(split, str) or not split:
        raise ValueError(f"split={split!r} is invalid: expected a non-empty string")
    return split


def sample_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of sample ``index`` of ``split``: a pure function of (seed, split, index).

    ``crc32`` (not ``hash``) turns the split name into an integer that is the same in every
    process, so splits with different names draw from disjoint streams.
    """
    seed = _check_int("seed", seed, 0)
    index = _check_int("index", index, 0)
    code = zlib.crc32(_check_split(split).encode("utf-8"))
    return np.random.default_rng(np.random.SeedSequence([seed, code, index]))


def intrinsics(height: int, width: int) -> tuple[float, float, float, float]:
    """(fx, fy, cx, cy) of the renderer's pinhole camera for an image of this size (pixels)."""
    height, width = _check_size(height, width)
    focal = FOCAL_PER_WIDTH * width
    return focal, focal, width / 2.0, height / 2.0


def camera_rays(height: int, width: int) -> np.ndarray:
    """Per-pixel viewing rays in the camera frame, HxWx3, scaled so that their z component is 1.

    With this scaling the ray parameter of a hit point is its depth along the optical axis.
    """
    fx, fy, cx, cy = intrinsics(height, width)
    v, u = np.meshgrid(np.arange(height) + 0.5, np.arange(width) + 0.5, indexing="ij")
    return np.stack([(u - cx) / fx, (v - cy) / fy, np.ones_like(u)], axis=-1)


# ----------------------------------------------------------------------------------------------
# Primitives: ray parameter of the first hit (inf on a miss) and outward normal at a hit point.
# o: ray origin (3,), rays: a _Rays bundle of N directions, p: hit points (M, 3).
# ----------------------------------------------------------------------------------------------
class _Rays:
    """N ray directions stored per component (3 x N, each row contiguous) plus their inverses.

    Component rows keep every primitive test elementwise over contiguous arrays (reductions over
    the short axis of an N x 3 array were most of the rendering time); the inverses serve the
    slab test of every box. A zero component is nudged to 1e-300 there, so 0/0 cannot make nan.
    """

    def __init__(self, d: np.ndarray):
        self.d = np.ascontiguousarray(np.asarray(d, dtype=np.float64).T)
        self.inv = 1.0 / np.where(self.d == 0.0, 1e-300, self.d)


def _first_positive(t: np.ndarray, hit: np.ndarray) -> np.ndarray:
    return np.where(hit & (t > _EPS), t, np.inf)


def _hit_plane(geom, o, rays: _Rays):
    axis, value, _ = geom
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (value - o[axis]) / rays.d[axis]
    return _first_positive(t, np.isfinite(t))


def _normal_plane(geom, p):
    axis, _, sign = geom
    n = np.zeros_like(p)
    n[:, axis] = sign  # the inward normal of the room face
    return n


def _hit_box(geom, o, rays: _Rays):
    """Slab test (Kay & Kajiya 1986): entry = latest slab entry, if before the earliest exit."""
    lo, hi = geom
    near = np.full(rays.d.shape[1], -np.inf)
    far = np.full(rays.d.shape[1], np.inf)
    for axis in range(3):
        t1 = (lo[axis] - o[axis]) * rays.inv[axis]
        t2 = (hi[axis] - o[axis]) * rays.inv[axis]
        near = np.maximum(near, np.minimum(t1, t2))
        far = np.minimum(far, np.maximum(t1, t2))
    return _first_positive(near, near <= far)


def _normal_box(geom, p):
    # The face hit is the axis along which the point is farthest out, relative to the half size.
    lo, hi = geom
    q = (p - (lo + hi) / 2) / ((hi - lo) / 2)
    axis = np.abs(q).argmax(axis=1)
    n = np.zeros_like(p)
    n[np.arange(len(p)), axis] = np.sign(q[np.arange(len(p)), axis])
    return n


def _hit_unit_sphere(o: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Nearer root of |o + t d|^2 = 1 for component-major directions d (3 x N)."""
    a = d[0] * d[0] + d[1] * d[1] + d[2] * d[2]
    b = o[0] * d[0] + o[1] * d[1] + o[2] * d[2]
    disc = b * b - a * (o @ o - 1.0)
    t = (-b - np.sqrt(np.maximum(disc, 0.0))) / a
    return _first_positive(t, disc >= 0.0)


def _hit_ellipsoid(geom, o, rays: _Rays):
    centre, radii = geom  # a sphere is an ellipsoid with equal radii: scale it to the unit one
    return _hit_unit_sphere((o - centre) / radii, rays.d / radii[:, None])


def _normal_ellipsoid(geom, p):
    centre, radii = geom
    n = (p - centre) / radii**2  # gradient of |(p - c) / r|^2
    return n / np.linalg.norm(n, axis=1, keepdims=True)


def _hit_cylinder(geom, o, rays: _Rays):
    """Vertical cylinder: the side (a circle in x-z, within [y0, y1]) or either cap disc."""
    cx, cz, radius, y0, y1 = geom
    dx, dy, dz = rays.d
    ox, oz = o[0] - cx, o[2] - cz
    a = dx * dx + dz * dz
    b = ox * dx + oz * dz
    disc = b * b - a * (ox * ox + oz * oz - radius * radius)
    with np.errstate(divide="ignore", invalid="ignore"):
        t_side = (-b - np.sqrt(np.maximum(disc, 0.0))) / a
        y = o[1] + t_side * dy
        side = _first_positive(t_side, (disc >= 0.0) & (a > 0.0) & (y >= y0) & (y <= y1))
        caps = [_cap(o, rays.d, cx, cz, radius, level) for level in (y0, y1)]
    return np.minimum(side, np.minimum(*caps))


def _cap(o, d, cx, cz, radius, level):
    t = (level - o[1]) / d[1]
    x, z = o[0] + t * d[0] - cx, o[2] + t * d[2] - cz
    return _first_positive(t, np.isfinite(t) & (x * x + z * z <= radius * radius))


def _normal_cylinder(geom, p):
    # Side or cap, whichever the point is farther out on relative to the radius / half height.
    cx, cz, radius, y0, y1 = geom
    rx, rz = p[:, 0] - cx, p[:, 2] - cz
    radial = np.sqrt(rx * rx + rz * rz)
    vertical = np.abs(p[:, 1] - (y0 + y1) / 2) / ((y1 - y0) / 2)
    side = radial / radius >= vertical
    safe = np.maximum(radial, 1e-12)
    n = np.zeros_like(p)
    n[:, 0] = np.where(side, rx / safe, 0.0)
    n[:, 2] = np.where(side, rz / safe, 0.0)
    n[:, 1] = np.where(side, 0.0, np.sign(p[:, 1] - (y0 + y1) / 2))
    return n


_SHAPES: dict[str, tuple[Callable, Callable]] = {
    "plane": (_hit_plane, _normal_plane),
    "box": (_hit_box, _normal_box),
    "ellipsoid": (_hit_ellipsoid, _normal_ellipsoid),
    "cylinder": (_hit_cylinder, _normal_cylinder),
}


@dataclass
class _Prim:
    """One ray-castable surface with its fine class and material."""

    shape: str
    geom: tuple
    fine: int
    albedo: np.ndarray
    texture: int
    freq: float  # texture frequency, cycles per metre
    amp: float  # texture contrast: colour = albedo * (1 - amp * pattern)
    axis: np.ndarray  # stripe direction (unit vector)
    offset: np.ndarray  # lattice offset of the noise texture


@dataclass
class _Scene:
    prims: list[_Prim]
    cam_pos: np.ndarray
    cam_rot: np.ndarray  # columns: camera x (right), y (down), z (forward) in world coordinates
    light: np.ndarray
    light_gain: float
    lattice: np.ndarray


# ----------------------------------------------------------------------------------------------
# Scene sampling
# ----------------------------------------------------------------------------------------------
def _material(rng: np.random.Generator, fine: int) -> dict:
    kinds = _TEXTURES[fine]
    axis = rng.normal(size=3)
    return {
        "albedo": np.clip(_BASE_ALBEDO[fine] + rng.uniform(-0.12, 0.12, 3), 0.03, 0.97),
        "texture": int(kinds[rng.integers(len(kinds))]),
        "freq": float(rng.uniform(1.5, 6.0)),
        "amp": float(rng.uniform(0.15, 0.4)),
        "axis": axis / np.linalg.norm(axis),
        "offset": rng.integers(0, _LATTICE, 3),
    }


def _camera_rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Camera-to-world rotation (columns right, down, forward) for a camera looking along +z."""
    forward = np.array([math.sin(yaw) * math.cos(pitch), math.sin(pitch),
                        math.cos(yaw) * math.cos(pitch)])
    right = np.cross(forward, [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    c, s = math.cos(roll), math.sin(roll)
    right, down = c * right + s * down, -s * right + c * down
    return np.stack([right, down, forward], axis=1)


class _Builder:
    """Collects primitives for one scene; the placement helpers keep objects off the camera."""

    def __init__(self, rng: np.random.Generator, room: np.ndarray, cam_z: float):
        self.rng, self.room, self.cam_z = rng, room, cam_z
        self.prims: list[_Prim] = []

    def add(self, shape: str, geom: tuple, fine: int, material: dict | None = None) -> dict:
        material = material or _material(self.rng, fine)
        self.prims.append(_Prim(shape, geom, fine, **material))
        return material

    def floor_spot(self, half_x: float, half_z: float) -> tuple[float, float]:
        """Centre (x, z) of a footprint inside the room, at least 1.2 m in front of the camera."""
        w, _, depth = self.room
        x = self.rng.uniform(-w / 2 + half_x + 0.05, w / 2 - half_x - 0.05)
        z = self.rng.uniform(self.cam_z + 1.2 + half_z, depth - half_z - 0.05)
        return x, z

    def wall_box(self, width: float, thickness: float, y0: float, y1: float):
        """(lo, hi) of a box of this width standing out of the left, right or far wall."""
        w, _, depth = self.room
        wall = self.rng.integers(3)
        if wall == 2:  # far wall: the box spans x, sticks out along -z
            x = self.rng.uniform(-w / 2 + width / 2 + 0.1, w / 2 - width / 2 - 0.1)
            return (np.array([x - width / 2, y0, depth - thickness]),
                    np.array([x + width / 2, y1, depth + 0.01]))
        z = self.rng.uniform(self.cam_z + 1.0 + width / 2, depth - width / 2 - 0.1)
        if wall == 0:  # left wall x = -w/2
            return (np.array([-w / 2 - 0.01, y0, z - width / 2]),
                    np.array([-w / 2 + thickness, y1, z + width / 2]))
        return (np.array([w / 2 - thickness, y0, z - width / 2]),
                np.array([w / 2 + 0.01, y1, z + width / 2]))


def _add_room(b: _Builder) -> None:
    w, h, depth = b.room
    b.add("plane", (1, 0.0, 1.0), 0)
    b.add("plane", (1, h, -1.0), 2)
    wall = _material(b.rng, 1)  # the four walls share paint, each with a slight shade change
    for axis, value, sign in ((0, -w / 2, 1.0), (0, w / 2, -1.0), (2, 0.0, 1.0), (2, depth, -1.0)):
        shade = dict(wall, albedo=np.clip(wall["albedo"] * b.rng.uniform(0.9, 1.1), 0.03, 0.97))
        b.add("plane", (axis, value, sign), 1, shade)


def _add_object(b: _Builder, kind: int) -> None:
    """One floor object of fine class ``kind`` (3, 4, 5, 9, 10, 11 or 12)."""
    rng, h_room = b.rng, b.room[1]
    if kind in (3, 12):
        radii = np.full(3, rng.uniform(0.2, 0.5)) if kind == 3 else rng.uniform(
            [0.2, 0.15, 0.2], [0.6, 0.4, 0.6])
        x, z = b.floor_spot(radii[0], radii[2])
        b.add("ellipsoid", (np.array([x, radii[1], z]), radii), kind)
    elif kind == 4:
        half = rng.uniform(0.2, 0.5, 2)
        x, z = b.floor_spot(*half)
        top = rng.uniform(0.3, 1.0)
        b.add("box", (np.array([x - half[0], 0.0, z - half[1]]),
                      np.array([x + half[0], top, z + half[1]])), 4)
    elif kind in (5, 11):
        radius = rng.uniform(0.15, 0.4) if kind == 5 else rng.uniform(0.12, 0.25)
        x, z = b.floor_spot(radius, radius)
        y0, y1 = (0.0, rng.uniform(0.4, 1.2)) if kind == 5 else (-0.01, h_room + 0.01)
        b.add("cylinder", (x, z, radius, y0, y1), kind)
    elif kind == 9:
        lo, hi = b.wall_box(rng.uniform(0.5, 1.0), rng.uniform(0.35, 0.6), 0.0,
                            rng.uniform(1.3, 2.0))
        b.add("box", (lo, hi), 9)
    else:
        _add_table(b)


def _add_table(b: _Builder) -> None:
    half = b.rng.uniform([0.4, 0.3], [0.8, 0.5])
    x, z = b.floor_spot(*half)
    top = b.rng.uniform(0.65, 0.8)
    mat = b.add("box", (np.array([x - half[0], top - 0.05, z - half[1]]),
                        np.array([x + half[0], top, z + half[1]])), 10)
    for sx in (-1, 1):
        for sz in (-1, 1):  # legs: 6 cm square, 5 cm in from the corners
            lx, lz = x + sx * (half[0] - 0.08), z + sz * (half[1] - 0.08)
            b.add("box", (np.array([lx - 0.03, 0.0, lz - 0.03]),
                          np.array([lx + 0.03, top - 0.05, lz + 0.03])), 10, mat)


def _add_wall_parts(b: _Builder) -> None:
    rng = b.rng
    for _ in range(rng.integers(0, 3)):  # pictures / windows
        bottom = rng.uniform(0.8, 1.3)
        b.add("box", b.wall_box(rng.uniform(0.5, 1.5), 0.03, bottom,
                                bottom + rng.uniform(0.4, 1.0)), 6)
    if rng.random() < 0.5:
        b.add("box", b.wall_box(rng.uniform(0.8, 1.0), 0.04, -0.01, rng.uniform(1.9, 2.1)), 7)
    if rng.random() < 0.5:
        half = rng.uniform([0.5, 0.5], [1.25, 1.0])
        x, z = b.floor_spot(*half)
        b.add("box", (np.array([x - half[0], -0.01, z - half[1]]),
                      np.array([x + half[0], 0.015, z + half[1]])), 8)


_OBJECT_KINDS = (3, 4, 5, 12, 9, 10, 11)


def _sample_scene(rng: np.random.Generator) -> _Scene:
    room = np.array([rng.uniform(4.0, 7.0), rng.uniform(2.5, 3.2), rng.uniform(5.0, 8.0)])
    cam_pos = np.array([rng.uniform(-0.3, 0.3) * room[0] / 2, rng.uniform(1.2, 1.6),
                        rng.uniform(0.3, 1.0)])
    yaw, pitch, roll = np.radians([rng.uniform(-15, 15), rng.uniform(-12, 4), rng.uniform(-3, 3)])
    b = _Builder(rng, room, cam_pos[2])
    _add_room(b)
    for kind in rng.choice(_OBJECT_KINDS, size=rng.integers(2, 6)):
        _add_object(b, int(kind))
    _add_wall_parts(b)
    light = np.array([rng.uniform(-room[0] / 2 + 0.5, room[0] / 2 - 0.5),
                      room[1] - rng.uniform(0.3, 0.6), rng.uniform(1.0, room[2] - 1.0)])
    return _Scene(b.prims, cam_pos, _camera_rotation(yaw, pitch, roll), light,
                  float(rng.uniform(0.8, 1.1)), rng.random((_LATTICE,) * 3))


# ----------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------
def _texture(prim: _Prim, p: np.ndarray, n: np.ndarray, lattice: np.ndarray) -> np.ndarray:
    """Pattern in [0, 1] at world points ``p`` (normals ``n``): textures stick to surfaces in 3D.

    The cell patterns drop the coordinate along the dominant normal axis: on a plane it is a
    constant up to rounding (the floor's y is +-1e-17), and flooring it would give salt-and-pepper.
    """
    if prim.texture == _STRIPES:
        return 0.5 + 0.5 * np.sin(2 * math.pi * prim.freq * (p @ prim.axis))
    if prim.texture == _PLAIN:
        return np.full(len(p), 0.5)
    q = p.copy()
    q[np.arange(len(p)), np.abs(n).argmax(axis=1)] = 0.0
    if prim.texture == _CHECKER:
        return (np.floor(prim.freq * q).sum(axis=1) % 2).astype(float)
    cell = (np.floor(3 * prim.freq * q).astype(np.int64) + prim.offset) % _LATTICE
    return lattice[cell[:, 0], cell[:, 1], cell[:, 2]]


def _ray_cast(scene: _Scene, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest hit per ray: (ray parameter, primitive index). Earlier primitives win ties."""
    rays = _Rays(d)
    best_t = np.full(len(d), np.inf)
    best_id = np.full(len(d), -1)
    for k, prim in enumerate(scene.prims):
        t = _SHAPES[prim.shape][0](prim.geom, scene.cam_pos, rays)
        closer = t < best_t
        best_t[closer], best_id[closer] = t[closer], k
    if (best_id < 0).any():  # the room encloses the camera, so every ray must hit something
        raise RuntimeError("synthetic renderer: a ray left the room")
    return best_t, best_id


def _surfaces(scene: _Scene, d: np.ndarray, t: np.ndarray, pid: np.ndarray):
    """Per-ray fine class, world normal (facing the camera), textured albedo and hit point."""
    points = scene.cam_pos + t[:, None] * d
    fine = np.empty(len(d), dtype=np.int64)
    normal = np.empty_like(d)
    colour = np.empty_like(d)
    for k, prim in enumerate(scene.prims):
        sel = np.flatnonzero(pid == k)
        if sel.size == 0:
            continue
        p = points[sel]
        fine[sel] = prim.fine
        n = _SHAPES[prim.shape][1](prim.geom, p)
        normal[sel] = n
        colour[sel] = prim.albedo * (1.0 - prim.amp * _texture(prim, p, n, scene.lattice))[:, None]
    # No flipping towards the camera here: outward normals of closed shapes seen from outside
    # and inward room faces already face it, and a flip would hide a wrong-signed normal.
    return fine, normal, colour, points


def _lambert(scene: _Scene, normal: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Ambient + diffuse shading from a point light: 0.35 + 0.65 * gain * max(0, n . l)."""
    to_light = scene.light - points
    to_light /= np.linalg.norm(to_light, axis=1, keepdims=True)
    diffuse = np.clip(np.einsum("ij,ij->i", normal, to_light), 0.0, None)
    return 0.35 + 0.65 * scene.light_gain * diffuse


def _invalid_mask(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """1-4 elliptical blobs (each about 0.5-3 % of the image), like NYUv2's missing depth."""
    v, u = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    mask = np.zeros((height, width), dtype=bool)
    for _ in range(rng.integers(1, 5)):
        cv, cu = rng.integers(height), rng.integers(width)  # centred on a pixel: never empty
        rv = max(1.0, rng.uniform(0.04, 0.10) * height)
        ru = max(1.0, rng.uniform(0.04, 0.10) * width)
        mask |= ((v - cv) / rv) ** 2 + ((u - cu) / ru) ** 2 <= 1.0
    return mask


def _render_fine(rng: np.random.Generator, height: int, width: int) -> dict[str, np.ndarray]:
    """Render one scene with fine class ids (0..12, -1 invalid); HWC float32 arrays."""
    scene = _sample_scene(rng)
    rays_cam = camera_rays(height, width).reshape(-1, 3)
    # World directions R d; the ray parameter is the z-depth since z_cam = 1. (einsum: numpy's
    # matmul of an N x 3 by a C-ordered 3 x 3 took a 10x slower path here.)
    d = np.einsum("ij,kj->ik", rays_cam, scene.cam_rot)
    t, pid = _ray_cast(scene, d)
    fine, normal_w, colour, points = _surfaces(scene, d, t, pid)
    shade = _lambert(scene, normal_w, points)
    image = colour * shade[:, None] + rng.normal(0.0, 0.02, colour.shape)
    invalid = _invalid_mask(rng, height, width).reshape(-1)
    normal_c = np.einsum("ij,jk->ik", normal_w, scene.cam_rot)  # world -> camera: R^T n
    fine[invalid], t[invalid], normal_c[invalid] = -1, 0.0, 0.0
    return {
        "image": np.clip(image, 0.0, 1.0).reshape(height, width, 3).astype(np.float32),
        "fine": fine.reshape(height, width),
        "depth": t.reshape(height, width, 1).astype(np.float32),
        "normal": normal_c.reshape(height, width, 3).astype(np.float32),
    }


def _map_labels(fine: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Map fine ids through ``table``; -1 stays -1. Returns float32 (the on-disk convention)."""
    out = np.where(fine >= 0, table[np.maximum(fine, 0)], -1)
    return out.astype(np.float32)


def class_table(num_classes: int) -> np.ndarray:
    """Fine id -> class id for ``num_classes`` classes: keep ids below it, else the parent."""
    num_classes = _check_int("num_classes", num_classes, MIN_CLASSES, MAX_CLASSES)
    fine = np.arange(MAX_CLASSES)
    return np.where(fine < num_classes, fine, PARENT)


def class_names(num_classes: int) -> list[str]:
    """Names of the classes 0..num_classes-1 (a parent keeps its own name)."""
    return list(FINE_CLASSES[: _check_int("num_classes", num_classes, MIN_CLASSES, MAX_CLASSES)])


def render_scene(rng: np.random.Generator, height: int, width: int,
                 num_classes: int) -> dict[str, np.ndarray]:
    """Render one random scene in the NYUv2 on-disk conventions (docs/data.md#nyuv2).

    Returns HWC float32 arrays: ``image`` HxWx3 in [0, 1], ``label`` HxW (class ids as floats,
    -1 ignore), ``depth`` HxWx1 (metres along the optical axis, 0 invalid), ``normal`` HxWx3
    (unit, camera frame, all-zero invalid).
    """
    height, width = _check_size(height, width)
    table = class_table(num_classes)
    out = _render_fine(rng, height, width)
    return {"image": out["image"], "label": _map_labels(out.pop("fine"), table),
            "depth": out["depth"], "normal": out["normal"]}


# ----------------------------------------------------------------------------------------------
# Dataset
# ----------------------------------------------------------------------------------------------
class SyntheticScenes(Dataset):
    """A split of synthetic scenes, rendered once at construction and held in memory as tensors.

    Sample ``i`` is ``render_scene(sample_rng(seed, split, i), height, width, num_classes)``, in
    the sample conventions of okd/data/base.py (only the selected tasks are returned).
    """

    def __init__(self, num_samples: int, height: int = 48, width: int = 64,
                 tasks: Sequence[str] = ("segmentation", "depth", "normal"), num_classes: int = 7,
                 seed: int = 0, split: str = "train"):
        self.num_samples = _check_int("num_samples", num_samples, 1)
        self.height, self.width = _check_size(height, width)
        self.tasks = check_tasks(tasks, where="SyntheticScenes tasks")
        self.num_classes = _check_int("num_classes", num_classes, MIN_CLASSES, MAX_CLASSES)
        self.seed = _check_int("seed", seed, 0)
        self.split = _check_split(split)
        self.class_names = class_names(self.num_classes)
        self.data = self._render_all()

    def _render_all(self) -> dict[str, torch.Tensor]:
        keys = {"image": "image", "segmentation": "label", "depth": "depth", "normal": "normal"}
        wanted = ["image", *self.tasks]
        arrays: dict[str, list[np.ndarray]] = {k: [] for k in wanted}
        for i in range(self.num_samples):
            sample = render_scene(sample_rng(self.seed, self.split, i), self.height, self.width,
                                  self.num_classes)
            for k in wanted:
                arrays[k].append(sample[keys[k]])
        data = {}
        for k in wanted:
            stacked = np.stack(arrays[k])
            if k == "segmentation":
                data[k] = torch.from_numpy(stacked.astype(np.int64))
            else:  # N x H x W x C -> N x C x H x W
                data[k] = torch.from_numpy(np.ascontiguousarray(stacked.transpose(0, 3, 1, 2)))
        return data

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not -self.num_samples <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} samples")
        # Clones, so that an in-place transform cannot alter the cached split.
        return {k: v[index].clone() for k, v in self.data.items()}


def build(tasks: Sequence[str] = ("segmentation", "depth", "normal"), num_classes: int = 7,
          height: int = 48, width: int = 64, train_size: int = 256, val_size: int = 64,
          test_size: int = 64, seed: int = 0, select_split: str = "val",
          report_split: str = "test") -> DataBundle:
    """The synthetic dataset as a :class:`DataBundle`: train / val / test splits.

    The splits differ in the split name fed to :func:`sample_rng`, so they are disjoint streams.
    """
    for name, value in (("train_size", train_size), ("val_size", val_size),
                        ("test_size", test_size)):
        _check_int(name, value, 1)
    common = dict(height=height, width=width, tasks=tasks, num_classes=num_classes, seed=seed)
    train = SyntheticScenes(train_size, split="train", **common)
    evals = {name: SyntheticScenes(size, split=name, **common)
             for name, size in (("val", val_size), ("test", test_size))}
    return DataBundle(
        name="synthetic", train=train, eval_splits=evals, tasks=list(train.tasks),
        num_classes=train.num_classes, select_split=select_split, report_split=report_split,
        info={"class_names": train.class_names, "height": train.height, "width": train.width,
              "depth_unit": "metres", "seed": train.seed},
    )


# ----------------------------------------------------------------------------------------------
# Published layouts (docs/data.md#nyuv2, docs/data.md#cityscapes)
# ----------------------------------------------------------------------------------------------
def _layout_arrays(layout: str, rng: np.random.Generator, height: int, width: int,
                   num_classes: int) -> dict[str, np.ndarray]:
    if layout == "nyuv2":
        return render_scene(rng, height, width, num_classes)
    out = _render_fine(rng, height, width)
    depth = out["depth"]
    with np.errstate(divide="ignore"):
        disparity = np.where(depth > 0, np.minimum(DISPARITY_SCALE / depth, DISPARITY_MAX), 0.0)
    return {"image": out["image"], "depth": disparity.astype(np.float32),
            "label_7": _map_labels(out["fine"], FINE_TO_CITYSCAPES_7),
            "label_19": _map_labels(out["fine"], FINE_TO_CITYSCAPES_19)}


def write_layout(out_dir, layout: str, n_train: int, n_val: int, height: int, width: int,
                 seed: int = 0, num_classes: int | None = None) -> Path:
    """Write synthetic scenes as ``out_dir/{train,val}/<folder>/{i}.npy`` in a published layout.

    ``nyuv2`` (mtan pre-processing): image HxWx3 in [0, 1], label HxW (0..num_classes-1 as floats,
    -1 ignore; 13 classes by default), depth HxWx1 metres, normal HxWx3; all float32.
    ``cityscapes`` (mtan pre-processing): image HxWx3 in [0, 1], depth HxWx1 disparity
    (DISPARITY_SCALE / depth, in 0..0.49, 0 invalid), label_7 / label_19 HxW (-1 ignore) mapped
    from the 13 fine classes (module docstring); ``num_classes`` must be None. Sample i of a split
    is sample i of ``SyntheticScenes(split=...)`` with the same seed.
    """
    if layout not in LAYOUT_FOLDERS:
        raise ValueError(f"layout={layout!r} is invalid: expected one of {sorted(LAYOUT_FOLDERS)}")
    counts = {"train": _check_int("n_train", n_train, 1), "val": _check_int("n_val", n_val, 1)}
    height, width = _check_size(height, width)
    seed = _check_int("seed", seed, 0)
    if layout == "cityscapes" and num_classes is not None:
        raise ValueError(f"num_classes={num_classes!r} is invalid for layout 'cityscapes': "
                         "expected None (it always writes label_7 and label_19)")
    num_classes = _check_int("num_classes", MAX_CLASSES if num_classes is None else num_classes,
                             MIN_CLASSES, MAX_CLASSES)
    root = Path(out_dir)
    for split, count in counts.items():
        for folder in LAYOUT_FOLDERS[layout]:
            (root / split / folder).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            arrays = _layout_arrays(layout, sample_rng(seed, split, i), height, width, num_classes)
            for folder in LAYOUT_FOLDERS[layout]:
                np.save(root / split / folder / f"{i}.npy", arrays[folder])
    return root


def _parse_size(text: str) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--size {text!r}: expected HEIGHTxWIDTH, e.g. 288x384") from None
    return height, width


def main(argv: Sequence[str] | None = None) -> Path:
    """CLI: write synthetic scenes in the NYUv2 or Cityscapes file layout."""
    parser = argparse.ArgumentParser(prog="python -m okd.data.synthetic", description=main.__doc__)
    parser.add_argument("--layout", required=True, choices=sorted(LAYOUT_FOLDERS))
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--n", type=int, default=16, help="number of training samples")
    parser.add_argument("--val", type=int, default=None,
                        help="number of validation samples (default: ceil(n / 4), at least 1)")
    parser.add_argument("--size", type=_parse_size, default=(288, 384), help="HEIGHTxWIDTH")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-classes", type=int, default=None,
                        help="nyuv2 only: class count, 6..13 (default 13)")
    args = parser.parse_args(argv)
    n_val = args.val if args.val is not None else max(1, math.ceil(args.n / 4))
    height, width = args.size
    start = time.perf_counter()
    try:
        root = write_layout(args.out, args.layout, args.n, n_val, height, width, args.seed,
                            args.num_classes)
    except ValueError as err:
        parser.error(str(err))
    folders = ",".join(LAYOUT_FOLDERS[args.layout])
    print(f"wrote {args.layout} layout to {root}: train {args.n} + val {n_val} samples of "
          f"{height}x{width}, {root}/{{train,val}}/{{{folders}}}/{{i}}.npy, seed {args.seed} "
          f"({time.perf_counter() - start:.1f} s)")
    return root


if __name__ == "__main__":
    main()
