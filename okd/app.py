"""From a composed Hydra config to a finished run: instantiate every object, then ``Trainer.fit``.

This is the only module that reads the config; every object it builds receives plain arguments
(``_convert_="all"`` turns nested config nodes into dicts and lists).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from okd.data.base import DataBundle
from okd.engine.checkpoint import seed_everything
from okd.engine.selection import ModelSelection
from okd.engine.trainer import RunContext, Trainer
from okd.errors import OkdError
from okd.logging import atomic_write_text, console
from okd.tasks import build_tasks


def build(cfg: DictConfig, run_dir: Path, choices: dict[str, str] | None = None,
          overrides: list[str] | None = None) -> tuple[Trainer, RunContext]:
    """Instantiate dataset, tasks, model, weighting, distiller, logger and trainer from ``cfg``."""
    seed_everything(int(cfg.seed))  # model initialisation is part of what the seed fixes
    data = _instantiate(cfg.dataset, "dataset")
    if not isinstance(data, DataBundle):
        raise ConfigError(f"dataset: the config must build an okd.data.base.DataBundle, got {type(data).__name__} "
                          f"(check its _target_)")
    tasks = build_tasks(data.tasks, data.num_classes)
    model = _instantiate(cfg.backbone, "backbone", tasks=tasks)
    weighting = _instantiate(cfg.weighting, "weighting")
    distiller = _instantiate(cfg.kd, "kd")
    logger = _instantiate(cfg.logger, "logger")
    _check_moved_keys(cfg)
    trainer = _instantiate(cfg.trainer, "trainer")
    selection = _instantiate(cfg.selection, "selection") if "selection" in cfg else ModelSelection()
    ctx = RunContext(
        model=model, tasks=tasks, data=data, weighting=weighting, distiller=distiller, logger=logger, selection=selection,
        run_dir=Path(run_dir), seed=int(cfg.seed), config=_job_config(cfg), choices=dict(choices or {}),
        overrides=list(overrides or []),
        build_model=lambda task_list: _instantiate(cfg.backbone, "backbone", tasks=list(task_list)),
        delta=OmegaConf.to_container(cfg.delta, resolve=True) if "delta" in cfg else {},
    )
    return trainer, ctx


def _check_moved_keys(cfg: DictConfig) -> None:
    """A config file (an experiment of the user's) that still sets a model-selection key where it used
    to live: one line naming its home now (on the command line, run.py rewrites such keys itself)."""
    from okd.config import MOVED_KEYS

    for old, new in MOVED_KEYS.items():
        group, key = old.split(".")
        if key in (cfg.get(group) or {}):
            raise ConfigError(f"{old} is now {new}: model selection has one config group (conf/selection/); "
                              f"set {new}: {cfg[group][key]} instead of {old}")


MODES = ("train", "eval", "predict")


def run(cfg: DictConfig, run_dir: Path, choices: dict[str, str] | None = None,
        overrides: list[str] | None = None) -> dict[str, Any]:
    """``mode=train`` (default) trains; ``mode=eval``/``mode=predict`` use ``ckpt=<path>``."""
    mode = cfg.get("mode", "train")
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: expected one of {list(MODES)}")
    source = cfg.get("ckpt")
    if mode != "train":
        cfg = _local_checkpoint(cfg, Path(run_dir))
        cfg, saved = _with_checkpoint_config(cfg, overrides or [])
        if mode == "eval":  # one tracker run (job type eval), grouped with the run it evaluates
            cfg.logger = _eval_logger(cfg, saved, overrides or [])
        else:  # predictions are files in the run dir: no tracker run
            cfg.logger = {"_target_": "okd.logging.NullLogger"}
    else:
        cfg, choices, overrides = _run_config(cfg, Path(run_dir), choices, overrides)
    trainer, ctx = build(cfg, run_dir, choices, overrides)
    if mode == "eval":
        from okd.engine.eval_predict import evaluate_checkpoint
        return evaluate_checkpoint(trainer, ctx, cfg.get("ckpt"), cfg.get("eval_split"), source=source)
    if mode == "predict":
        from okd.engine.eval_predict import predict_checkpoint
        return {"predictions": [str(p) for p in predict_checkpoint(trainer, ctx, cfg.get("ckpt"), cfg.get("input"))]}
    return trainer.fit(ctx)


def _job_config(cfg: DictConfig) -> dict[str, Any]:
    """The job's config as a plain resolved dict (without Hydra's own node, present when composed by tests)."""
    return OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True)


def _run_config(cfg: DictConfig, run_dir: Path, choices: dict[str, str] | None,
                overrides: list[str] | None) -> tuple[DictConfig, dict[str, str] | None, list[str] | None]:
    """A fresh run trains with the composed config. A resumed run continues with the config saved in its
    checkpoint (what it was started with), plus the command's overrides of free settings; an override
    that would change what the run computes is refused, listing the differences (okd/run_config.py).
    Chosen before any object is built: the objects must be the run's own."""
    from okd import run_config
    from okd.engine.checkpoint import load_checkpoint

    resume, last = cfg.trainer.get("resume", False), run_dir / "checkpoints" / "last.pt"
    if resume not in (True, "auto") or not last.is_file():
        return cfg, choices, overrides  # a fresh run (the trainer reports resume=true without checkpoint)
    saved = load_checkpoint(last, mmap=True)  # mmap: only the small entries below are read
    if "trainer" not in (saved.get("config") or {}):
        console.info(f"okd: {last} has no saved run config (an older okd wrote it): resuming with this command's config")
        return cfg, choices, overrides
    current_choices = dict(choices or {})
    saved_choices = saved.get("choices") or {}
    from okd.config import migrate_saved_config, moved_overrides

    # a run started by an earlier okd: its model-selection keys where they live now
    saved_config = migrate_saved_config(saved["config"])
    saved_overrides = moved_overrides(saved.get("overrides") or [])[0]
    result = run_config.resume(saved_config, _job_config(cfg), overrides, saved_overrides,
                               saved_choices, current_choices, package_of=_package_of)
    if result.conflicts:
        raise ResumeConflict(run_config.describe(result.conflicts, run_dir, saved_choices, current_choices))
    result.config["trainer"]["resume"] = resume  # what this job was asked to do
    _restore_hydra_snapshot(run_dir, result.config, result.overrides)
    return OmegaConf.create(result.config), result.choices, result.overrides


