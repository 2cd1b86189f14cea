"""Checks across the objects of a run, made before any training: one clear message naming the keys
to change (each object checks its own arguments when it is built)."""
from __future__ import annotations

from typing import Any, Sequence


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
