"""The config a resumed run continues with: the one it was started with, not the resume command's.

A resume command (`python run.py trainer.resume=true hydra.run.dir=<dir>`, or a SLURM requeue's
same command line with `trainer.resume=auto`) composes defaults plus its own overrides; the run's
real config is the resolved one saved in its checkpoint. This module decides, on plain dicts:

* settings the command does not name keep the run's values (a plain resume needs no other flag);
* an override identical to one the run was started with changes nothing (a requeue);
* an override of a *free* setting (:data:`FREE_ON_RESUME`: logging, progress, workers, device, more
  epochs, ...) applies;
* any other override that changes a value is a conflict: the run would no longer be the run it was,
  so the caller refuses it, listing every difference.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

#: Settings a resume may change: they do not change what the run computes (logging, speed, where
#: the data or the device is), or they extend it (trainer.epochs: no schedule depends on the total,
#: and a schedule that interpolates it keeps the value resolved at the start). trainer.device and
#: trainer.eval_batch_size change floats in the last bits only (kernels, summation order): a resume
#: on another node is legitimate. A prefix covers everything below it.
FREE_ON_RESUME = (
    "hydra", "logger", "name", "delta", "ckpt", "eval_split", "input", "dataset.root",
    "trainer.resume", "trainer.epochs", "trainer.progress", "trainer.log_every_n_steps", "trainer.num_workers",
    "trainer.persistent_workers", "trainer.pin_memory", "trainer.device", "trainer.cudnn_benchmark",
    "trainer.eval_batch_size", "trainer.checkpoint_every_n_steps", "trainer.log_images", "trainer.requeue",
)

Path_ = tuple[str, ...]
_MISSING = object()


@dataclass
class Conflict:
    """One override that would change the run: the leaves it changes (path, run's value, new value)."""

    override: str
    changes: list[tuple[Path_, Any, Any]]


@dataclass
class Resumed:
    config: dict
    overrides: list[str]
    choices: dict
    conflicts: list[Conflict] = field(default_factory=list)


def resume(saved: dict, current: dict, overrides: list[str] | None, saved_overrides: list[str],
           saved_choices: dict, current_choices: dict,
           package_of: Callable[[str, str], Path_ | None] = lambda group, option: None) -> Resumed:
    """The run's ``saved`` config with the free settings ``overrides`` name taken from ``current``.

    ``overrides`` None (the Python API, no command line): every setting of ``current`` counts as
    asked for. ``package_of(group, option)`` is the config node a group option fills (its
    ``# @package``), () for a global one, None when unknown.
    """
    result = Resumed(copy.deepcopy(saved), list(saved_overrides), dict(saved_choices or current_choices))
    asked = [("", ())] if overrides is None else [
        (o, _target(o, current, saved, package_of)) for o in overrides if o not in saved_overrides]
    for override, path in asked:
        changes = list(_differences(_get(saved, path), _get(current, path), path))
        free = [c for c in changes if is_free(c[0])]
        for leaf, _, new in free:
            _apply(result.config, current, leaf, new)
        kept = [c for c in changes if not is_free(c[0])]
        if kept:
            result.conflicts.append(Conflict(override, kept))
        elif override:
            result.overrides = _replace(result.overrides, override)
            group = _key(override)
            if group in current_choices:  # e.g. logger=none: the summary names the logger used
                result.choices[group] = current_choices[group]
    for group, option in current_choices.items():
        if group.startswith("hydra/"):  # this job's launcher, sweeper, ...
            result.choices[group] = option
    return result


def describe(conflicts: list[Conflict], run_dir: Any, saved_choices: dict, current_choices: dict) -> str:
    """The refusal: one line saying what and why, then one line per difference."""
    lines = [f"trainer.resume: this command changes what the run in {run_dir} computes, but a resumed run "
             f"continues with the config it was started with (saved in its checkpoints/last.pt); drop these "
             f"overrides, or start a new run in another hydra.run.dir:"]
    for conflict in conflicts:
        group = _key(conflict.override)
        if group in current_choices and group in saved_choices and saved_choices[group] != current_choices[group]:
            lines.append(f"  {conflict.override}: the run has {group}={saved_choices[group]}, this command "
                         f"{group}={current_choices[group]}")
            continue
        where = f"  {conflict.override}: " if conflict.override else "  "
        for leaf, old, new in conflict.changes[:8]:
            lines.append(f"{where}{'.'.join(leaf)} is {_show(old)} in the run, {_show(new)} here")
        if len(conflict.changes) > 8:
            lines.append(f"{where}... and {len(conflict.changes) - 8} more")
    lines.append("  (free to change on resume: " + ", ".join(FREE_ON_RESUME) + ")")
    return "\n".join(lines)


def is_free(path: Path_) -> bool:
    dotted = ".".join(path)
    return any(dotted == p or dotted.startswith(p + ".") for p in FREE_ON_RESUME)


# -- helpers ------------------------------------------------------------------------------------
def _key(override: str) -> str:
    """``weighting=uw`` -> ``weighting``; ``+trainer.x=1`` -> ``trainer.x``; ``~kd`` -> ``kd``."""
    return override.split("=", 1)[0].lstrip("+~")


def _target(override: str, current: dict, saved: dict, package_of: Callable[[str, str], Path_ | None]) -> Path_:
    """The node an override sets: a key's own node, or the package a group option fills."""
    key = _key(override)
    if key.startswith("hydra"):
        return ("hydra",)
    path = tuple(key.replace("/", ".").split("."))
    if "/" not in key and "." in key:
        return path  # a value: trainer.epochs=5
    option = override.split("=", 1)[1] if "=" in override else ""
    package = package_of(key, option)
    if package is not None:
        return package  # e.g. reference=... -> delta.reference; experiment=... -> () (global)
    if _get(current, path) is not _MISSING or _get(saved, path) is not _MISSING:
        return path  # a group with its default package (weighting=dwa) or a top-level value (seed=1)
    return ()  # unknown: compare everything


def _get(tree: Any, path: Path_) -> Any:
    for part in path:
        if not isinstance(tree, dict) or part not in tree:
            return _MISSING
        tree = tree[part]
    return tree


def _differences(old: Any, new: Any, path: Path_) -> Iterator[tuple[Path_, Any, Any]]:
    """Leaves where two config trees differ (lists compare as values)."""
    if isinstance(old, dict) and isinstance(new, dict):
        for k in list(old) + [k for k in new if k not in old]:
            yield from _differences(old.get(k, _MISSING), new.get(k, _MISSING), (*path, k))
    elif old != new or type(old) is not type(new):
        yield path, old, new


def _apply(config: dict, current: dict, leaf: Path_, value: Any) -> None:
    """Set one free leaf. A node that builds another class here than in the run (logger=none) is
    taken whole: its leaves do not mix with those of the run's class."""
    for depth in range(1, len(leaf)):
        node, here = _get(config, leaf[:depth]), _get(current, leaf[:depth])
        if isinstance(node, dict) and isinstance(here, dict) and node.get("_target_") != here.get("_target_"):
            _get(config, leaf[:depth - 1])[leaf[depth - 1]] = copy.deepcopy(here)
            return
    parent = config
    for part in leaf[:-1]:
        parent = parent.setdefault(part, {})
    if value is _MISSING:
        parent.pop(leaf[-1], None)
    else:
        parent[leaf[-1]] = copy.deepcopy(value)


def _replace(overrides: list[str], override: str) -> list[str]:
    """The run's overrides with ``override`` instead of any earlier one of the same key."""
    return [o for o in overrides if _key(o) != _key(override)] + [override]


def _show(value: Any) -> str:
    return "(not set)" if value is _MISSING else repr(value)
