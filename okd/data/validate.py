"""Start-up checks of a dataset root in a published ``.npy`` layout (docs/data.md#start-up-checks).

Every check fails with ONE :class:`DatasetError` whose message names the path, what was found and
what was expected, and points to the README's "Data" section. The checks are cheap enough to run
on every start: directory listings, one ``stat`` per file (a truncated file is shorter than its
siblings; only odd-sized files get their ``.npy`` header read), and the full values of the FIRST
sample of each split only. Files met later that turn out corrupt raise :class:`CorruptFileError`
naming the file (:func:`open_npy`).
"""
from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DATA_DOCS = 'README.md, section "Data"'
IGNORE_LABELS = (-1, 255)  # -1 is the layouts' ignore value; 255 (Cityscapes' convention) is accepted as it


class DatasetError(ValueError):
    """A dataset root or file that does not match the layout the loader expects."""


class CorruptFileError(DatasetError):
    """A ``.npy`` file that cannot be read (truncated, overwritten, not a ``.npy``)."""


def problem(dataset: str, what: str, path, found, expected) -> DatasetError:
    """The one-line error every check raises: what is wrong, where, found vs expected, where to read."""
    return DatasetError(f"{dataset}: {what}: {path}: found {found}; expected {expected} (see {DATA_DOCS})")


# ----------------------------------------------------------------------------------------------
# Root and folders
# ----------------------------------------------------------------------------------------------
def root_variable(dataset: str) -> str:
    """The environment variable conf/dataset/<name>.yaml reads the root from (OKD_NYUV2_ROOT, ...)."""
    return f"OKD_{dataset.upper()}_ROOT"


def resolve_root(root, dataset: str, example: str) -> Path:
    """The root as a Path; a clear error when it is unset, missing or not a directory.

    ``example`` is the command line that sets it, e.g. ``dataset=nyuv2 dataset.root=/data/nyuv2``.
    """
    if root is None or str(root).strip() == "":
        raise DatasetError(
            f"{dataset}: dataset.root is not set: found null; expected the folder of the {dataset} "
            f"download, e.g. `python run.py {example}`, or once for every command: `export "
            f"{root_variable(dataset)}=<folder>`; a preset (experiment=...) without the download: add protocol=none "
            f"(the synthetic scenes) (downloads and layouts: {DATA_DOCS})")
    path = Path(os.path.expanduser(str(root)))
    if not path.exists():
        raise problem(dataset, "dataset.root does not exist", path, "no such file or directory",
                      f"the folder of the {dataset} download (download it first)")
    if not path.is_dir():
        raise problem(dataset, "dataset.root is not a directory", path, "a file", "a directory")
    return path


def _listing(path: Path, limit: int = 8) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
    if not names:
        return "an empty folder"
    more = f", ... ({len(names)} entries)" if len(names) > limit else ""
    return "[" + ", ".join(names[:limit]) + more + "]"


def require_dirs(dataset: str, parent: Path, names: Sequence[str], what: str) -> None:
    """Each of ``parent/<name>`` must be a directory; the error lists what ``parent`` holds.

    When ``parent`` has a single sub-folder that holds the expected names (an archive unpacked
    one level too deep), the error suggests that folder.
    """
    missing = [n for n in names if not (parent / n).is_dir()]
    if not missing:
        return
    hint = ""
    subdirs = [p for p in parent.iterdir() if p.is_dir()]
    if len(subdirs) == 1 and all((subdirs[0] / n).is_dir() for n in names):
        hint = f"; did you mean dataset.root={subdirs[0]}?"
    raise problem(dataset, f"missing {what} folder {missing[0]!r}", parent / missing[0],
                  f"{_listing(parent)}", f"folders {list(names)}{hint}")