def _package_of(group: str, option: str) -> tuple[str, ...] | None:
    """The config node a group option fills, from the ``# @package`` line of its file: () for
    ``_global_`` (experiment presets, protocols), None without such a line or file."""
    for root in _config_dirs():
        path = root / group / f"{option}.yaml"
        if path.is_file():
            for line in path.read_text().splitlines()[:5]:
                words = line.lstrip("#").split()
                if line.startswith("#") and words[:1] == ["@package"] and len(words) > 1:
                    return () if words[1] == "_global_" else tuple(words[1].split("."))
            return None
    return None


def _config_dirs() -> list[Path]:
    """Hydra's file config sources (conf/ and any added search path); conf/ next to okd/ otherwise."""
    from hydra.core.hydra_config import HydraConfig

    dirs = []
    if HydraConfig.initialized():
        sources = OmegaConf.select(HydraConfig.get(), "runtime.config_sources") or []
        dirs = [Path(s.path) for s in sources if s.get("schema") == "file"]
    return dirs or [Path(__file__).resolve().parents[1] / "conf"]


def _restore_hydra_snapshot(run_dir: Path, config: dict[str, Any], overrides: list[str]) -> None:
    """Hydra wrote this command's config and overrides into ``.hydra/`` before okd ran; put the run's
    back, so that the snapshot (and okd.report, which groups runs by it) describes the run."""
    from hydra.core.hydra_config import HydraConfig

    from okd import distributed

    if not (HydraConfig.initialized() and distributed.is_main()):
        return
    subdir = HydraConfig.get().output_subdir
    snapshot = run_dir / subdir if subdir else None
    if snapshot is None or not (snapshot / "overrides.yaml").is_file():
        return
    atomic_write_text(snapshot / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(config)))
    atomic_write_text(snapshot / "overrides.yaml", OmegaConf.to_yaml(OmegaConf.create(list(overrides))))


