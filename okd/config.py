"""The resolvers conf/ uses (registered on import; run.py imports this) and :func:`compose`, conf/ composed
as ``python run.py <overrides>`` would compose it (tests, benchmarks and the sweep tools of okd/launch.py).

Resolvers: ``okd_run_name`` and ``okd_group`` (W&B run names and groups), ``okd_now`` (one start time for every process of a DDP
job), ``okd_subdir`` (a sweep job's folder, named after its overrides), ``okd_stl_runs`` (KD-MTL's
teachers are the single-task runs of the same sweep) and ``okd_direction`` (the Optuna direction that
matches ``selection.monitor``). Nothing here imports torch at module level: run.py imports this module
before Hydra parses the command line.
"""
from __future__ import annotations

import hashlib
from datetime import datetime
from pathlib import Path
from typing import Sequence

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


#: the name of runs and sweeps that no preset named (conf/config.yaml)
UNNAMED = "default"


def run_name(name: str, overrides: str = "", seed: int | str | None = None) -> str:
    """W&B run name. A named preset or sweep: its name, then the command-line overrides that make
    this run (``paper_nyuv2_resnet50[experiment=okd,seed=1]``). Otherwise the method and the seed,
    then the other overrides (``dwa seed=1 [trainer.epochs=6]``)."""
    if name != UNNAMED:
        return f"{name}[{overrides}]" if overrides else str(name)
    rest = [o for o in overrides.split(",") if o and not o.startswith(("seed=", "weighting=", "kd=", "experiment="))]
    return f"{_method()} seed={seed}" + (f" [{','.join(rest)}]" if rest else "")


def run_group(name: str) -> str:
    """W&B group: a named preset or sweep's name; an unnamed sweep (``-m``) its own, from its folder
    (``default-2026-12-06-20-36-09``: every run of it, and only those); a single unnamed run its method,
    so that runs of one method line up."""
    if name != UNNAMED or not HydraConfig.initialized():
        return str(name)
    hc = HydraConfig.get()
    if hc.mode is not None and hc.mode.name == "MULTIRUN":
        return "-".join([str(name), *Path(str(hc.sweep.dir)).parts[-2:]])
    return _method()


def _method() -> str:
    from okd.logging import method_name

    return method_name(dict(HydraConfig.get().runtime.choices)) if HydraConfig.initialized() else "?"


_shared_start: datetime | None = None


def share_start_time(start: datetime) -> None:
    """Fix the time ``${okd_now:...}`` gives (torchrun: rank 0's, so every process picks one run dir)."""
    global _shared_start
    _shared_start = start


def now(pattern: str) -> str:
    """Like Hydra's ``${now:...}``, but the same in every process of a DDP job."""
    return (_shared_start or datetime.now()).strftime(pattern)


def stl_runs(tasks: Sequence[str], key: str = "experiment", prefix: str = "stl_") -> dict[str, str]:
    """``{task: run dir}`` of this job's single-task siblings: the same overrides with
    ``<key>=<prefix><task>`` in place of this job's ``<key>`` choice, in the same parent folder.

    Sweep files name a job's folder after its overrides (``hydra.sweep.subdir``, resolver
    ``okd_subdir``), so ``experiment=kdmtl_sweep,seed=1`` finds its teachers in
    ``experiment=stl_depth,seed=1`` etc.: same seed and same extra overrides, whatever they are.
    """
    hc = HydraConfig.get()
    overrides = list(hc.overrides.task)
    settings = hc.job.config.override_dirname
    exclude, item_sep, kv_sep = list(settings.exclude_keys), settings.item_sep, settings.kv_sep
    position = [i for i, o in enumerate(overrides) if o.split("=", 1)[0].lstrip("+~") == key]
    here = Path(hc.runtime.output_dir)
    if not position or here.name != job_subdir(overrides_dirname(overrides, exclude, item_sep, kv_sep)):
        raise ValueError(f"okd_stl_runs: {here} is not a job folder of a sweep (its name is not its overrides): "
                         f"the single-task teachers are found next to a run only in a sweep of conf/sweep/, e.g. "
                         f"`python run.py -m +sweep=<name> {key}=kdmtl_sweep`; otherwise use experiment=kdmtl "
                         f"with kd.teachers.<task>=<run dir>")
    out = {}
    for task in tasks:
        sibling = list(overrides)
        name = sibling[position[0]].split("=", 1)[0]
        sibling[position[0]] = f"{name}={prefix}{task}"
        out[str(task)] = str(here.parent / job_subdir(overrides_dirname(sibling, exclude, item_sep, kv_sep)))
    return out


#: file systems refuse names over 255 bytes; Optuna's floats and a few extra overrides get there
MAX_SUBDIR_BYTES = 200


def job_subdir(override_dirname: str) -> str:
    """A job's folder name from its ``override_dirname`` (resolver ``okd_subdir``): the name itself,
    with '/' (paths in values) written as '%2F' so that it stays one folder, and when longer than
    :data:`MAX_SUBDIR_BYTES` a prefix plus a hash of the whole name, so that it stays unique."""
    name = override_dirname.replace("%", "%25").replace("/", "%2F")
    raw = name.encode()
    if len(raw) <= MAX_SUBDIR_BYTES:
        return name
    digest = hashlib.sha1(raw).hexdigest()[:12]
    return raw[: MAX_SUBDIR_BYTES - 13].decode(errors="ignore") + "~" + digest


