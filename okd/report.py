"""Comparison report: one row per method, mean ± std over seeds, Δm/Δp against single-task runs.

``python -m okd.report <dirs...> [--out DIR] [--selection best|last|last_n_mean] [--base-runs DIR...]``

Every directory is searched recursively for ``summary.json`` (run dirs and Hydra multirun dirs
alike), so the report works offline from the run directories alone. Runs are grouped into methods
by what they computed, not by seed: dataset, task list, backbone, weighting, kd, trainer and
experiment presets, and any other command-line override recorded in ``.hydra/overrides.yaml``
(seed, logging and resume switches excluded). Each method gets the mean ± sample standard
deviation (ddof = 1) over its runs of every metric of the chosen model selection, of ``delta_m``
and ``delta_p``, of the epoch time, plus its parameter count and number of seeds.

Δm / Δp (docs/metrics.md#delta_m-and-delta_p, okd/metrics.py) are in percent with **positive =
better than the base**.
The base of each run, in this order:

1. ``--base-runs``: single-task runs given on the command line (every run is recomputed against
   them, so one base serves the whole table);
2. the base the run recorded itself (its OKD teachers, ``delta.stl_runs``, ``delta.reference`` or
   single-task runs that had finished in its sweep): ``summary.json`` -> ``delta.<selection>``;
3. single-task runs found among the given directories (same dataset and backbone, one per task;
   several seeds of one task are averaged), recomputed here with :func:`okd.metrics.deltas`.

Outputs in ``--out``:

* ``report.md`` (table, definitions, the base named once, notes) and ``report.csv`` (full precision);
* ``report.tex``: the table for a paper (booktabs; mean ± std, ↑/↓ per metric, the best value of each
  column in bold: among the multi-task methods, single-task rows being the base; caption with the
  model selection, the base and the settings all runs share);
* ``deltas.png`` / ``deltas.pdf``: Δm and Δp per method sorted by Δm, mean ± std bars, one dot per
  seed, n per bar, with the model selection and the base stated;
* ``curves.png`` / ``curves.pdf``: per task, the training loss and the selection split's first
  metric per epoch, mean over seeds with a ± std band, axes with units.

Figures are 7 in wide (a double-column width; 3.5 in for one task), fonts 8 pt or larger, PDF as
vector graphics, PNG at 300 dpi; legends and labels leave out what every run shares (stated once
in the title instead).
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import re
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from okd import metrics as mtl
from okd.results import SELECTIONS, RunSummary, SummaryError, read_summary
from okd.tasks import TASK_TYPES, metric_directions

#: "<task>/<metric>" -> higher is better (okd.tasks), in the display order of the tables.
DIRECTIONS = metric_directions()
TASK_ORDER = tuple(t.name for t in TASK_TYPES)
#: command-line overrides that do not change what a run computes (or are grouped on separately).
IGNORED_OVERRIDES = ("seed", "name", "sweep", "logger", "trainer.resume", "trainer.progress", "trainer.device",
                     "trainer.num_workers", "trainer.pin_memory", "trainer.persistent_workers",
                     "trainer.log_every_n_steps", "delta", "selection", "reference", "dataset.tasks", "hydra")
#: config groups whose choice is part of a method's identity (``reference`` only picks a base).
CHOICE_GROUPS = ("dataset", "backbone", "weighting", "kd", "trainer", "experiment")
#: "<task>/<metric>" -> (name in figures and tables, unit); "depth" stands for the dataset's depth unit.
METRIC_LABELS = {
    "segmentation/miou": ("mIoU", "%"), "segmentation/pix_acc": ("pixel acc.", "%"),
    "depth/abs_err": ("abs. error", "depth"), "depth/rel_err": ("rel. error", ""),
    "normal/mean": ("mean angle error", "°"), "normal/median": ("median angle error", "°"),
    "normal/within_11.25": ("within 11.25°", "%"), "normal/within_22.5": ("within 22.5°", "%"),
    "normal/within_30": ("within 30°", "%"),
}
#: training loss of each task (okd/tasks.py) and its unit ("depth": the dataset's depth unit).
LOSS_LABELS = {"segmentation": ("cross-entropy", ""), "depth": ("L1", "depth"), "normal": ("1 − cos", "")}
#: summary.json's ``depth_unit`` (the dataset's ``info``) -> unit symbol; datasets of older summaries by name.
DEPTH_UNITS = {"metres": "m", "meters": "m", "m": "m", "disparity": "disparity"}
DATASET_DEPTH_UNITS = {"nyuv2": "metres", "synthetic": "metres", "cityscapes": "disparity"}
#: figure sizes (inches): a double-column and a single-column width; fonts are 8 pt or larger.
FIGURE_WIDTH, COLUMN_WIDTH = 7.0, 3.5
PNG_DPI = 300


# ---------------------------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------------------------
@dataclass
class RunRecord:
    """What the report needs from one finished run directory: its summary (okd.results) and the
    numbers of the reported model selection."""

    path: Path
    summary: RunSummary
    metrics: dict[str, float]
    extras: tuple[str, ...] = ()

    @property
    def seed(self) -> Any:
        return self.summary.seed

    @property
    def dataset(self) -> str:
        return str(self.summary.dataset)

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self.summary.tasks)

    @property
    def choices(self) -> dict:
        return self.summary.choices

    @property
    def backbone(self) -> str | None:
        return self.choices.get("backbone")

    @property
    def single_task(self) -> bool:
        return len(self.tasks) == 1

    @property
    def select_split(self) -> str | None:
        """The split the best epoch is chosen on (the report split where a dataset has no other)."""
        best = self.summary.selection.get("best")
        return (self.summary.select_split or (best.chosen_on if best else None)
                or (self.summary.best.split if self.summary.best else None))

    @property
    def depth_unit(self) -> str | None:
        """Unit symbol of depth values (``m``, ``disparity``) or None when unknown."""
        unit = self.summary.depth_unit or DATASET_DEPTH_UNITS.get(self.dataset)
        return DEPTH_UNITS.get(str(unit), str(unit)) if unit else None

    def method_key(self) -> tuple:
        choices = tuple(self.choices.get(g) for g in CHOICE_GROUPS if g != "dataset")
        return (self.dataset, self.tasks, *choices, self.extras)


def find_runs(dirs: Iterable[str | Path], selection: str) -> tuple[list[RunRecord], list[str]]:
    """Every run under ``dirs`` (recursively) with a summary carrying ``selection``; notes on skips."""
    runs, notes, seen = [], [], set()
    for d in dirs:
        root = Path(d)
        if not root.exists():
            raise FileNotFoundError(f"okd.report: {root} does not exist (expected a run dir or a multirun dir)")
        paths = [root / "summary.json"] if (root / "summary.json").is_file() else sorted(root.rglob("summary.json"))
        if not paths:
            raise FileNotFoundError(f"okd.report: no summary.json under {root}; expected finished run dirs "
                                    f"(python run.py ... writes <run dir>/summary.json at the end of training)")
        for path in paths:
            key = path.resolve()
            if key in seen:
                continue
            seen.add(key)
            run, why = load_run(path.parent, selection)
            if run is None:
                notes.append(f"skipped {path.parent}: {why}")
            else:
                runs.append(run)
    return runs, notes


def load_run(run_dir: Path, selection: str) -> tuple[RunRecord | None, str]:
    """One run dir as a :class:`RunRecord`, or ``None`` and the reason it cannot be used."""
    try:
        summary = read_summary(run_dir)
    except SummaryError as err:
        return None, err.reason
    chosen = summary.selection.get(selection)
    if not chosen:
        return None, f"no '{selection}' model selection recorded (selections: {sorted(summary.selection)})"
    values = {k: float(v) for k, v in chosen.metrics.items() if isinstance(v, (int, float))}
    return RunRecord(run_dir, summary, values, _extra_overrides(run_dir)), ""


def _extra_overrides(run_dir: Path) -> tuple[str, ...]:
    """Command-line overrides that change the computation, from Hydra's ``.hydra/overrides.yaml``."""
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return ()
    import yaml

    try:
        items = yaml.safe_load(path.read_text()) or []
    except yaml.YAMLError:
        return ()
    kept = []
    for item in items:
        key = str(item).split("=", 1)[0].lstrip("+~")
        if key in CHOICE_GROUPS or any(key == k or key.startswith(k + ".") for k in IGNORED_OVERRIDES):
            continue
        kept.append(str(item).lstrip("+"))
    return tuple(sorted(kept))