def _local_checkpoint(cfg: DictConfig, run_dir: Path) -> DictConfig:
    """``ckpt=wandb:<entity>/<project>/<artifact>:<alias>``: the artifact downloaded into
    ``<run dir>/checkpoint/``, and ``ckpt`` its checkpoint file (refused with one line, before any
    work, where W&B is offline or unreachable or the artifact unknown: okd.logging.fetch_checkpoint)."""
    from okd.logging import fetch_checkpoint, is_artifact_ref

    ckpt = cfg.get("ckpt")
    if not is_artifact_ref(ckpt):
        return cfg
    logger = cfg.get("logger") or {}
    mode = logger.get("mode", "auto") if "WandbLogger" in str(logger.get("_target_", "")) else "auto"
    cfg = cfg.copy()
    cfg.ckpt = str(fetch_checkpoint(ckpt, run_dir / "checkpoint", mode=mode))
    return cfg


def _with_checkpoint_config(cfg: DictConfig, overrides: list[str]) -> tuple[DictConfig, dict[str, Any]]:
    """Rebuild the model the checkpoint was trained with: its dataset and backbone config replace the
    composed ones, then the command line's own ``dataset.*``/``backbone.*`` overrides apply again
    (e.g. ``dataset.root`` to evaluate on files elsewhere). Also returns the checkpoint's saved
    ``config`` and ``choices`` (empty without a readable checkpoint)."""
    from okd.engine.checkpoint import load_checkpoint

    ckpt = cfg.get("ckpt")
    if not ckpt or not Path(ckpt).is_file():
        return cfg, {}  # the mode reports the missing checkpoint itself
    state = load_checkpoint(Path(ckpt), mmap=True)
    from okd.config import migrate_saved_config

    saved = migrate_saved_config(state.get("config") or {})  # an earlier okd's keys where they live now
    cfg = cfg.copy()
    for group in ("dataset", "backbone"):
        if group in saved:
            cfg[group] = saved[group]
    again = [o for o in overrides if o.split("=", 1)[0].lstrip("+~").startswith(("dataset.", "backbone."))]
    if again:
        cfg.merge_with_dotlist(again)
    return cfg, {"config": saved, "choices": state.get("choices") or {}}


def _eval_logger(cfg: DictConfig, saved: dict[str, Any], overrides: list[str]) -> Any:
    """The tracker of ``mode=eval``: the configured one with job type ``eval``, and, from the checkpoint,
    the group of the run it evaluates (its W&B group, else its experiment name, else its method), the
    name ``eval <that run's name>`` and its tags plus ``eval``; ``logger.<key>=`` on the command line wins."""
    from okd.config import UNNAMED
    from okd.logging import method_name

    node = cfg.logger
    if "WandbLogger" not in str(node.get("_target_", "")):
        return node
    given = {o.split("=", 1)[0].lstrip("+~") for o in overrides}
    values: dict[str, Any] = {"job_type": "eval"}
    config, choices = saved.get("config") or {}, saved.get("choices") or {}
    if config:
        trained = config.get("logger") or {}
        method = config.get("method") or method_name(choices)
        name = config.get("name")
        values["group"] = trained.get("group") or (name if name and name != UNNAMED else method)
        values["name"] = "eval " + (trained.get("name") or f"{method} seed={config.get('seed')}")
        tags = trained.get("tags") or [choices.get("dataset"), choices.get("backbone"), choices.get("weighting"),
                                       f"kd-{choices.get('kd')}"]
        values["tags"] = [str(t) for t in tags if t] + ["eval"]
    node = node.copy()
    for key, value in values.items():
        if f"logger.{key}" not in given:
            node[key] = value
    return node


def _instantiate(node: DictConfig, group: str, **kwargs: Any) -> Any:
    """Instantiate one group's object; name the group when its arguments are wrong."""
    try:
        return instantiate(node, _convert_="all", **kwargs)
    except Exception as err:
        # Hydra wraps the constructor's own error; surface the innermost cause with the group.
        cause = err
        while cause.__cause__ is not None:
            cause = cause.__cause__
        message = str(cause)
        raise ConfigError(message if message.startswith(group) else f"{group}: {message}") from err


class ConfigError(ValueError):
    """A config value that the object it configures rejected."""


class ResumeConflict(OkdError):
    """A resume command whose overrides would change what the run computes."""
