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

Outputs in ``--out``: ``report.md``, ``report.csv``, ``deltas.png`` (Δm and Δp per method, seed
points and mean ± std) and ``curves.png`` (per task: training loss per epoch, and the report
split's first metric per epoch, mean over seeds per method).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from okd import metrics as mtl
from okd.tasks import Depth, Normal, Segmentation

SELECTIONS = ("best", "last", "last_n_mean")
#: "<task>/<metric>" -> higher is better, in the display order of the tables.
DIRECTIONS = {f"{cls.name}/{m}": hib for cls in (Segmentation, Depth, Normal)
              for m, hib in cls.higher_is_better.items()}
TASK_ORDER = ("segmentation", "depth", "normal")
#: command-line overrides that do not change what a run computes (or are grouped on separately).
IGNORED_OVERRIDES = ("seed", "name", "sweep", "logger", "trainer.resume", "trainer.progress", "trainer.device",
                     "trainer.num_workers", "trainer.pin_memory", "trainer.persistent_workers",
                     "trainer.log_every_n_steps", "delta", "reference", "dataset.tasks", "hydra")
#: config groups whose choice is part of a method's identity (``reference`` only picks a base).
CHOICE_GROUPS = ("dataset", "backbone", "weighting", "kd", "trainer", "experiment")


# ---------------------------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------------------------
@dataclass
class RunRecord:
    """What the report needs from one finished run directory."""

    path: Path
    summary: dict
    metrics: dict[str, float]
    extras: tuple[str, ...] = ()

    @property
    def seed(self) -> Any:
        return self.summary.get("seed")

    @property
    def dataset(self) -> str:
        return str(self.summary.get("dataset"))

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self.summary.get("tasks", ()))

    @property
    def choices(self) -> dict:
        return self.summary.get("choices") or {}

    @property
    def backbone(self) -> str | None:
        return self.choices.get("backbone")

    @property
    def single_task(self) -> bool:
        return len(self.tasks) == 1

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
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        return None, f"summary.json unreadable ({err})"
    if not isinstance(summary, dict) or "tasks" not in summary or "selection" not in summary:
        return None, "summary.json is not an okd run summary (no tasks/selection)"
    chosen = (summary.get("selection") or {}).get(selection)
    if not chosen:
        return None, f"no '{selection}' model selection recorded (selections: {sorted(summary['selection'])})"
    values = {k: float(v) for k, v in chosen["metrics"].items() if isinstance(v, (int, float))}
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
    """Single-task numbers for one (dataset, backbone): per-task means over the runs found."""

    values: dict[str, float]
    source: str
    tasks: set[str] = field(default_factory=set)


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
    stored = run.summary.get("delta") or {}
    if not forced and stored.get("base") and isinstance(stored.get(selection), Mapping) \
            and "delta_m" in stored[selection]:
        return {k: float(stored[selection][k]) for k in ("delta_m", "delta_p")}, stored["base"]["source"]
    base = bases.get((run.dataset, run.backbone))
    if base is None:
        return None, "no base: no single-task run of this dataset/backbone found"
    missing = [t for t in run.tasks if t not in base.tasks]
    if missing:
        return None, f"no base: no single-task run for {missing}"
    directions = {k: v for k, v in DIRECTIONS.items() if k.split("/", 1)[0] in run.tasks}
    try:
        return mtl.deltas(run.metrics, base.values, directions), base.source
    except ValueError as err:
        return None, f"no delta: {err}"


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
        vals = [float(r.summary["epoch_time_s_mean"]) for r in self.runs
                if isinstance(r.summary.get("epoch_time_s_mean"), (int, float))]
        return mean_std(vals) if vals else None

    def parameters(self) -> int | None:
        vals = [int(r.summary["num_parameters"]) for r in self.runs if r.summary.get("num_parameters")]
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
            row.name = f"{name} [{', '.join(tags)}]"


def method_name(run: RunRecord, with_dataset: bool, with_tasks: bool) -> str:
    """Readable method name, e.g. ``segnet / dwa / kd-none`` or ``segnet / STL depth``."""
    c = run.choices
    parts = [run.dataset] if with_dataset else []
    parts.append(str(c.get("backbone", "?")))
    if run.single_task:
        parts.append(f"STL {run.tasks[0]}")
    else:
        parts += [str(c.get("weighting", "?")), f"kd-{c.get('kd', '?')}"]
        if with_tasks:
            parts.append("+".join(run.tasks))
    if c.get("trainer") not in (None, "default"):
        parts.append(f"trainer-{c['trainer']}")
    if c.get("experiment") not in (None, "null"):
        parts.append(f"exp-{c['experiment']}")
    name = " / ".join(parts)
    return f"{name} ({', '.join(run.extras)})" if run.extras else name


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


