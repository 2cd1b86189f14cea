"""Checks across the objects of a run, made before any training: one clear message naming the keys
to change (each object checks its own arguments when it is built)."""
from __future__ import annotations

from typing import Any, Mapping, Sequence


def check_run(ctx: Any, eval_splits: Sequence[str] | None, compiled: bool) -> None:
    """``ctx``: the run's RunContext; ``eval_splits``: trainer.eval_splits; ``compiled``: trainer.compile."""
    available = set(ctx.data.eval_splits)
    for split in eval_splits or []:
        if split not in available:
            raise ValueError(f"trainer.eval_splits: {split!r} is not a split of dataset "
                             f"{ctx.data.name!r} (available: {sorted(available)})")
    weighting = ctx.choices.get("weighting", type(ctx.weighting).__name__)
    if ctx.weighting.needs_representation:
        _ = ctx.model.representation_key  # soft-sharing models raise a clear error here, before training
    if ctx.weighting.needs_reference_losses and not ctx.distiller.provides_reference_losses:
        raise ValueError(
            f"weighting {type(ctx.weighting).__name__} needs teacher losses, but kd="
            f"{ctx.choices.get('kd', type(ctx.distiller).__name__)} provides none; use kd=okd "
            f"(online teachers) or another weighting")
    if compiled and ctx.weighting.needs_representation:
        raise ValueError(
            f"trainer.compile=true with weighting {weighting}: this method backpropagates to the shared "
            f"representation first and through the encoder afterwards, but a compiled network is one autograd "
            f"node that can only be differentiated as a whole; use trainer.compile=false or the method's "
            f"parameter-level variant")


def check_settings(*, epochs: Any, batch_size: Any, eval_batch_size: Any, num_workers: Any, log_every_n_steps: Any,
                   checkpoint_every_n_steps: Any, log_images: Any, threads: Any, resume: Any, compile: Any) -> None:
    """The trainer's own arguments (conf/trainer/default.yaml), each with the values it accepts."""
    for name, value in (("epochs", epochs), ("batch_size", batch_size), ("log_every_n_steps", log_every_n_steps),
                        ("eval_batch_size", eval_batch_size or 1)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"trainer.{name} must be a positive integer, got {value!r}")
    if num_workers < 0:
        raise ValueError(f"trainer.num_workers must be >= 0, got {num_workers}")
    if not isinstance(checkpoint_every_n_steps, int) or checkpoint_every_n_steps < 0:
        raise ValueError(f"trainer.checkpoint_every_n_steps must be an integer >= 0 (0: at epoch ends "
                         f"only), got {checkpoint_every_n_steps!r}")
    if not isinstance(log_images, int) or log_images < 0:
        raise ValueError(f"trainer.log_images must be an integer >= 0, got {log_images!r}")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ValueError(f"trainer.threads must be a positive integer or null (null: what the machine or "
                         f"launcher gives this job: OMP_NUM_THREADS, SLURM's cpus-per-task, the usable cores), "
                         f"got {threads!r}")
    if resume not in (True, False, "auto"):
        raise ValueError(f"trainer.resume must be true, false or auto, got {resume!r}")
    if not isinstance(compile, (bool, Mapping)):
        raise ValueError(f"trainer.compile must be true, false or a dict of torch.compile arguments "
                         f"(e.g. {{mode: max-autotune}}), got {compile!r}")
