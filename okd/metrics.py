"""Multi-task performance against single-task baselines: delta_m and delta_p (docs/metrics.md).

Two definitions are in use and rank methods differently, so both are computed and reported, in
percent, with **positive = better than the base** (CAGrad/Nash-MTL/FAMO print the negative of
delta_m: a drop is positive there):

* ``delta_m`` (per metric): 100 * mean over metrics m of s_m (M_m - B_m) / B_m;
* ``delta_p`` (per task, Maninis et al. 2019 / LibMTL): the same signed relative change averaged
  over the metrics of each task first, then over tasks.

s_m = +1 when higher is better, -1 otherwise. Metric keys are ``"<task>/<metric>"``. Definitions, an
example and the order of the bases: docs/metrics.md#delta_m-and-delta_p.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping

from okd.results import Base, MissingSummary, SummaryError, read_summary

DEFINITION = {
    "delta_m": "100 * mean_m s_m (M_m - B_m) / B_m over all metrics; positive = better than the base",
    "delta_p": "100 * mean over tasks of (mean over the task's metrics of s_m (M_m - B_m) / B_m); "
               "positive = better than the base",
}


def relative_changes(values: Mapping[str, float], base: Mapping[str, float],
                     higher_is_better: Mapping[str, bool]) -> dict[str, float]:
    """Signed relative change s_m (M_m - B_m) / B_m of every metric present in all three maps."""
    changes = {}
    for key, hib in higher_is_better.items():
        if key not in values or key not in base:
            continue
        b = float(base[key])
        if b == 0 or not math.isfinite(b):
            raise ValueError(f"base value of {key} is {b}: relative change undefined")
        changes[key] = (1.0 if hib else -1.0) * (float(values[key]) - b) / abs(b)
    return changes


def delta_m(values: Mapping[str, float], base: Mapping[str, float],
            higher_is_better: Mapping[str, bool]) -> float:
    changes = relative_changes(values, base, higher_is_better)
    if not changes:
        raise ValueError("no metric is shared by the results and the base")
    return 100.0 * sum(changes.values()) / len(changes)


def delta_p(values: Mapping[str, float], base: Mapping[str, float],
            higher_is_better: Mapping[str, bool]) -> float:
    changes = relative_changes(values, base, higher_is_better)
    if not changes:
        raise ValueError("no metric is shared by the results and the base")
    per_task: dict[str, list[float]] = {}
    for key, change in changes.items():
        per_task.setdefault(key.split("/", 1)[0], []).append(change)
    return 100.0 * sum(sum(v) / len(v) for v in per_task.values()) / len(per_task)


def deltas(values: Mapping[str, float], base: Mapping[str, float],
           higher_is_better: Mapping[str, bool]) -> dict[str, float]:
    return {"delta_m": delta_m(values, base, higher_is_better),
            "delta_p": delta_p(values, base, higher_is_better)}


# ---------------------------------------------------------------------------------------------
# Which single-task numbers a run is compared with
# ---------------------------------------------------------------------------------------------
def stl_values_from_runs(run_dirs, selection: str = "best") -> dict[str, float]:
    """Merge the report-split metrics of single-task runs (one per task) into one base."""
    values: dict[str, float] = {}
    for run_dir in run_dirs:
        try:
            summary = read_summary(run_dir)
        except MissingSummary:
            raise FileNotFoundError(f"delta.stl_runs: no summary.json in {run_dir}") from None
        except SummaryError as err:
            raise ValueError(f"delta.stl_runs: {err}") from None
        if not summary.single_task:
            raise ValueError(f"delta.stl_runs: {run_dir} trained tasks {summary.tasks}; "
                             f"a single-task run is expected")
        if selection not in summary.selection:
            raise ValueError(f"delta.stl_runs: {run_dir} has no '{selection}' model selection "
                             f"(selections: {sorted(summary.selection)})")
        task = summary.tasks[0]
        values.update({k: v for k, v in summary.metrics(selection).items() if k.startswith(task + "/")})
    return values


def sweep_stl_values(run_dir, dataset: str, backbone: str | None, tasks, selection: str = "best") -> tuple[dict, list]:
    """Single-task runs already finished in the same multirun (siblings of ``run_dir``): per metric, the
    mean over those runs (every seed of the sweep, as the comparison report averages them)."""
    collected: dict[str, list[float]] = {}
    used: list[str] = []
    parent = Path(run_dir).resolve().parent
    if not (parent / "multirun.yaml").is_file():
        return {}, used  # not a Hydra sweep: sibling dirs are unrelated runs (e.g. the same day's)
    for path in sorted(parent.glob("*/summary.json")):
        if path.parent == Path(run_dir).resolve():
            continue
        try:
            summary = read_summary(path)
        except SummaryError:
            continue  # not a finished okd run (e.g. a folder of another tool): not a base
        if (summary.single_task and summary.tasks[0] in tasks and summary.dataset == dataset
                and summary.backbone == backbone and selection in summary.selection):
            task = summary.tasks[0]
            for key, value in summary.metrics(selection).items():
                if key.startswith(task + "/"):
                    collected.setdefault(key, []).append(value)
            used.append(str(path.parent))
    return {key: sum(v) / len(v) for key, v in collected.items()}, used


def resolve_base(*, run_dir, tasks, dataset: str, backbone: str | None, teacher_values: Mapping[str, float],
                 stl_runs, reference: Mapping[str, float] | None, selection: str = "best") -> Base | None:
    """The base of delta_m/delta_p, by priority: this run's teachers (OKD), single-task runs given by
    path, single-task runs finished in the same sweep, published reference numbers from config.
    ``kind`` (teachers | stl_runs | sweep | reference) says which, for programs; ``source`` for people."""
    if teacher_values:
        return Base("teachers", "teachers of this run (single-task networks trained alongside)", dict(teacher_values))
    if stl_runs:
        return Base("stl_runs", f"single-task runs {list(map(str, stl_runs))}", stl_values_from_runs(stl_runs, selection))
    values, used = sweep_stl_values(run_dir, dataset, backbone, tasks, selection)
    if values:
        return Base("sweep", f"single-task runs of the same sweep {used}", values)
    if reference:
        return Base("reference", "reference numbers from config (delta.reference)", dict(reference))
    return None