def build_report(dirs: Sequence[str | Path], out: str | Path, selection: str = "best",
                 base_runs: Sequence[str | Path] = ()) -> Report:
    """Collect the runs under ``dirs``, compute every row, write md, csv and png into ``out``."""
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
        bases = stl_bases(given, "given by --base-runs")
    else:
        bases = stl_bases(runs, "found among the report's directories")
    rows = group_methods(runs)
    for row in rows:
        for run in row.runs:
            values, base = run_deltas(run, selection, bases, forced)
            if values is not None:
                row.deltas.append(values)
                row.bases.append(base)
            elif base:
                row.notes.append(f"{run.path}: {base}")
        if row.deltas and len(row.deltas) < len(row.runs):
            row.notes.append(f"Δ over {len(row.deltas)} of {len(row.runs)} runs")
        for seed in {s for s in row.seeds() if row.seeds().count(s) > 1}:
            notes.append(f"{row.name}: seed {seed} appears {row.seeds().count(seed)} times (runs counted separately)")
    base_sources = list(dict.fromkeys(b for row in rows for b in row.bases))
    chosen = [r.summary["selection"][selection] for r in runs]
    split = ", ".join(dict.fromkeys(str(c.get("split")) for c in chosen))
    chosen_on = ", ".join(dict.fromkeys(str(c["chosen_on"]) for c in chosen if c.get("chosen_on"))) or None
    report = Report(rows, metric_columns(runs), selection, split, chosen_on,
                    base_sources, notes + [n for row in rows for n in row.notes])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report.files["csv"] = write_csv(report, out / "report.csv")
    for name, plot in (("deltas", plot_deltas), ("curves", plot_curves)):
        target = out / f"{name}.png"
        target.unlink(missing_ok=True)  # no stale picture from an earlier report in the same folder
        report.files[f"{name}_png"] = plot(report, target)
    report.files["md"] = write_markdown(report, out / "report.md")
    return report


def metric_columns(runs: Sequence[RunRecord]) -> list[str]:
    keys = {k for r in runs for k in r.metrics}
    order = list(DIRECTIONS)
    return sorted(keys, key=lambda k: (order.index(k) if k in order else len(order), k))


def _task_rank(task: str) -> int:
    return TASK_ORDER.index(task) if task in TASK_ORDER else len(TASK_ORDER)


# ---------------------------------------------------------------------------------------------
# Writers
# ---------------------------------------------------------------------------------------------
def fmt(stat: tuple[float, float | None] | None, signed: bool = False) -> str:
    """``mean ± std``: the mean to 4 significant digits (Δ: 2 decimals), the std to as many decimals."""
    if stat is None or not math.isfinite(stat[0]):
        return "—"
    mean, std = stat
    if signed:
        decimals = 2
    else:
        magnitude = math.floor(math.log10(abs(mean))) if mean != 0 else 0
        decimals = min(6, max(0, 3 - magnitude))
    text = f"{mean:+.{decimals}f}" if signed else f"{mean:.{decimals}f}"
    return text if std is None else f"{text} ± {std:.{decimals}f}"


def fmt_params(n: int | None) -> str:
    if n is None:
        return "—"
    return f"{n / 1e6:.2f}M" if n >= 100_000 else f"{n:,}"


def _arrow(key: str) -> str:
    return "" if key not in DIRECTIONS else (" ↑" if DIRECTIONS[key] else " ↓")