def indexed_files(dataset: str, folder: Path) -> list[Path]:
    """The files ``folder/{i}.npy`` for i = 0..N-1, in index order; errors on gaps or stray names."""
    indices: dict[int, Path] = {}
    for entry in os.scandir(folder):
        if not entry.name.endswith(".npy"):
            continue
        stem = entry.name[:-4]
        if not stem.isdigit() or (len(stem) > 1 and stem.startswith("0")):
            raise problem(dataset, "unexpected file name", Path(entry.path), repr(entry.name),
                          "files named {i}.npy with i = 0, 1, 2, ... (no leading zeros)")
        indices[int(stem)] = Path(entry.path)
    if not indices:
        raise problem(dataset, "no .npy files", folder, _listing(folder), "files 0.npy .. {N-1}.npy")
    n = len(indices)
    if max(indices) != n - 1:
        gaps = sorted(set(range(max(indices) + 1)) - set(indices))
        shown = ", ".join(f"{g}.npy" for g in gaps[:5]) + (", ..." if len(gaps) > 5 else "")
        raise problem(dataset, "non-consecutive indices", folder,
                      f"{n} files with indices up to {max(indices)}, missing {shown}",
                      f"consecutive indices 0..{n - 1}")
    return [indices[i] for i in range(n)]


def split_files(dataset: str, root: Path, split: str, folders: Sequence[str]) -> dict[str, list[Path]]:
    """``{folder: [root/split/folder/0.npy, ...]}``; every folder present with the same count."""
    require_dirs(dataset, root, [split], "split")
    require_dirs(dataset, root / split, folders, "modality")
    files = {f: indexed_files(dataset, root / split / f) for f in folders}
    counts = {f: len(v) for f, v in files.items()}
    if len(set(counts.values())) > 1:
        most = Counter(counts.values()).most_common(1)[0][0]
        odd = next(f for f, c in counts.items() if c != most)
        raise problem(dataset, "file count differs between modalities", root / split / odd,
                      f"{counts[odd]} files (counts per folder: {counts})",
                      f"the same count in every folder ({most})")
    return files


# ----------------------------------------------------------------------------------------------
# .npy files
# ----------------------------------------------------------------------------------------------
def read_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, data offset) of a ``.npy`` file from its header; CorruptFileError if unreadable."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            # version 3 only changes the header's text encoding; read it like version 2
            reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = reader(f)
            return tuple(shape), np.dtype(dtype), f.tell()
    except (ValueError, OSError, EOFError, SyntaxError) as err:
        raise CorruptFileError(f"cannot read the .npy header of {path}: {err} (the file is corrupt or "
                               f"not a .npy; re-download or re-create it; see {DATA_DOCS})") from None


def check_complete(dataset: str, paths: Sequence[Path]) -> None:
    """Every file holds as many bytes as its header promises (catches truncated downloads).

    Files of one modality normally share one size; only files whose size differs from the most
    common one have their header read, so this costs one ``stat`` per file.
    """
    sizes = [os.stat(p).st_size for p in paths]
    common = Counter(sizes).most_common(1)[0][0]
    for path, size in zip(paths, sizes):
        if size == common and size > 0:
            continue
        shape, dtype, offset = read_header(path)
        expected = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if size != expected:
            raise problem(dataset, "truncated or padded .npy file", path, f"{size} bytes",
                          f"{expected} bytes for a {dtype} array of shape {shape} (re-download it)")
    if common == 0:
        raise problem(dataset, "empty .npy file", paths[sizes.index(0)], "0 bytes", "a .npy array")


def open_npy(path) -> np.ndarray:
    """Memory-map a ``.npy`` file read-only; any failure names the file (CorruptFileError)."""
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError, SyntaxError) as err:
        raise CorruptFileError(f"cannot read {path}: {err} (the file is corrupt or truncated; re-download "
                               f"or re-create it; see {DATA_DOCS})") from None


# ----------------------------------------------------------------------------------------------
# Array contents
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ArraySpec:
    """What one modality's array must look like: its kind and channel count (None: H x W)."""

    kind: str  # image | label | depth | normal
    channels: int | None

    def shape_text(self, height: int | str = "H", width: int | str = "W") -> str:
        if self.channels is None:
            return f"({height}, {width})"
        tail = f" or ({height}, {width})" if self.channels == 1 else ""
        return f"({height}, {width}, {self.channels}){tail}"

    def spatial(self, shape: tuple[int, ...]) -> tuple[int, int] | None:
        """(H, W) if ``shape`` fits this spec, else None."""
        if len(shape) == 2 and self.channels in (None, 1):
            return shape[0], shape[1]
        if len(shape) == 3 and self.channels is not None and shape[2] == self.channels:
            return shape[0], shape[1]
        return None


