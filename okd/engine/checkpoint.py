"""Checkpoints: atomic writes, safe loads, and the RNG states that make a resume exact."""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from okd.errors import CheckpointError


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write to a temp file, fsync, then rename over ``path``: a kill mid-save leaves the old file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        kept = "the previous checkpoint there is intact" if path.exists() else "no earlier checkpoint exists"
        raise OSError(f"could not write checkpoint {path} ({err.strerror or err}); {kept}") from err


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu", mmap: bool = False) -> dict[str, Any]:
    """Load with ``weights_only=True`` (no arbitrary code runs); clear errors for bad paths/files.
    ``mmap=True`` maps the tensors instead of reading them: cheap when only small entries are used."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as err:  # torch raises several types for truncated/foreign files
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"could not load checkpoint {path}: {reason} (truncated or not a checkpoint? "
                              f"expected a checkpoint written by okd, e.g. <run dir>/checkpoints/last.pt)") from err


def rng_state() -> dict[str, Any]:
    """RNG states of python, numpy and torch (CPU and CUDA) in weights_only-loadable types."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state`'s states, wherever the checkpoint was loaded to: a resume on a GPU loads
    with ``map_location=cuda``, which moves these byte tensors too, and the generators take CPU ones."""
    random.setstate(_tuples(state["python"]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.cpu().numpy(), *rest))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _tuples(value):
    """random.setstate needs tuples; a round trip through some loaders may give lists."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    if isinstance(value, tuple):
        return tuple(_tuples(v) for v in value)
    return value


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def check_model_state(model: torch.nn.Module, state_dict: dict[str, Any], path: Path,
                      checkpoint_info: dict[str, Any] | None = None, current_info: dict[str, Any] | None = None) -> None:
    """Fail with one message listing every difference between a checkpoint and the model built now."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = sorted(
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state_dict) if tuple(own[k].shape) != tuple(state_dict[k].shape)
    )
    if not (missing or unexpected or shapes):
        return
    lines = [f"checkpoint {path} does not match the model built from this config:"]
    info, now = checkpoint_info or {}, current_info or {}
    for key in sorted(set(info) | set(now)):
        if info.get(key) != now.get(key):
            lines.append(f"  {key}: checkpoint {info.get(key)!r}, this run {now.get(key)!r}")
    for title, items in (("missing in checkpoint", missing), ("not in this model", unexpected),
                         ("shape differs", shapes)):
        if items:
            lines.append(f"  {title} ({len(items)}): " + ", ".join(items[:6]) + (" ..." if len(items) > 6 else ""))
    raise ValueError("\n".join(lines))


#: format version written into every checkpoint
CHECKPOINT_VERSION = 1


class Checkpointer:
    """Where and when a fit saves: ``last.pt`` after every epoch (and every ``every_n_steps`` steps, or
    when a signal stops the run mid-epoch), ``best.pt`` whenever model selection improves. Only the
    main process writes (under DDP every process holds the same weights)."""

    def __init__(self, directory: Path, every_n_steps: int = 0, enabled: bool = True) -> None:
        self.directory, self.every_n_steps, self.enabled = Path(directory), every_n_steps, enabled
        self.last, self.best = self.directory / "last.pt", self.directory / "best.pt"

    def due(self, done: int, end: int) -> bool:
        """A periodic mid-epoch save after ``done`` steps of an epoch that ends at step ``end``."""
        return bool(self.every_n_steps) and done % self.every_n_steps == 0 and done < end

    def save(self, state: dict[str, Any], best: bool = False) -> None:
        if not self.enabled:
            return
        save_checkpoint(self.last, state)
        if best:
            save_checkpoint(self.best, state)

    def save_mid_epoch(self, state: dict[str, Any], epoch: int, carry: dict[str, Any]) -> None:
        """``state`` as after the previous epoch, plus how far epoch ``epoch`` got (``carry``)."""
        if not self.enabled:
            return
        state["in_epoch"] = {"epoch": epoch, **{k: (v.cpu() if isinstance(v, torch.Tensor) else v)
                                                for k, v in carry.items()}}
        save_checkpoint(self.last, state)

    def load_last(self, map_location: Any) -> dict[str, Any]:
        if not self.last.is_file():
            raise FileNotFoundError(
                f"trainer.resume=true but there is no checkpoint at {self.last}; point the run at the run "
                f"directory to resume, e.g. `python run.py trainer.resume=true hydra.run.dir=<run dir>`")
        return load_checkpoint(self.last, map_location=map_location)


def training_state(trainer: Any, epoch: int) -> dict[str, Any]:
    """What a checkpoint after ``epoch`` holds: the union of the states of ``trainer``'s parts (model,
    optimizer, scheduler, weighting, precision, distiller, RNG, selection) and the run's facts that an
    exact resume, mode=eval and mode=predict need."""
    ctx = trainer.ctx
    return {
        "version": CHECKPOINT_VERSION, "epoch": epoch, "model": ctx.model.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict() if trainer.scheduler is not None else None,
        "weighting": ctx.weighting.checkpoint_state(), "grad_scaler": trainer.amp.state_dict(),
        "distiller": ctx.distiller.checkpoint_state(), "rng": rng_state(),
        **ctx.selection.state_dict(),  # "best": the best epoch so far
        "skipped_steps": trainer.skipped_steps,  # nan_policy=skip: steps dropped so far in the run
        "wandb_id": ctx.logger.run_id,
        "tasks": [t.name for t in ctx.tasks], "num_classes": ctx.data.num_classes, "choices": dict(ctx.choices),
        "metrics": {s: dict(r) for s, r in trainer.last_rows.items()},
        # the run's resolved config: a resume continues with it (okd/app.py), mode=eval/predict
        # rebuild the model from its dataset and backbone without other flags
        "config": ctx.config, "overrides": list(ctx.overrides),
        "class_names": list(ctx.data.info.get("class_names") or []),
    }


def load_training_state(trainer: Any, state: dict[str, Any]) -> None:
    """Put :func:`training_state`'s ``state`` back into every part of ``trainer`` (a resume)."""
    ctx = trainer.ctx
    load_model_weights(ctx, state, trainer.checkpoints.last)
    trainer.optimizer.load_state_dict(state["optimizer"])
    if trainer.scheduler is not None and state["scheduler"] is not None:
        trainer.scheduler.load_state_dict(state["scheduler"])
    ctx.weighting.load_checkpoint_state(state["weighting"])
    trainer.amp.load_state_dict(state.get("grad_scaler"))
    ctx.distiller.load_checkpoint_state(state["distiller"])
    set_rng_state(state["rng"])
    ctx.selection.load_state_dict(state)
    trainer.skipped_steps = int(state.get("skipped_steps", 0))
    trainer.recorder.truncate_after(state["epoch"])


def load_model_weights(ctx: Any, state: dict[str, Any], path: Path) -> None:
    """Load a checkpoint's weights into ``ctx.model``, with every mismatch named."""
    names = [t.name for t in ctx.tasks]
    if state.get("tasks") != names:
        raise ValueError(f"checkpoint {path} was trained on tasks {state.get('tasks')}; this run has {names} "
                         f"(set dataset.tasks to match)")
    check_model_state(ctx.model, state["model"], path,
                      {**state.get("choices", {}), "num_classes": state.get("num_classes")},
                      {**ctx.choices, "num_classes": ctx.data.num_classes} if ctx.choices else None)
    ctx.model.load_state_dict(state["model"])