# ---------------------------------------------------------------------------------------------
# Bases and deltas
# ---------------------------------------------------------------------------------------------
@dataclass
class Base:
    """Single-task numbers for one (dataset, backbone): per-task means over the runs found.
    ``kind`` as in ``okd.results.Base`` (always ``stl_runs`` here); ``source`` for people."""

    values: dict[str, float]
    source: str
    tasks: set[str] = field(default_factory=set)
    kind: str = "stl_runs"


def stl_bases(runs: Sequence[RunRecord], origin: str) -> dict[tuple, Base]:
    """Single-task runs grouped by (dataset, backbone); several runs of a task are averaged."""
    per_key: dict[tuple, dict[str, list[RunRecord]]] = {}
    for run in runs:
        if run.single_task:
            per_key.setdefault((run.dataset, run.backbone), {}).setdefault(run.tasks[0], []).append(run)
    bases = {}
    for key, by_task in per_key.items():
        values: dict[str, float] = {}
        for task, task_runs in by_task.items():
            keys = {k for r in task_runs for k in r.metrics if k.startswith(task + "/")}
            for k in keys:
                vals = [r.metrics[k] for r in task_runs if k in r.metrics]
                values[k] = sum(vals) / len(vals)
        counts = ", ".join(f"{t} x{len(r)}" for t, r in sorted(by_task.items(), key=lambda kv: _task_rank(kv[0])))
        bases[key] = Base(values, f"single-task runs {origin} ({key[0]}, {key[1]}: {counts}; seeds averaged)",
                          set(by_task))
    return bases


def run_deltas(run: RunRecord, selection: str, bases: Mapping[tuple, Base],
               forced: bool) -> tuple[dict[str, float] | None, str | None]:
    """(delta_m, delta_p) of a multi-task run and the name of its base, or (None, reason)."""
    if run.single_task:
        return None, None
    stored = run.summary.delta.get(selection) if run.summary.delta is not None else None
    if not forced and stored is not None:
        return {"delta_m": float(stored.delta_m), "delta_p": float(stored.delta_p)}, run.summary.delta.base.source
    base = bases.get((run.dataset, run.backbone))
    if base is None:
        return None, (f"no base: --base-runs has no single-task run of {run.dataset} with {run.backbone}" if forced
                      else NO_BASE)
    missing = [t for t in run.tasks if t not in base.tasks]
    if missing:
        return None, f"no base: the {base.source} have no run of {', '.join(missing)}"
    directions = {k: v for k, v in DIRECTIONS.items() if k.split("/", 1)[0] in run.tasks}
    try:
        return mtl.deltas(run.metrics, base.values, directions), base.source
    except ValueError as err:
        return None, f"no delta: {err} (base: {base.source})"


#: why a run has no Δ when neither it nor the report's directories have any single-task numbers
NO_BASE = "no base: no single-task run of this dataset/backbone found"