def check_shape(dataset: str, path: Path, shape: tuple[int, ...], spec: ArraySpec,
                size: tuple[int, int] | None = None) -> tuple[int, int]:
    """(H, W) of an array of this spec; errors on a wrong rank, channel count or (H, W) != size."""
    hw = spec.spatial(tuple(shape))
    if hw is None or (size is not None and hw != tuple(size)):
        expected = spec.shape_text(*size) if size is not None else spec.shape_text()
        if size is not None:
            expected += " like the other files of this sample/split"
        raise problem(dataset, f"wrong {spec.kind} array shape", path, f"shape {tuple(shape)}", expected)
    return hw


def check_values(dataset: str, path: Path, array: np.ndarray, spec: ArraySpec,
                 num_classes: int | None = None) -> None:
    """dtype and value range of one array (the whole array is read: use on a few samples only)."""
    a = np.asarray(array)
    numeric = np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)
    if spec.kind != "label" and not np.issubdtype(a.dtype, np.floating):
        raise problem(dataset, f"wrong {spec.kind} dtype", path, str(a.dtype), "a floating-point array")
    if not numeric:
        raise problem(dataset, f"wrong {spec.kind} dtype", path, str(a.dtype), "a numeric array")
    if not np.isfinite(a).all():
        raise problem(dataset, f"non-finite {spec.kind} values", path,
                      f"{int((~np.isfinite(a)).sum())} NaN/inf values", "finite values")
    lo, hi = float(a.min()), float(a.max())
    if spec.kind == "image" and (lo < -1e-3 or hi > 1 + 1e-3):
        raise problem(dataset, "image values out of range", path, f"min {lo:g}, max {hi:g}",
                      "RGB in [0, 1] (float)")
    if spec.kind == "depth" and lo < 0:
        raise problem(dataset, "negative depth values", path, f"min {lo:g}",
                      "values >= 0 with 0 marking invalid pixels")
    if spec.kind == "normal" and max(-lo, hi) > 1 + 1e-3:
        raise problem(dataset, "normal components out of range", path, f"min {lo:g}, max {hi:g}",
                      "unit vectors (components in [-1, 1]; all-zero = invalid)")
    if spec.kind == "label":
        _check_labels(dataset, path, a, num_classes)


def _check_labels(dataset: str, path: Path, a: np.ndarray, num_classes: int | None) -> None:
    if np.issubdtype(a.dtype, np.floating) and not (a == np.round(a)).all():
        raise problem(dataset, "non-integer label values", path, f"e.g. {a[a != np.round(a)].flat[0]:g}",
                      "class indices stored as whole numbers")
    values = np.unique(a)
    bad = values[~(np.isin(values, IGNORE_LABELS) | ((values >= 0) & (values < num_classes)))]
    if bad.size:
        shown = ", ".join(f"{v:g}" for v in bad[:6]) + (", ..." if bad.size > 6 else "")
        raise problem(dataset, "label values out of range", path, f"values {shown}",
                      f"class indices 0..{num_classes - 1} and -1 (ignore)")


def check_first_sample(dataset: str, files: Mapping[str, Sequence[Path]], specs: Mapping[str, ArraySpec],
                       num_classes: int | None, size: tuple[int, int] | None = None) -> tuple[int, int]:
    """Shapes (one H x W for all modalities), dtypes and value ranges of sample 0; returns (H, W)."""
    for key, paths in files.items():
        array = open_npy(paths[0])
        size = check_shape(dataset, paths[0], array.shape, specs[key], size)
        check_values(dataset, paths[0], array, specs[key], num_classes)
    assert size is not None
    return size


def validate_split(dataset: str, files: Mapping[str, Sequence[Path]], specs: Mapping[str, ArraySpec],
                   num_classes: int | None, size: tuple[int, int] | None = None) -> tuple[int, int]:
    """All start-up checks of one split's files (complete files, first sample); returns (H, W)."""
    for paths in files.values():
        check_complete(dataset, paths)
    return check_first_sample(dataset, files, specs, num_classes, size)
