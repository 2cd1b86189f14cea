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
from okd.engine.trainer import RunContext, Trainer
from okd.tasks import build_tasks


def build(cfg: DictConfig, run_dir: Path, choices: dict[str, str] | None = None) -> tuple[Trainer, RunContext]:
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
    trainer = _instantiate(cfg.trainer, "trainer")
    # The job's config as a plain dict (without Hydra's own node, present when composed by tests).
    config = OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True)
    ctx = RunContext(
        model=model, tasks=tasks, data=data, weighting=weighting, distiller=distiller, logger=logger,
        run_dir=Path(run_dir), seed=int(cfg.seed), config=config, choices=dict(choices or {}),
        build_model=lambda task_list: _instantiate(cfg.backbone, "backbone", tasks=list(task_list)),
        delta=OmegaConf.to_container(cfg.delta, resolve=True) if "delta" in cfg else {},
    )
    return trainer, ctx


MODES = ("train", "eval", "predict")


def run(cfg: DictConfig, run_dir: Path, choices: dict[str, str] | None = None,
        overrides: list[str] | None = None) -> dict[str, Any]:
    """``mode=train`` (default) trains; ``mode=eval``/``mode=predict`` use ``ckpt=<path>``."""
    mode = cfg.get("mode", "train")
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: expected one of {list(MODES)}")
    if mode != "train":
        cfg = _with_checkpoint_config(cfg, overrides or [])
        cfg.logger = {"_target_": "okd.logging.NullLogger"}  # evaluation makes no tracker run
    trainer, ctx = build(cfg, run_dir, choices)
    if mode == "eval":
        from okd.engine.evaluate import evaluate_checkpoint
        return evaluate_checkpoint(trainer, ctx, cfg.get("ckpt"), cfg.get("eval_split"))
    if mode == "predict":
        from okd.engine.evaluate import predict_checkpoint
        return {"predictions": [str(p) for p in predict_checkpoint(trainer, ctx, cfg.get("ckpt"), cfg.get("input"))]}
    return trainer.fit(ctx)


def _with_checkpoint_config(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """Rebuild the model the checkpoint was trained with: its dataset and backbone config replace the
    composed ones, then the command line's own ``dataset.*``/``backbone.*`` overrides apply again
    (e.g. ``dataset.root`` to evaluate on files elsewhere)."""
    from okd.engine.checkpoint import load_checkpoint

    ckpt = cfg.get("ckpt")
    if not ckpt or not Path(ckpt).is_file():
        return cfg  # the mode reports the missing checkpoint itself
    saved = load_checkpoint(Path(ckpt)).get("config") or {}
    cfg = cfg.copy()
    for group in ("dataset", "backbone"):
        if group in saved:
            cfg[group] = saved[group]
    again = [o for o in overrides if o.split("=", 1)[0].lstrip("+~").startswith(("dataset.", "backbone."))]
    if again:
        cfg.merge_with_dotlist(again)
    return cfg


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