# ---------------------------------------------------------------------------------------------
# Rows
# ---------------------------------------------------------------------------------------------
@dataclass
class MethodRow:
    """One method: its runs and their per-seed numbers."""

    name: str
    runs: list[RunRecord]
    deltas: list[dict[str, float]] = field(default_factory=list)
    bases: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: what tells rows of the same name apart (``[weighting=ew]``), part of ``name`` and ``label``
    tag: str = ""
    #: the name in figures and the LaTeX table: without what every row shares (see :func:`short_labels`)
    label: str = ""

    @property
    def first(self) -> RunRecord:
        return self.runs[0]

    def seeds(self) -> list:
        return [r.seed for r in self.runs]

    def metric(self, key: str) -> tuple[float, float | None] | None:
        vals = [r.metrics[key] for r in self.runs if key in r.metrics]
        return mean_std(vals) if vals else None

    def delta(self, key: str) -> tuple[float, float | None] | None:
        vals = [d[key] for d in self.deltas]
        return mean_std(vals) if vals else None

    def epoch_time(self) -> tuple[float, float | None] | None:
        vals = [float(r.summary.epoch_time_s_mean) for r in self.runs
                if isinstance(r.summary.epoch_time_s_mean, (int, float))]
        return mean_std(vals) if vals else None

    def parameters(self) -> int | None:
        vals = [int(r.summary.num_parameters) for r in self.runs if r.summary.num_parameters]
        return round(sum(vals) / len(vals)) if vals else None


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (ddof = 1; None for a single value)."""
    values = [float(v) for v in values]
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def group_methods(runs: Sequence[RunRecord]) -> list[MethodRow]:
    groups: dict[tuple, list[RunRecord]] = {}
    for run in runs:
        groups.setdefault(run.method_key(), []).append(run)
    datasets = {r.dataset for r in runs}
    mtl_task_sets = {r.tasks for r in runs if not r.single_task}
    rows = [MethodRow(method_name(rs[0], len(datasets) > 1, len(mtl_task_sets) > 1),
                      sorted(rs, key=lambda r: (str(r.seed), str(r.path)))) for rs in groups.values()]
    _disambiguate(rows)
    # single-task baselines first, then methods by name
    rows.sort(key=lambda row: (not row.first.single_task, row.first.dataset, row.name))
    return rows


def _disambiguate(rows: Sequence[MethodRow]) -> None:
    """Rows that share a name (e.g. single-task runs of two weightings) get the choices that differ."""
    by_name: dict[str, list[MethodRow]] = {}
    for row in rows:
        by_name.setdefault(row.name, []).append(row)
    for name, same in by_name.items():
        if len(same) < 2:
            continue
        differing = [g for g in CHOICE_GROUPS if len({str(r.first.choices.get(g)) for r in same}) > 1]
        for i, row in enumerate(same):
            tags = [f"{g}={row.first.choices.get(g)}" for g in differing] or [f"#{i + 1}"]
            row.tag = f" [{', '.join(tags)}]"
            row.name = name + row.tag


def short_labels(rows: Sequence[MethodRow]) -> list[str]:
    """Set every row's ``label``: its name without what all rows share; returns what they share.

    Left out when every row has it (and stated once by the caller, e.g. in a title): each
    command-line override, the backbone, and the kd choice of the multi-task rows (where there are
    two or more). E.g. ``segnet / dwa / kd-none (trainer.epochs=6)`` becomes ``dwa`` with
    ``["segnet", "kd-none", "trainer.epochs=6"]`` shared.
    """
    if not rows:
        return []
    runs = [row.first for row in rows]
    shared_extras = [e for e in runs[0].extras if all(e in r.extras for r in runs)]
    backbones = {str(r.backbone) for r in runs}
    multi = [r for r in runs if not r.single_task]
    kds = {str(r.choices.get("kd")) for r in multi}
    hide_kd = len(multi) > 1 and len(kds) == 1
    hide_backbone = len(backbones) == 1
    shared = ([next(iter(backbones))] if hide_backbone else []) + ([f"kd-{next(iter(kds))}"] if hide_kd else [])
    datasets = {r.dataset for r in runs}
    mtl_task_sets = {r.tasks for r in multi}
    for row in rows:
        row.label = method_name(row.first, len(datasets) > 1, len(mtl_task_sets) > 1,
                                with_backbone=not hide_backbone, with_kd=not hide_kd,
                                hide_extras=shared_extras) + row.tag
    return shared + shared_extras


def method_name(run: RunRecord, with_dataset: bool, with_tasks: bool, *, with_backbone: bool = True,
                with_kd: bool = True, hide_extras: Sequence[str] = ()) -> str:
    """Readable method name, e.g. ``segnet / dwa / kd-none`` or ``segnet / STL depth``."""
    c = run.choices
    parts = [run.dataset] if with_dataset else []
    if with_backbone:
        parts.append(str(c.get("backbone", "?")))
    if run.single_task:
        parts.append(f"STL {run.tasks[0]}")
    else:
        parts.append(str(c.get("weighting", "?")))
        if with_kd:
            parts.append(f"kd-{c.get('kd', '?')}")
        if with_tasks:
            parts.append("+".join(run.tasks))
    if c.get("trainer") not in (None, "default"):
        parts.append(f"trainer-{c['trainer']}")
    if c.get("experiment") not in (None, "null"):
        parts.append(f"exp-{c['experiment']}")
    name = " / ".join(parts)
    extras = [e for e in run.extras if e not in hide_extras]
    return f"{name} ({', '.join(extras)})" if extras else name


# ---------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------
@dataclass
class Report:
    rows: list[MethodRow]
    metric_keys: list[str]
    selection: str
    split: str | None
    chosen_on: str | None
    base_sources: list[str]
    notes: list[str]
    files: dict[str, Path] = field(default_factory=dict)
    #: what every row shares and the labels leave out (backbone, kd, overrides): see :func:`short_labels`
    shared: list[str] = field(default_factory=list)
    #: why runs have no Δ: reason -> the runs (said once, in the header of report.md)
    no_delta: dict[str, list[RunRecord]] = field(default_factory=dict)
    #: ``selection.monitor`` of the best-epoch selection (e.g. ``loss``), where recorded
    monitor: str | None = None
    #: ``selection.last_n`` of ``last_n_mean`` (None when unknown or when the runs differ)
    last_n: int | None = None

    def selection_text(self) -> str:
        """How the reported numbers were chosen, e.g. ``model selected on val (best loss), reported on test``."""
        where = f"reported on {self.split}"
        if self.selection == "best":
            how = f" (best {self.monitor})" if self.monitor else ""
            return f"model selected on {self.chosen_on or '?'}{how}, {where}"
        if self.selection == "last":
            return f"last epoch, {where}"
        return f"mean of the last {self.last_n or 'N'} epochs, {where}"

    def depth_unit(self) -> str | None:
        units = {r.depth_unit for row in self.rows for r in row.runs if "depth" in r.tasks}
        return units.pop() if len(units) == 1 else None


def build_report(dirs: Sequence[str | Path], out: str | Path, selection: str = "best",
                 base_runs: Sequence[str | Path] = (), base_origin: str = "given by --base-runs") -> Report:
    """Collect the runs under ``dirs``, compute every row, write md, csv, tex, png and pdf into ``out``.
    ``base_runs``: the single-task runs every row is compared with; ``base_origin``: where they came
    from, as the report states it."""
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
    runs, notes = find_runs(dirs, selection)
    if not runs:
        raise ValueError("okd.report: none of the summaries found can be used:\n  " + "\n  ".join(notes))
    forced = bool(base_runs)
    if forced:
        given, given_notes = find_runs(base_runs, selection)
        notes += given_notes
        if not any(r.single_task for r in given):
            raise ValueError(f"--base-runs: no single-task run under {list(map(str, base_runs))}")
        bases = stl_bases(given, base_origin)
    else:
        bases = stl_bases(runs, "found among the report's directories")
    rows = group_methods(runs)
    no_delta: dict[str, list[RunRecord]] = {}
    for row in rows:
        for run in row.runs:
            values, base = run_deltas(run, selection, bases, forced)
            if values is not None:
                row.deltas.append(values)
                row.bases.append(base)
            elif base:
                no_delta.setdefault(base, []).append(run)
        if row.deltas and len(row.deltas) < len(row.runs):
            row.notes.append(f"{row.name}: Δ over {len(row.deltas)} of {len(row.runs)} runs")
        for seed in {s for s in row.seeds() if row.seeds().count(s) > 1}:
            notes.append(f"{row.name}: seed {seed} appears {row.seeds().count(seed)} times (runs counted separately)")
    base_sources = list(dict.fromkeys(b for row in rows for b in row.bases))
    chosen = [r.summary.selection[selection] for r in runs]
    split = ", ".join(dict.fromkeys(str(c.split) for c in chosen))
    chosen_on = ", ".join(dict.fromkeys(str(c.chosen_on) for c in chosen if c.chosen_on)) or None
    monitors = list(dict.fromkeys(str(c.monitor) for c in chosen if c.monitor))
    report = Report(rows, metric_columns(runs), selection, split, chosen_on,
                    base_sources, notes + [n for row in rows for n in row.notes],
                    shared=short_labels(rows), no_delta=no_delta, monitor=", ".join(monitors) or None)
    if selection == "last_n_mean":
        report.last_n, short = _last_n(rows)
        report.notes += short
    report.notes += identical_methods(rows)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report.files["csv"] = write_csv(report, out / "report.csv")
    report.files["tex"] = write_latex(report, out / "report.tex")
    for name, plot in (("deltas", plot_deltas), ("curves", plot_curves)):
        for suffix in ("png", "pdf"):  # no stale picture from an earlier report in the same folder
            (out / f"{name}.{suffix}").unlink(missing_ok=True)
        png = plot(report, out / f"{name}.png")
        report.files[f"{name}_png"] = png
        report.files[f"{name}_pdf"] = png.with_suffix(".pdf") if png else None
    report.files["md"] = write_markdown(report, out / "report.md")
    return report


def _last_n(rows: Sequence[MethodRow]) -> tuple[int | None, list[str]]:
    """``selection.last_n`` of the runs and notes on methods whose runs had fewer evaluated epochs."""
    counts: dict[str, list[int]] = {}
    ns = set()
    for row in rows:
        for run in row.runs:
            sel = run.summary.selection["last_n_mean"]
            n = sel.last_n or _config_value(run.path, ("selection", "last_n")) or _config_value(run.path, ("delta", "last_n"))
            if n is None:
                continue
            ns.add(int(n))
            averaged = len(sel.epochs or [])
            if averaged < int(n):
                counts.setdefault(row.name, []).append(averaged)
    n = ns.pop() if len(ns) == 1 else None
    if not counts:
        return n, []
    lengths = {k for ks in counts.values() for k in ks}
    if len(counts) == len(rows) and len(lengths) == 1 and sum(map(len, counts.values())) == sum(len(r.runs) for r in rows):
        k = lengths.pop()
        described = f"every run has {k} epoch{'s' if k != 1 else ''}"
    else:
        described = "; ".join(f"{name}: {', '.join(map(str, sorted(set(ks))))} epoch{'s' if max(ks) != 1 else ''}"
                              for name, ks in counts.items())
    return n, [f"`last_n_mean` averages the last {n or 'selection.last_n'} evaluated epochs, but some runs are "
               f"shorter, so their numbers are the mean of all their epochs ({described})"]


def _config_value(run_dir: Path, keys: Sequence[str]) -> Any:
    """A value of the run's composed config (``.hydra/config.yaml``), or None."""
    path = run_dir / ".hydra" / "config.yaml"
    if not path.is_file():
        return None
    import yaml

    try:
        value = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        return None
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def identical_methods(rows: Sequence[MethodRow]) -> list[str]:
    """Notes on pairs of methods whose runs (matched by seed) have exactly the same numbers."""
    notes = []
    for i, a in enumerate(rows):
        for b in rows[i + 1:]:
            if a.first.tasks != b.first.tasks or a.first.dataset != b.first.dataset:
                continue
            pa, pb = _per_seed(a), _per_seed(b)
            if pa is None or pa != pb:
                continue
            note = (f"{a.name} and {b.name} have identical numbers (every metric of every seed): in these "
                    f"runs the two methods computed the same thing")
            weightings = {str(a.first.choices.get("weighting")), str(b.first.choices.get("weighting"))}
            if weightings == {"dwa", "ew"}:
                note += (" (DWA weights every task 1 in its first two epochs, i.e. it is EW there: runs of two "
                         "epochs, or a best epoch of 0 or 1, cannot tell them apart)")
            notes.append(note)
    return notes


