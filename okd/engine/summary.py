"""The run summary: what ``summary.json`` holds, built once at the end of a fit from the recorded rows.

* :func:`selections`: the report split's numbers under three model-selection rules (the best epoch on
  the selection split, the last epoch, the mean of the last N epochs), with the teachers' numbers of
  the same epochs kept apart (OKD);
* :func:`deltas`: Δm/Δp of every selection against the single-task base (docs/metrics.md);
* :func:`flat`: the summary's flat form for the tracker's summary columns.

:func:`build` assembles the whole summary, an :class:`okd.results.RunSummary` (what ``summary.json``
holds, every key documented there), from these and the run's own facts.

Keys of the student's metrics are ``<task>/<metric>``; teacher rows carry ``teacher/<task>/<metric>``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from okd import metrics as mtl
from okd.results import Best, Deltas, DeltaResult, RunSummary, Selection, Tracker, as_summary


def selections(rows: Sequence[Mapping[str, Any]], report_split: str, best: Mapping[str, Any] | None,
               last_n: int) -> dict[str, Selection]:
    """Report-split numbers of the best epoch (chosen on the selection split), the last epoch, and
    the mean of the last ``last_n`` epochs (the SegNet benchmark protocol); {} without any."""
    history = [r for r in rows if r.get("split") == report_split]
    if not history:
        return {}
    tail = history[-last_n:]
    keys = [k for k in tail[-1] if is_metric(k)]
    out = {"last": Selection(epoch=history[-1]["epoch"], split=report_split, metrics=_pick(history[-1]),
                             teacher_metrics=_teacher_mean([history[-1]])),
           "last_n_mean": Selection(epochs=[r["epoch"] for r in tail], last_n=last_n, split=report_split,
                                    metrics={k: sum(r[k] for r in tail) / len(tail) for k in keys},
                                    teacher_metrics=_teacher_mean(tail))}
    if best is not None:
        best_row = next(r for r in history if r["epoch"] == best["epoch"])
        out["best"] = Selection(epoch=best["epoch"], split=report_split, chosen_on=best["split"],
                                monitor=best["monitor"], metrics=_pick(best_row),
                                teacher_metrics=_teacher_mean([best_row]))
    return out


def deltas(chosen: Mapping[str, Selection], *, tasks: Sequence[str], dataset: str, backbone: str | None,
           run_dir: Path, delta: Mapping[str, Any], directions: Mapping[str, bool]) -> Deltas:
    """Δm/Δp of each selection in ``chosen`` against the base :func:`okd.metrics.resolve_base` finds
    (the run's own teachers first); the base and why there is none are recorded."""
    if len(tasks) < 2:
        return Deltas(reason="single-task run: it is a baseline itself")
    if not chosen:
        return Deltas(reason="no evaluation of the report split")
    headline = delta.get("selection", "best")
    if headline not in chosen:
        headline = "last"
    base = mtl.resolve_base(
        run_dir=run_dir, tasks=list(tasks), dataset=dataset, backbone=backbone,
        teacher_values=chosen[headline].teacher_metrics or {}, stl_runs=delta.get("stl_runs") or [],
        reference=delta.get("reference"),
    )
    if base is None:
        return Deltas(reason="no single-task base: no teachers in this run, no delta.stl_runs, "
                             "no delta.reference, no finished single-task run in this sweep")
    out = Deltas(definition=dict(mtl.DEFINITION), base=base, headline=headline)
    for name, sel in chosen.items():
        # teachers: each selection against the teachers' numbers of the same epochs
        base_values = (sel.teacher_metrics or {}) if base.kind == "teachers" else base.values
        try:
            out.results[name] = DeltaResult(**mtl.deltas(sel.metrics, base_values, directions))
        except ValueError as err:
            out.results[name] = DeltaResult(error=str(err))
    return out


def build(ctx: Any, *, rows: Sequence[Mapping[str, Any]], best: Mapping[str, Any] | None,
          last: Mapping[str, Mapping[str, float]], epochs: int, device: Any, directions: Mapping[str, bool],
          skipped_steps: int, seconds: float, epoch_times: Sequence[float]) -> RunSummary:
    """The whole summary of a finished fit of ``ctx`` (an ``okd.engine.trainer.RunContext``)."""
    chosen = selections(rows, ctx.data.report_split, best, ctx.selection.last_n)
    delta = deltas(chosen, tasks=[t.name for t in ctx.tasks], dataset=ctx.data.name,
                   backbone=ctx.choices.get("backbone"), run_dir=ctx.run_dir,
                   delta={**ctx.delta, "selection": ctx.selection.headline}, directions=directions)
    return RunSummary(
        run_dir=str(ctx.run_dir),
        dataset=ctx.data.name,
        tasks=[t.name for t in ctx.tasks],
        choices=dict(ctx.choices),
        seed=ctx.seed,
        epochs=epochs,
        device=str(device),
        num_parameters=ctx.model.num_parameters(),
        select_split=ctx.selection.split,
        report_split=ctx.data.report_split,
        depth_unit=ctx.data.info.get("depth_unit"),  # okd.report labels depth numbers with it
        final={s: dict(r) for s, r in last.items()},
        best=Best.from_dict(best) if best is not None else None,
        skipped_steps=skipped_steps,
        selection=chosen,
        delta=delta,
        time_s=seconds,
        epoch_time_s_mean=sum(epoch_times) / len(epoch_times) if epoch_times else None,
        wandb=Tracker(id=ctx.logger.run_id, where=ctx.logger.describe()),
    )


def flat(summary: RunSummary | Mapping[str, Any]) -> dict[str, Any]:
    """Tracker summary keys: final/<split>/<metric>, best/<split>/<metric>, best/epoch, delta_m/best, ..."""
    summary = as_summary(summary)
    out: dict[str, Any] = {}
    for split, values in summary.final.items():
        for k, v in values.items():
            out[f"final/{split}/{k}"] = v
    if summary.best is not None:
        out["best/epoch"] = summary.best.epoch
        for split, values in summary.best.metrics.items():
            for k, v in values.items():
                out[f"best/{split}/{k}"] = v
    for name, sel in summary.selection.items():
        for k, v in sel.metrics.items():
            out[f"{name}/{sel.split}/{k}"] = v
    delta = summary.delta or Deltas()
    for name in ("best", "last", "last_n_mean"):
        result = delta.results.get(name)
        for k, v in (result.to_dict() if result else {}).items():
            if isinstance(v, float):
                out[f"{k}/{name}"] = v  # e.g. delta_m/best: W&B columns to compare runs by
    if delta.base is not None:
        out["delta_base"] = delta.base.source
        if delta.base.kind is not None:  # teachers | stl_runs | sweep | reference: a column to filter runs by
            out["delta_base_kind"] = delta.base.kind
    out["num_parameters"] = summary.num_parameters
    out["epoch_time_s_mean"] = summary.epoch_time_s_mean
    return out


def is_metric(key: str) -> bool:
    """``<task>/<metric>`` keys of the student (not losses, weights or teacher rows)."""
    return "/" in key and not key.startswith(("loss", "weight/", "teacher/"))


def _pick(row: Mapping[str, Any]) -> dict[str, float]:
    return {k: v for k, v in row.items() if is_metric(k)}


def _teacher_mean(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    keys = [k for k in rows[-1] if k.startswith("teacher/") and not k.startswith("teacher/loss")
            and k.count("/") == 2]
    return {k[len("teacher/"):]: sum(r[k] for r in rows) / len(rows) for k in keys
            if all(isinstance(r.get(k), (int, float)) for r in rows)}
