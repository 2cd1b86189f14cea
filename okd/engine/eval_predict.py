"""``mode=eval`` and ``mode=predict``: use a trained checkpoint without training.

Both build the same objects as training (so the checkpoint is checked against the configured
backbone, tasks and class count), load the weights with ``weights_only=True`` and run under
``torch.inference_mode``.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from okd import distributed
from okd.engine.checkpoint import load_checkpoint, load_model_weights
from okd.engine.trainer import RunContext, Trainer
from okd.logging import atomic_write_text, console, writable_dir
from okd.tasks import metric_directions


def _load(trainer: Trainer, ctx: RunContext, ckpt: str | None) -> tuple[dict[str, Any], Path]:
    if not ckpt:
        raise ValueError("this mode needs a checkpoint: add ckpt=<path to last.pt or best.pt> or "
                         "ckpt=wandb:<entity>/<project>/<artifact>:<alias>")
    path = Path(ckpt)
    trainer.setup_model(ctx)  # no optimizer, weighting, distiller or training loader: only the model
    writable_dir(Path(ctx.run_dir))  # eval.json / predictions/ land there: refused before any work
    state = load_checkpoint(path, map_location=trainer.device)
    load_model_weights(ctx, state, path)
    return state, path


def evaluate_checkpoint(trainer: Trainer, ctx: RunContext, ckpt: str | None, split: str | None,
                        source: str | None = None) -> dict[str, Any]:
    """Evaluate on one split (or every evaluation split); compare with the training-time numbers.
    ``source``: what ``ckpt=`` named, when not the file itself (a W&B artifact reference)."""
    state, path = _load(trainer, ctx, ckpt)
    splits = [split] if split else (trainer.eval_splits or list(ctx.data.eval_splits))
    for s in splits:
        if s not in ctx.data.eval_splits:
            raise ValueError(f"eval_split={s!r} is not an evaluation split of {ctx.data.name!r} "
                             f"(available: {sorted(ctx.data.eval_splits)})")
    results = {s: trainer.evaluate(trainer.eval_loader(s), s) for s in splits}
    recorded = state.get("metrics") or {}
    comparison = {s: compare_metrics(results[s], recorded.get(s)) for s in splits}
    out = {"checkpoint": str(path), "epoch": state.get("epoch"), "metrics": results,
           "matches_training_time_metrics": comparison, "comparison_tolerance": {"rel": REL_TOL, "abs": ABS_TOL}}
    if source and source != str(ckpt):
        out["checkpoint_ref"] = source
    if not distributed.is_main():
        return out  # under torchrun every process evaluated a shard; rank 0 reports the split
    atomic_write_text(Path(ctx.run_dir) / "eval.json", json.dumps(out, indent=2) + "\n")
    for s in splits:
        cells = "  ".join(f"{k} {v:.4g}" for k, v in results[s].items())
        console.info(f"eval {s} (epoch {state.get('epoch')}): {cells}")
        console.info(f"  training-time metrics of this checkpoint: {comparison[s]}")
    console.info(f"written: {Path(ctx.run_dir) / 'eval.json'}")
    track_evaluation(ctx, out, state, source or str(path), split)
    return out


def track_evaluation(ctx: RunContext, out: dict[str, Any], state: dict[str, Any], ckpt: str,
                     split: str | None) -> None:
    """One tracker run (``mode=eval``: job type eval) after eval.json is written: config = the
    checkpoint's method, choices and seed plus the ckpt reference, the evaluated run's tracker id and the
    checkpoint's epoch; summary = ``<split>/<task>/<metric>`` (the training run's keys) and
    ``checkpoint_epoch``; one table per split (``<split>/eval``: metric, value, value at training time,
    higher is better). A tracker failure is one warning: eval.json holds every number."""
    from okd.logging import NullLogger, tracker_config

    logger = ctx.logger
    if isinstance(logger, NullLogger):
        return
    config = tracker_config(state.get("config") or {}, state.get("choices") or {})
    config.update({"ckpt": ckpt, "checkpoint": out["checkpoint"], "checkpoint_epoch": out["epoch"],
                   "eval_split": split, "evaluated_run": state.get("wandb_id")})
    try:
        logger.start(Path(ctx.run_dir), config)
    except Exception as err:  # noqa: BLE001  (the tracker's own failure, whatever its type)
        console.warning(f"okd: warning: the tracker could not start ({type(err).__name__}: {err}); the evaluation "
                        f"is in {Path(ctx.run_dir) / 'eval.json'}")
        return
    directions = metric_directions(ctx.tasks)
    recorded = state.get("metrics") or {}
    try:
        summary: dict[str, Any] = {"checkpoint_epoch": out["epoch"]}
        tables = {}
        for s, values in out["metrics"].items():
            summary.update({f"{s}/{k}": v for k, v in values.items()})
            summary[f"{s}/matches_training_time_metrics"] = out["matches_training_time_metrics"][s]
            then = recorded.get(s) or {}
            tables[f"{s}/eval"] = (["metric", "value", "training_time", "higher_is_better"],
                                   [[k, v, then.get(k), directions.get(k)] for k, v in values.items()])
        logger.log_tables(tables)
        logger.summary(summary)
        console.info(f"tracker: {logger.describe()}")
    finally:
        logger.finish(0)


#: When recomputed metrics count as the recorded ones. Another thread count, machine or GPU kernel sums
#: the same float32 values in another order: the results differ by a few float32 ulps (eps 1.2e-7),
#: relative. rel 1e-5 (about 100 ulps) covers that, and is far below what another model, split or
#: metric definition changes; abs 1e-8 covers values at zero (a "within" percentage of 0).
#: TF32 convolutions on recent GPUs or an argmax flipped by rounding can exceed it: then "differ"
#: names the metric, and the size of the difference says which it is.
REL_TOL, ABS_TOL = 1e-5, 1e-8


def compare_metrics(now: dict[str, float], then: dict[str, float] | None,
                    rel: float = REL_TOL, abs_: float = ABS_TOL) -> str:
    """``identical``, ``equal within rel .. / abs ..`` or ``differ beyond ...``, naming the metric
    furthest from its recorded value (relative to what the tolerance allows)."""
    if not then:
        return "not recorded in the checkpoint"
    keys = [k for k in now if k in then]
    if all(now[k] == then[k] or (_nan(now[k]) and _nan(then[k])) for k in keys):
        return "identical"
    tolerance = f"rel {rel:g} / abs {abs_:g}"
    worst = max(keys, key=lambda k: _excess(now[k], then[k], rel, abs_))
    where = f"{worst} {then[worst]!r} at training time, {now[worst]!r} now"
    if _excess(now[worst], then[worst], rel, abs_) <= 1:
        return f"equal within {tolerance} (largest difference: {where})"
    return f"differ beyond {tolerance} (largest: {where})"


def _nan(value: float) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _excess(a: float, b: float, rel: float, abs_: float) -> float:
    """|a - b| in units of the allowed difference (math.isclose's rule): <= 1 is within tolerance."""
    if a == b or (_nan(a) and _nan(b)):
        return 0.0
    if _nan(a) or _nan(b):
        return math.inf
    return abs(a - b) / max(rel * max(abs(a), abs(b)), abs_)


def predict_checkpoint(trainer: Trainer, ctx: RunContext, ckpt: str | None, spec: str | None) -> list[Path]:
    """Write per-input predictions (.npz) and PNG panels to <run dir>/predictions/."""
    from okd.predict import collect_inputs, write_predictions

    if not spec:
        raise ValueError("mode=predict needs input=<image file | folder | split:<name>>")
    if distributed.is_distributed():
        raise ValueError("mode=predict runs in one process: start it with `python run.py`, not torchrun")
    _load(trainer, ctx, ckpt)
    size = ctx.data.info.get("height"), ctx.data.info.get("width")
    splits = {"train": ctx.data.train, **ctx.data.eval_splits}
    inputs = collect_inputs(spec, splits, size=size if all(size) else None)
    out_dir = Path(ctx.run_dir) / "predictions"
    written = write_predictions(ctx.model, ctx.tasks, inputs, out_dir, trainer.device,
                                batch_size=trainer.eval_batch_size, class_names=ctx.data.info.get("class_names"),
                                depth_unit=ctx.data.info.get("depth_unit"))
    console.info(f"predictions for {len(inputs)} input(s) written to {out_dir}")
    return written