def _per_seed(row: MethodRow) -> dict | None:
    seeds = row.seeds()
    if len(set(map(str, seeds))) != len(seeds) or not row.runs[0].metrics:
        return None  # repeated seeds cannot be matched one to one
    return {str(run.seed): run.metrics for run in row.runs}


def metric_columns(runs: Sequence[RunRecord]) -> list[str]:
    keys = {k for r in runs for k in r.metrics}
    order = list(DIRECTIONS)
    return sorted(keys, key=lambda k: (order.index(k) if k in order else len(order), k))


def _task_rank(task: str) -> int:
    return TASK_ORDER.index(task) if task in TASK_ORDER else len(TASK_ORDER)


# ---------------------------------------------------------------------------------------------
# Writers
# ---------------------------------------------------------------------------------------------
def _fmt_parts(stat: tuple[float, float | None] | None, signed: bool = False) -> tuple[str, str | None] | None:
    """(mean, std) as text: the mean to 4 significant digits (Δ: 2 decimals), the std to as many decimals."""
    if stat is None or not math.isfinite(stat[0]):
        return None
    mean, std = stat
    if signed:
        decimals = 2
    else:
        magnitude = math.floor(math.log10(abs(mean))) if mean != 0 else 0
        decimals = min(6, max(0, 3 - magnitude))
    text = f"{mean:+.{decimals}f}" if signed else f"{mean:.{decimals}f}"
    return text, (None if std is None else f"{std:.{decimals}f}")