def overrides_dirname(overrides: Sequence[str], exclude_keys: Sequence[str], item_sep: str = ",",
                      kv_sep: str = "=") -> str:
    """Hydra's ``hydra.job.override_dirname`` of an override list (the rule of Hydra 1.3's
    config loader: drop excluded keys, sort the lines, join, then replace '=' by kv_sep)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(overrides))
    lines = sorted(o.input_line for o in parsed if o.key_or_group not in exclude_keys)
    return item_sep.join(lines).replace("=", kv_sep)


def direction(monitor: str, mode: str = "auto") -> str:
    """Optuna direction of ``selection.monitor``: run.py returns its best value on the selection split;
    with ``selection.mode=auto``, 'loss' and error metrics are minimised, mIoU / pixel accuracy / 'within'
    percentages maximised; ``min``/``max`` say it themselves."""
    if mode in ("min", "max"):
        return "minimize" if mode == "min" else "maximize"
    if monitor == "loss":
        return "minimize"
    from okd.tasks import metric_directions

    directions = metric_directions()
    if monitor not in directions:
        raise ValueError(f"selection.monitor={monitor!r}: expected 'loss' or one of {sorted(directions)}")
    return "maximize" if directions[monitor] else "minimize"


#: model-selection keys of earlier versions -> their one home, the selection group (conf/selection/)
MOVED_KEYS = {"trainer.monitor": "selection.monitor", "dataset.select_split": "selection.split",
              "delta.selection": "selection.headline", "delta.last_n": "selection.last_n"}


def moved_overrides(args: Sequence[str]) -> tuple[list[str], list[str]]:
    """Command-line overrides with moved keys spelled the new way (``trainer.monitor=x`` ->
    ``selection.monitor=x``, also with ``+``/``++``/``~``), and one note per rewritten key."""
    out, notes = [], []
    for arg in args:
        key, sep, value = arg.partition("=")
        prefix = key[:len(key) - len(key.lstrip("+~"))]
        new = MOVED_KEYS.get(key[len(prefix):])
        if new is None:
            out.append(arg)
            continue
        out.append(f"{prefix.lstrip('+')}{new}{sep}{value}")  # the new key exists: no `+`
        notes.append(f"okd: {key[len(prefix):]} is now {new} (model selection has one config group, "
                     f"conf/selection/); using {new}{sep}{value}")
    return out, notes


def migrate_saved_config(config: dict) -> dict:
    """A copy of a run config saved by an earlier okd (a checkpoint's) with the model-selection keys in
    their home now: ``trainer.monitor: x`` becomes ``selection.monitor: x`` (a null value is dropped),
    so that a resume or ``mode=eval`` of an older checkpoint builds as before."""
    import copy

    config = copy.deepcopy(config)
    for old, new in MOVED_KEYS.items():
        group, key = old.split(".")
        node = config.get(group)
        if isinstance(node, dict) and key in node:
            value = node.pop(key)
            selection = config.setdefault("selection", {"_target_": "okd.engine.selection.ModelSelection"})
            if value is not None:
                selection.setdefault(new.split(".")[1], value)
    return config


def null_group_error(args: Sequence[str]) -> str | None:
    """The one-line error for a config group set to null on the command line (``protocol=null``), which
    Hydra refuses with a traceback ("Config group override must be a string or a list"), naming the
    form that works; None when no argument does that. run.py calls it before Hydra parses the command line."""
    for arg in args:
        key, sep, value = arg.partition("=")
        group = key.lstrip("+")
        if not sep or value.strip().lower() != "null" or "/" in group or not (CONF_DIR / group).is_dir():
            continue
        options = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
        optional = f"  - {group}: null" in (CONF_DIR / "config.yaml").read_text()  # no option by default
        if "none" in options:
            fix = f"use {group}=none" + (f" (or '~{group}', which removes the group)" if optional else "")
        elif optional:
            fix = f"leave it out, or use '~{group}' to remove the one a preset selects"
        else:
            fix = f"choose one of: {', '.join(options)}"
        hint = (" (protocol=none: a preset on the synthetic scenes with the default backbone, no download)"
                if group == "protocol" else "")
        return (f"okd: error: {arg}: a config group takes the name of one of its options (conf/{group}/), not null; "
                f"{fix}{hint}")
    return None


def register_resolvers() -> None:
    OmegaConf.register_new_resolver("okd_run_name", run_name, replace=True)
    OmegaConf.register_new_resolver("okd_group", run_group, replace=True)
    OmegaConf.register_new_resolver("okd_now", now, use_cache=True, replace=True)
    OmegaConf.register_new_resolver("okd_stl_runs", lambda tasks: stl_runs(list(tasks)), replace=True)
    OmegaConf.register_new_resolver("okd_direction", direction, replace=True)
    OmegaConf.register_new_resolver("okd_subdir", lambda name: job_subdir(str(name)), replace=True)


register_resolvers()

import okd.slurm  # noqa: E402,F401  (hydra/launcher=okd_slurm's schema)


def compose(overrides: Sequence[str] = (), as_run: bool = True) -> DictConfig:
    """conf/config.yaml with ``overrides``, Hydra's node included, as ``python run.py <overrides>`` composes it.

    ``as_run``: also make it the current run's HydraConfig, so that ``${hydra:...}`` resolves as in a
    run (tests, benchmarks); otherwise Hydra's global state is cleared again afterwards (inside a run).
    """
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = hydra_compose("config", overrides=moved_overrides(overrides)[0], return_hydra_config=True)
    finally:
        if not as_run:
            GlobalHydra.instance().clear()
    if as_run:
        HydraConfig.instance().set_config(cfg)
    return cfg