def write_markdown(report: Report, path: Path) -> Path:
    refs = {src: f"[{i + 1}]" for i, src in enumerate(report.base_sources)}
    n_runs = sum(len(r.runs) for r in report.rows)
    lines = [
        "# okd comparison report", "",
        f"{n_runs} runs, {len(report.rows)} methods. Numbers on split `{report.split}`, model selection "
        f"`{report.selection}`" + (f" (epoch chosen on `{report.chosen_on}`)" if report.chosen_on else "")
        + "; mean ± sample std (ddof = 1) over seeds; ↑/↓: higher/lower is better.", "",
        "**Δm / Δp in percent, positive = better than the single-task base** (CAGrad, Nash-MTL and FAMO "
        "print the negative of Δm, so a drop is positive there).",
        f"- Δm (per metric): {mtl.DEFINITION['delta_m']}.",
        f"- Δp (per task): {mtl.DEFINITION['delta_p']}.", "",
        "Base used (column `base`):" if refs else "Base: none found (no Δ): no run recorded a base and no "
        "single-task runs were found; pass --base-runs.",
    ]
    lines += [f"- {ref} {src}" for src, ref in refs.items()]
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
# Plots (matplotlib's object API with the Agg canvas: no pyplot, no global backend switch)
# ---------------------------------------------------------------------------------------------
def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def plot_deltas(report: Report, path: Path) -> Path | None:
    """Δm and Δp per method: every seed as a dot, mean ± std as a bar with error bar."""
    rows = [r for r in report.rows if r.deltas]
    if not rows:
        return None
    fig = _figure(10, 1.2 + 0.45 * len(rows))
    axes = fig.subplots(1, 2, sharey=True)
    ys = list(range(len(rows)))
    for ax, key, title in zip(axes, ("delta_m", "delta_p"), ("Δm (per metric)", "Δp (per task)")):
        means = [r.delta(key)[0] for r in rows]
        stds = [r.delta(key)[1] or 0.0 for r in rows]
        colors = ["tab:green" if m >= 0 else "tab:red" for m in means]
        ax.barh(ys, means, xerr=stds, color=colors, alpha=0.45, capsize=4)
        for y, row in zip(ys, rows):
            ax.scatter([d[key] for d in row.deltas], [y] * len(row.deltas), color="black", s=14, zorder=3)
        ax.axvline(0.0, color="grey", linewidth=0.8)
        ax.set_title(f"{title}, % vs base (positive = better)", fontsize=10)
        ax.set_xlabel("%")
    axes[0].set_yticks(ys, [r.name for r in rows], fontsize=8)
    axes[0].invert_yaxis()
    fig.suptitle(f"{report.selection} on {report.split}: mean ± std over seeds, dots = seeds", fontsize=10)
    fig.savefig(path)
    return path


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


def _mean_curve(runs: Sequence[RunRecord], split: str, key: str) -> tuple[list[int], list[float]]:
    per_epoch: dict[int, list[float]] = {}
    for run in runs:
        for epoch, value in training_curves(run, split, key).items():
            per_epoch.setdefault(epoch, []).append(value)
    epochs = sorted(per_epoch)
    return epochs, [sum(per_epoch[e]) / len(per_epoch[e]) for e in epochs]


def plot_curves(report: Report, path: Path) -> Path | None:
    """Per task: training loss per epoch (top) and the report split's first metric (bottom)."""
    tasks = sorted({t for r in report.rows for t in r.first.tasks}, key=_task_rank)
    panels = [("train", f"loss/{t}", f"{t}: train loss") for t in tasks]
    for t in tasks:
        key = next((k for k in DIRECTIONS if k.startswith(t + "/")), None)
        if key:
            panels.append(("report", key, f"{key} on {report.split}{_arrow(key)}"))
    # evaluation curves come from each run's own report split (the split its selection reports)
    split_of = {row.name: row.first.summary["selection"][report.selection].get("split", "test")
                for row in report.rows}
    curves = [[(row.name, _mean_curve(row.runs, split_of[row.name] if s == "report" else s, k))
               for row in report.rows] for s, k, _ in panels]
    if not any(c[1][0] for panel in curves for c in panel):
        return None
    from matplotlib import colormaps
    from matplotlib.ticker import MaxNLocator

    cols = len(tasks)
    fig = _figure(4.2 * cols, 7.0)
    axes = fig.subplots(2, cols, squeeze=False)
    # one colour per method across all panels
    colours = {row.name: colormaps["tab10" if len(report.rows) <= 10 else "tab20"](i % 20)
               for i, row in enumerate(report.rows)}
    legend = {}
    for i, ((_, _, title), panel) in enumerate(zip(panels, curves)):
        ax = axes[i // cols][i % cols]
        for name, (epochs, values) in panel:
            if epochs:
                (line,) = ax.plot(epochs, values, marker="o", markersize=3, color=colours[name], label=name)
                legend.setdefault(name, line)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if legend:
        fig.legend(list(legend.values()), list(legend), loc="outside lower center", ncol=min(3, len(legend)),
                   fontsize=8)
    fig.suptitle("mean over seeds per method", fontsize=10)
    fig.savefig(path)
    return path


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