def fmt(stat: tuple[float, float | None] | None, signed: bool = False) -> str:
    """``mean ± std``: the mean to 4 significant digits (Δ: 2 decimals), the std to as many decimals."""
    parts = _fmt_parts(stat, signed)
    if parts is None:
        return "—"
    return parts[0] if parts[1] is None else f"{parts[0]} ± {parts[1]}"


def fmt_params(n: int | None) -> str:
    if n is None:
        return "—"
    return f"{n / 1e6:.2f}M" if n >= 100_000 else f"{n:,}"


def _arrow(key: str) -> str:
    return "" if key not in DIRECTIONS else (" ↑" if DIRECTIONS[key] else " ↓")


def metric_label(key: str, depth_unit: str | None = None) -> str:
    """Name and unit of a metric for axes and tables, e.g. ``mIoU (%)``, ``abs. error (m)``."""
    name, unit = METRIC_LABELS.get(key, (key.split("/", 1)[-1], ""))
    unit = (depth_unit or "") if unit == "depth" else unit
    return f"{name} ({unit})" if unit else name


def loss_label(task: str, depth_unit: str | None = None) -> str:
    """Axis label of a task's training loss, e.g. ``train loss: L1 (m)``."""
    name, unit = LOSS_LABELS.get(task, ("", ""))
    unit = (depth_unit or "") if unit == "depth" else unit
    text = f"train loss: {name}" if name else "train loss"
    return f"{text} ({unit})" if unit else text


def short_source(source: str) -> str:
    """A base's description without its list of run directories (figures and captions)."""
    return re.sub(r"\[('[^']*'(, )?)+\]", lambda m: f"({m.group(0).count(chr(39)) // 2} run dirs)", source)


def _no_delta_lines(report: Report, has_base: bool) -> list[str]:
    """Why runs have no Δ, each reason once, with the runs it concerns."""
    multi = [r for row in report.rows for r in row.runs if not r.single_task]
    names = {id(r): row.name for row in report.rows for r in row.runs}
    lines = []
    for reason, runs in report.no_delta.items():
        if reason == NO_BASE:
            text = ("no run recorded a base and no single-task runs were found; pass --base-runs"
                    if not has_base else "no single-task run of their dataset and backbone was found")
        else:
            text = reason.split(": ", 1)[1] if reason.startswith(("no base: ", "no delta: ")) else reason
            if reason.startswith("no delta: "):
                text += "; pass --base-runs with other single-task runs, or another --selection"
        methods = ", ".join(dict.fromkeys(names[id(r)] for r in runs))
        who = (f"all {len(runs)} multi-task runs" if len(runs) == len(multi)
               else f"{len(runs)} of {len(multi)} multi-task runs: {methods}")
        lines.append(f"{text} ({who})")
    return lines


def write_markdown(report: Report, path: Path) -> Path:
    refs = {src: f"[{i + 1}]" for i, src in enumerate(report.base_sources)}
    n_runs = sum(len(r.runs) for r in report.rows)
    short_n = any(n.startswith("`last_n_mean` averages") for n in report.notes)
    lines = [
        "# okd comparison report", "",
        f"{n_runs} runs, {len(report.rows)} methods. Numbers on split `{report.split}`, model selection "
        f"`{report.selection}`: {report.selection_text()}"
        + (" (runs shorter than that: the mean of all their epochs, see the notes)" if short_n else "")
        + "; mean ± sample std (ddof = 1) over seeds; ↑/↓: higher/lower is better.", "",
        "**Δm / Δp in percent, positive = better than the single-task base** (CAGrad, Nash-MTL and FAMO "
        "print the negative of Δm, so a drop is positive there).",
        f"- Δm (per metric): {mtl.DEFINITION['delta_m']}.",
        f"- Δp (per task): {mtl.DEFINITION['delta_p']}.", "",
    ]
    why = _no_delta_lines(report, bool(refs))
    if refs:
        lines.append("Base used (column `base`):")
        lines += [f"- {ref} {src}" for src, ref in refs.items()]
        if why:
            lines += ["", "No Δ for some runs:"] + [f"- {w}" for w in why]
    elif not why:
        lines.append("Base: none needed (no multi-task run, so no Δ).")
    elif len(why) == 1 and next(iter(report.no_delta)) == NO_BASE:
        lines.append(f"Base: none found (no Δ): {why[0]}.")
    else:
        lines.append("Base: none usable (no Δ):" if len(why) > 1 else f"Base: none usable (no Δ): {why[0]}.")
        lines += [f"- {w}" for w in why] if len(why) > 1 else []
    header = (["method", "tasks", "seeds"] + [k + _arrow(k) for k in report.metric_keys]
              + ["Δm % ↑", "Δp % ↑", "base", "epoch time (s)", "parameters"])
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in report.rows:
        cells = [row.name, "+".join(row.first.tasks), f"{len(row.runs)} ({', '.join(map(str, row.seeds()))})"]
        cells += [fmt(row.metric(k)) for k in report.metric_keys]
        cells += [fmt(row.delta("delta_m"), signed=True), fmt(row.delta("delta_p"), signed=True),
                  " ".join(dict.fromkeys(refs[b] for b in row.bases)) or "—",
                  fmt(row.epoch_time()), fmt_params(row.parameters())]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    files = [report.files.get(k) for k in ("tex", "deltas_pdf", "curves_pdf")]
    lines += ["", "Also written: " + ", ".join(f"`{p.name}`" for p in files if p)
              + " (LaTeX table with booktabs; figures as vector PDF)."]
    if report.shared:
        lines.append(f"Figures and `report.tex` leave out what every run shares: {', '.join(report.shared)}.")
    lines += ["", f"![delta per method]({report.files['deltas_png'].name})" if report.files.get("deltas_png")
              else "No Δ to plot.", "", f"![training curves]({report.files['curves_png'].name})"
              if report.files.get("curves_png") else "No training curves (metrics.jsonl missing)."]
    if report.notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in report.notes]
    lines += ["", "## Runs", ""]
    lines += [f"- {row.name}: " + ", ".join(f"`{r.path}`" for r in row.runs) for row in report.rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_csv(report: Report, path: Path) -> Path:
    """Full-precision numbers: <metric>_mean / <metric>_std (std empty for one seed)."""
    stats = report.metric_keys + ["delta_m", "delta_p", "epoch_time_s"]
    header = ["method", "dataset", "backbone", "weighting", "kd", "tasks", "extra_overrides", "n_seeds", "seeds"]
    header += [f"{k}_{s}" for k in stats for s in ("mean", "std")] + ["num_parameters", "base", "run_dirs"]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for row in report.rows:
            run = row.first
            cells: list[Any] = [row.name, run.dataset, run.backbone, run.choices.get("weighting"),
                                run.choices.get("kd"), "+".join(run.tasks), " ".join(run.extras),
                                len(row.runs), " ".join(map(str, row.seeds()))]
            for key in stats:
                stat = (row.delta(key) if key.startswith("delta") else row.epoch_time() if key == "epoch_time_s"
                        else row.metric(key))
                cells += ["", ""] if stat is None else [stat[0], "" if stat[1] is None else stat[1]]
            cells += [row.parameters() or "", " | ".join(dict.fromkeys(row.bases)),
                      " ".join(str(r.path) for r in row.runs)]
            writer.writerow(cells)
    return path


# ---------------------------------------------------------------------------------------------
# LaTeX
# ---------------------------------------------------------------------------------------------
_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "°": r"$^\circ$", "±": r"$\pm$", "Δ": r"$\Delta$", "−": "$-$", "↑": r"$\uparrow$",
                  "↓": r"$\downarrow$", "—": "---", "–": "--"}


def latex_escape(text: str) -> str:
    """Plain text for LaTeX: special characters escaped, a few Unicode symbols as math."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def best_rows(rows: Sequence[MethodRow], stat, higher_is_better: bool, signed: bool = False) -> set[int]:
    """Indices of the rows with the best value of one column (as printed, so ties are all bold).

    Candidates are the multi-task rows with a value (single-task rows are the base), or every row
    with a value where no multi-task row has one; one candidate is not a comparison (empty set).
    """
    values = {i: _fmt_parts(stat(row), signed) for i, row in enumerate(rows)}
    values = {i: float(v[0]) for i, v in values.items() if v is not None}
    candidates = [i for i in values if not rows[i].first.single_task] or list(values)
    if len(candidates) < 2:
        return set()
    best = (max if higher_is_better else min)(values[i] for i in candidates)
    return {i for i in candidates if values[i] == best}


def write_latex(report: Report, path: Path) -> Path:
    """``report.tex``: the table as a booktabs ``table`` (``table*`` when wide), ready to paste."""
    rows = [r for r in report.rows if r.first.single_task] + [r for r in report.rows if not r.first.single_task]
    unit = report.depth_unit()
    columns = [(k, (lambda row, k=k: row.metric(k)), DIRECTIONS.get(k, True), False,
                latex_escape(metric_label(k, unit) + _arrow(k))) for k in report.metric_keys]
    columns += [(k, (lambda row, k=k: row.delta(k)), True, True, rf"$\Delta_{{\mathrm{{{k[-1]}}}}}$ (\%) $\uparrow$")
                for k in ("delta_m", "delta_p")]
    bold = [best_rows(rows, stat, hib, signed) for _, stat, hib, signed, _ in columns]
    groups: list[tuple[str, int]] = []  # (task, number of its metric columns) for the first header line
    for key in report.metric_keys:
        task = key.split("/", 1)[0]
        if groups and groups[-1][0] == task:
            groups[-1] = (task, groups[-1][1] + 1)
        else:
            groups.append((task, 1))
    wide = len(columns) > 4  # mean ± std cells: more than four do not fit one column of a paper
    env = "table*" if wide else "table"
    first, rules, col = [""], [], 2
    for task, n in groups:
        first.append(rf"\multicolumn{{{n}}}{{c}}{{{latex_escape(task.capitalize())}}}")
        rules.append(rf"\cmidrule(lr){{{col}-{col + n - 1}}}")
        col += n
    first += [""] * 3
    lines = [
        "% okd comparison table (python -m okd.report); needs \\usepackage{booktabs} in the preamble.",
        f"% model selection: {report.selection}; runs: {sum(len(r.runs) for r in report.rows)}",
        rf"\begin{{{env}}}[t]", r"\centering", r"\small", r"\setlength{\tabcolsep}{4pt}",
        r"\begin{tabular}{l" + "c" * len(columns) + "c}", r"\toprule",
        " & ".join(first) + r" \\", " ".join(rules),
        " & ".join(["Method"] + [c[4] for c in columns] + ["$n$"]) + r" \\", r"\midrule",
    ]
    single = [r.first.single_task for r in rows]
    for i, row in enumerate(rows):
        if i and single[i - 1] and not single[i]:
            lines.append(r"\midrule")
        cells = [latex_escape(row.label or row.name)]
        for (_, stat, _, signed, _), best in zip(columns, bold):
            parts = _fmt_parts(stat(row), signed)
            if parts is None:
                cells.append("--")
                continue
            mean = rf"\mathbf{{{parts[0]}}}" if i in best else parts[0]
            cells.append(f"${mean}$" if parts[1] is None else rf"${mean} \pm {parts[1]}$")
        cells.append(str(len(row.runs)))
        lines.append(" & ".join(cells) + r" \\")
    bases = "; ".join(short_source(b) for b in report.base_sources) or "none"
    caption = (f"{report.selection_text().capitalize()}. Mean ± std over n seeds; ↑/↓: higher/lower is "
               f"better; Δm (per metric) and Δp (per task) in % against the single-task base, positive = "
               f"better; bold: the best multi-task method of each column. Base: {bases}.")
    if report.shared:
        caption += f" All runs: {', '.join(report.shared)}."
    lines += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{latex_escape(caption)}}}",
              r"\label{tab:okd-report}", rf"\end{{{env}}}"]
    path.write_text("\n".join(lines) + "\n")
    return path


# ---------------------------------------------------------------------------------------------
# Plots (matplotlib's object API with the Agg canvas: no pyplot, no global backend switch)
# ---------------------------------------------------------------------------------------------
#: Okabe-Ito colours (distinguishable with colour-vision deficiencies), line styles and markers;
#: method i gets colour i % 8 and, shifted by i // 8, line style and marker: neighbours differ in all three,
#: and no two of the first 32 methods share colour and line style.
COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442")
LINESTYLES = ("-", "--", "-.", ":")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def curve_style(i: int) -> tuple[str, str, str]:
    """(colour, line style, marker) of the i-th method's curves."""
    shift = i + i // len(COLOURS)
    return COLOURS[i % len(COLOURS)], LINESTYLES[shift % len(LINESTYLES)], MARKERS[shift % len(MARKERS)]


STYLE = {"font.size": 8, "axes.titlesize": 9, "axes.labelsize": 8, "xtick.labelsize": 8, "ytick.labelsize": 8,
         "legend.fontsize": 8, "figure.titlesize": 9, "figure.labelsize": 8, "pdf.fonttype": 42,
         "axes.spines.top": False, "axes.spines.right": False, "lines.linewidth": 1.2, "lines.markersize": 3.5}


@contextlib.contextmanager
def _style():
    """Publication style: fonts of 8-9 pt, TrueType fonts in the PDF (editable text)."""
    import matplotlib

    with matplotlib.rc_context(STYLE):
        yield


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> Path:
    """``path`` (PNG at :data:`PNG_DPI`) and the same figure as vector PDF next to it."""
    with _style():
        fig.savefig(path, dpi=PNG_DPI)
        fig.savefig(path.with_suffix(".pdf"), metadata={"Creator": "okd.report", "CreationDate": None})
    return path


def _wrap(text: str, width: int) -> str:
    """Lines of at most ``width`` characters, broken after spaces, ``=``, ``.``, ``,``, ``_`` or ``/``
    (override names have no spaces) and only inside a token longer than a line."""
    lines, line = [], ""
    for token in re.findall(r"[^ =.,_/]*[ =.,_/]?", text):
        if len(line) + len(token.rstrip()) > width and line.strip():
            lines.append(line)
            line = ""
        while len(line) + len(token.rstrip()) > width:  # a token longer than a line: cut it
            cut = width - len(line)
            lines.append(line + token[:cut])
            line, token = "", token[cut:]
        line += token
    lines.append(line)
    return "\n".join(l.strip() for l in lines if l.strip())


def _caption(report: Report, first: str, width: float = FIGURE_WIDTH) -> str:
    """Figure title lines: what is shown, how the model was selected, the base, what all runs share."""
    lines = [first, report.selection_text()[0].upper() + report.selection_text()[1:] + "."]
    if report.base_sources:
        sources = [short_source(b) for b in report.base_sources]
        lines.append("Base: " + sources[0] if len(sources) == 1
                     else "Bases: " + "; ".join(f"[{i + 1}] {s}" for i, s in enumerate(sources)))
    if report.shared:
        lines.append("All runs: " + ", ".join(report.shared))
    return "\n".join(_wrap(line, int(14 * width)) for line in lines)  # ~14 characters per inch at 9 pt


def figure_deltas(report: Report):
    """Δm and Δp per method, best Δm on top: mean ± std bars, one dot per seed, n per bar."""
    rows = sorted((r for r in report.rows if r.deltas), key=lambda r: -r.delta("delta_m")[0])
    if not rows:
        return None
    refs = {src: f"[{i + 1}]" for i, src in enumerate(report.base_sources)}
    labels = []
    for row in rows:
        text = f"{row.label or row.name} (n = {len(row.deltas)})"
        if len(refs) > 1:
            text += " " + " ".join(dict.fromkeys(refs[b] for b in row.bases))
        labels.append(_wrap(text, 32))
    caption = _caption(report, "Δ vs the single-task base in %, > 0 = better. Bars: mean ± std over n seeds; "
                               "dots: seeds.")
    label_lines = sum(max(label.count("\n") + 1, 1.6) for label in labels)
    with _style():
        fig = _figure(FIGURE_WIDTH, 0.9 + 0.15 * label_lines + 0.16 * (caption.count("\n") + 1))
        axes = fig.subplots(1, 2, sharey=True)
        ys = list(range(len(rows)))
        for ax, key, symbol, title in zip(axes, ("delta_m", "delta_p"), ("Δm", "Δp"),
                                          ("Δm: mean over metrics", "Δp: mean over tasks")):
            means = [r.delta(key)[0] for r in rows]
            stds = [r.delta(key)[1] or 0.0 for r in rows]
            colors = [COLOURS[0] if m >= 0 else COLOURS[1] for m in means]
            ax.barh(ys, means, xerr=stds, color=colors, alpha=0.55, height=0.6, capsize=2.5,
                    error_kw={"linewidth": 0.8})
            for y, row in zip(ys, rows):
                ax.scatter([d[key] for d in row.deltas], [y] * len(row.deltas), color="black", s=6, zorder=3,
                           linewidths=0)
            ax.axvline(0.0, color="grey", linewidth=0.8)
            ax.set_title(title)
            ax.set_xlabel(f"{symbol} (%), > 0 = better than base")
        axes[0].set_yticks(ys, labels)
        axes[0].invert_yaxis()
        fig.suptitle(caption)
    return fig


def plot_deltas(report: Report, path: Path) -> Path | None:
    """``deltas.png`` and ``deltas.pdf`` (see :func:`figure_deltas`); None without any Δ."""
    fig = figure_deltas(report)
    return None if fig is None else _save(fig, path)


def training_curves(run: RunRecord, split: str, key: str) -> dict[int, float]:
    """``{epoch: value}`` of one key on one split from the run's metrics.jsonl."""
    path = run.path / "metrics.jsonl"
    if not path.is_file():
        return {}
    out = {}
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            if row.get("split") == split and isinstance(row.get(key), (int, float)):
                out[int(row["epoch"])] = float(row[key])
    return out


def seed_curve(runs: Sequence[RunRecord], split: str | None, key: str) -> tuple[list[int], list[float], list[float]]:
    """Epochs, mean over runs and sample std (NaN where one run has the epoch) of one key.

    ``split=None``: each run's own selection split.
    """
    per_epoch: dict[int, list[float]] = {}
    for run in runs:
        for epoch, value in training_curves(run, split or run.select_split or "", key).items():
            per_epoch.setdefault(epoch, []).append(value)
    epochs = sorted(per_epoch)
    stats = [mean_std(per_epoch[e]) for e in epochs]
    return epochs, [m for m, _ in stats], [math.nan if s is None else s for _, s in stats]


def figure_curves(report: Report):
    """Per task (columns): training loss (top) and the selection split's first metric (bottom)."""
    tasks = sorted({t for r in report.rows for t in r.first.tasks}, key=_task_rank)
    unit = report.depth_unit()
    panels = [("train", f"loss/{t}", loss_label(t, unit), t) for t in tasks]
    for t in tasks:
        key = next((k for k in DIRECTIONS if k.startswith(t + "/")), None)
        if key:
            panels.append((None, key, metric_label(key, unit) + _arrow(key), None))
    curves = [[seed_curve(row.runs, split, key) for row in report.rows] for split, key, _, _ in panels]
    if not any(c[0] for panel in curves for c in panel):
        return None
    from matplotlib.ticker import MaxNLocator

    splits = list(dict.fromkeys(str(r.select_split) for row in report.rows for r in row.runs))
    cols = len(tasks)
    width = FIGURE_WIDTH if cols > 1 else COLUMN_WIDTH
    caption = _caption(report, f"Line: mean over seeds, band: ± std. Top: training loss; bottom: "
                               f"{', '.join(splits)} (selection split).", width)
    labels = [_wrap(row.label or row.name, 36) for row in report.rows]
    longest = max(len(line) for label in labels for line in label.splitlines())
    # ~15 characters of 8 pt per inch, and the line sample of each entry takes ~6 of them
    legend_cols = max(1, min(3, len(report.rows), int(15 * width) // (longest + 6)))
    legend_rows = sum(max(labels[i].count("\n") + 1 for i in range(r, min(r + legend_cols, len(labels))))
                      for r in range(0, len(labels), legend_cols))
    with _style():
        fig = _figure(width, 3.6 + 0.17 * legend_rows + 0.16 * (caption.count("\n") + 1))
        axes = fig.subplots(2, cols, squeeze=False)
        handles = {}
        for i, ((_, _, ylabel, title), panel) in enumerate(zip(panels, curves)):
            ax = axes[i // cols][i % cols]
            for j, (row, (epochs, means, stds)) in enumerate(zip(report.rows, panel)):
                if not epochs:
                    continue
                colour, linestyle, marker = curve_style(j)
                (line,) = ax.plot(epochs, means, color=colour, linestyle=linestyle,
                                  marker=marker, markevery=max(1, len(epochs) // 12),
                                  label=row.label or row.name)
                low = [m - s for m, s in zip(means, stds)]
                high = [m + s for m, s in zip(means, stds)]
                ax.fill_between(epochs, low, high, color=colour, alpha=0.18, linewidth=0)
                handles.setdefault(j, line)
            if title:
                ax.set_title(title)
            ax.set_xlabel("epoch")
            ax.set_ylabel(ylabel)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if handles:  # in row order: single-task rows, then the methods
            order = sorted(handles)
            fig.legend([handles[j] for j in order], [labels[j] for j in order],
                       loc="outside lower center", ncol=min(legend_cols, len(handles)), frameon=False)
        fig.suptitle(caption)
    return fig


def plot_curves(report: Report, path: Path) -> Path | None:
    """``curves.png`` and ``curves.pdf`` (see :func:`figure_curves`); None without metrics.jsonl."""
    fig = figure_curves(report)
    return None if fig is None else _save(fig, path)


# ---------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m okd.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("dirs", nargs="+", help="run dirs or multirun dirs (searched for summary.json)")
    parser.add_argument("--out", help="output folder (default: <dir>/report for one dir, else ./report)")
    parser.add_argument("--selection", default="best", choices=SELECTIONS,
                        help="model selection whose numbers are reported (default: best)")
    parser.add_argument("--base-runs", nargs="+", default=[], metavar="DIR",
                        help="single-task runs to compute every Δ against (overrides the runs' own bases)")
    args = parser.parse_args(argv)
    out = Path(args.out) if args.out else (Path(args.dirs[0]) / "report" if len(args.dirs) == 1 else Path("report"))
    try:
        report = build_report(args.dirs, out, args.selection, args.base_runs)
    except (ValueError, FileNotFoundError) as err:
        print(f"okd.report: error: {err}", file=sys.stderr)
        return 2
    print(report.files["md"].read_text())
    print("wrote " + ", ".join(str(p) for p in report.files.values() if p is not None))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
