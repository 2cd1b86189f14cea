"""What is in ``summary.json``: the results of one finished run, as typed objects with every key in one place.

``summary.json`` is written once, at the end of a fit (``okd.engine.summary.build`` returns a
:class:`RunSummary`, ``RunRecorder.write_summary`` writes its :meth:`RunSummary.to_dict`), and read
by :func:`read_summary` wherever okd needs a finished run: the comparison report (``okd/report.py``),
the single-task bases of Δm (``okd/metrics.py``), the job list at the end of a sweep
(``okd/launch.py``, through the report). ``Trainer.fit`` returns the dict form; run.py
(:func:`sweeper_value`), ``okd.gpu_check`` and the tracker's flat summary (``okd.engine.summary.flat``)
read it back through :func:`as_summary`. No module of okd reads the file's keys by string.

The JSON is the dataclasses below, field for field, in this order (``to_dict``/``from_dict`` are
exact inverses for every summary okd writes). Optional keys that an older okd did not write load
as ``None`` (or are left out again when written back: see each class). Keys okd does not know
are kept in ``extra`` and written back unchanged.

Metric keys are ``"<task>/<metric>"`` (``depth/abs_err``), directions in ``okd.tasks``; Δm/Δp are
in percent, positive = better than the base (docs/metrics.md#delta_m-and-delta_p).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from okd.errors import OkdError

#: version of the layout below, written as ``schema``; summaries written before it load as 0.
SCHEMA_VERSION = 1
#: the three model selections of a run, in this order (docs/metrics.md#model-selections).
SELECTIONS = ("best", "last", "last_n_mean")
#: what a Δ base is, machine-readable (:attr:`Base.kind`), in the order ``okd.metrics.resolve_base`` tries them.
BASE_KINDS = ("teachers", "stl_runs", "sweep", "reference")
FILENAME = "summary.json"


class SummaryError(OkdError, ValueError):
    """A ``summary.json`` that is missing, unreadable or not an okd run summary (one line).
    ``reason`` is the message without the file's path."""

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason or message


class MissingSummary(SummaryError, FileNotFoundError):
    """No ``summary.json`` where one was expected."""


def _omit_none(obj: Any) -> dict[str, Any]:
    """The fields of a dataclass in order, without those that are None (not written)."""
    return {f.name: getattr(obj, f.name) for f in fields(obj) if getattr(obj, f.name) is not None}


def _floats(values: Mapping[str, Any] | None) -> dict[str, Any]:
    """A copy of a ``<task>/<metric> -> number`` map ({} for None)."""
    return dict(values or {})


# ---------------------------------------------------------------------------------------------
@dataclass
class Best:
    """``best``: the trainer's best epoch, chosen on the selection split by the monitored key."""

    epoch: int  #: the best epoch (0-based)
    split: str  #: the split it was chosen on (``select_split``)
    monitor: str  #: the monitored key: ``loss`` or a ``<task>/<metric>``
    value: float  #: the monitor's value at that epoch, on ``split`` (what run.py returns to a sweeper)
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  #: split -> every number of that epoch's row

    def to_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "split": self.split, "monitor": self.monitor, "value": self.value,
                "metrics": {s: dict(r) for s, r in self.metrics.items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Best":
        return cls(epoch=data["epoch"], split=data.get("split"), monitor=data.get("monitor"), value=data.get("value"),
                   metrics={s: dict(r) for s, r in (data.get("metrics") or {}).items()})


@dataclass
class Selection:
    """``selection.<name>``: the report split's numbers under one model-selection rule.

    ``best`` has ``epoch``, ``chosen_on`` and ``monitor``; ``last`` has ``epoch``; ``last_n_mean`` has
    ``epochs`` and ``last_n``. Fields a rule does not have are None and not written.
    """

    epoch: int | None = None  #: the selected epoch (best, last)
    epochs: list[int] | None = None  #: the averaged epochs (last_n_mean; fewer than last_n in a short run)
    last_n: int | None = None  #: how many last epochs are averaged (last_n_mean)
    split: str | None = None  #: the split the numbers are on (``report_split``)
    chosen_on: str | None = None  #: the split the best epoch was chosen on (best)
    monitor: str | None = None  #: the monitored key (best)
    metrics: dict[str, float] = field(default_factory=dict)  #: ``<task>/<metric>`` of the student
    teacher_metrics: dict[str, float] | None = None  #: the OKD teachers' ``<task>/<metric>`` of the same epochs ({} without)

    def to_dict(self) -> dict[str, Any]:
        out = _omit_none(self)
        out["metrics"] = _floats(self.metrics)
        if self.teacher_metrics is not None:
            out["teacher_metrics"] = _floats(self.teacher_metrics)
        if self.epochs is not None:
            out["epochs"] = list(self.epochs)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Selection":
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        kwargs["metrics"] = _floats(data.get("metrics"))
        if data.get("epochs") is not None:
            kwargs["epochs"] = list(data["epochs"])
        if data.get("teacher_metrics") is not None:
            kwargs["teacher_metrics"] = _floats(data["teacher_metrics"])
        return cls(**kwargs)


@dataclass
class Base:
    """``delta.base``: the single-task numbers Δm/Δp are computed against (``okd.metrics.resolve_base``)."""

    kind: str | None  #: ``teachers``, ``stl_runs``, ``sweep`` or ``reference`` (absent: written before kinds existed)
    source: str  #: the same for people, e.g. ``single-task runs of the same sweep [...]``
    values: dict[str, float] = field(default_factory=dict)  #: ``<task>/<metric>`` of the base (teachers: of the headline selection)

    def __post_init__(self) -> None:
        if self.kind is not None and self.kind not in BASE_KINDS:
            raise ValueError(f"Base.kind must be one of {BASE_KINDS}, got {self.kind!r}")

    def to_dict(self) -> dict[str, Any]:
        out = {"kind": self.kind, "source": self.source, "values": _floats(self.values)}
        if self.kind is None:
            del out["kind"]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Base":
        return cls(kind=data.get("kind"), source=str(data.get("source", "")), values=_floats(data.get("values")))


@dataclass
class DeltaResult:
    """``delta.<selection>``: Δm and Δp of one model selection, or why they could not be computed."""

    delta_m: float | None = None  #: per metric, % (positive = better than the base)
    delta_p: float | None = None  #: per task, %
    error: str | None = None  #: e.g. a base value of 0 (then no Δ)

    def to_dict(self) -> dict[str, Any]:
        return _omit_none(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "DeltaResult":
        return cls(delta_m=data.get("delta_m"), delta_p=data.get("delta_p"), error=data.get("error"))

    @property
    def ok(self) -> bool:
        return self.delta_m is not None and self.delta_p is not None


@dataclass
class Deltas:
    """``delta``: the base and Δm/Δp of every selection; without a base, ``base`` is None and ``reason`` says why.

    The selections' results are keys of their own in the JSON (``delta.best``, ``delta.last``, ...).
    """

    definition: dict[str, str] | None = None  #: the formulas in words (``okd.metrics.DEFINITION``)
    base: Base | None = None  #: the base (always written; null: no Δ)
    headline: str | None = None  #: the selection of the headline Δ (``best`` unless configured; ``last`` without a best epoch)
    reason: str | None = None  #: why there is no base
    results: dict[str, DeltaResult] = field(default_factory=dict)  #: selection -> its Δ (JSON: ``delta.<selection>``)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.definition is not None:
            out["definition"] = dict(self.definition)
        out["base"] = None if self.base is None else self.base.to_dict()
        if self.headline is not None:
            out["headline"] = self.headline
        if self.reason is not None:
            out["reason"] = self.reason
        for name, result in self.results.items():
            out[name] = result.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Deltas":
        base = data.get("base")
        return cls(definition=dict(data["definition"]) if data.get("definition") is not None else None,
                   base=Base.from_dict(base) if base else None, headline=data.get("headline"),
                   reason=data.get("reason"),
                   results={k: DeltaResult.from_dict(v) for k, v in data.items()
                            if k not in ("definition", "base", "headline", "reason") and isinstance(v, Mapping)})

    def get(self, selection: str) -> DeltaResult | None:
        """Δm/Δp of ``selection`` when there is a base and they were computed, else None."""
        result = self.results.get(selection)
        return result if self.base is not None and result is not None and result.ok else None


@dataclass
class Tracker:
    """``wandb``: the tracker run of this run."""

    id: str | None = None  #: W&B run id (null with ``logger=none``)
    where: str | None = None  #: where it is (URL or offline folder), for people

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "where": self.where}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Tracker":
        return cls(id=data.get("id"), where=data.get("where"))


# ---------------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class RunSummary:
    """``summary.json``: one finished run, its keys in this order. Only ``tasks`` and ``selection`` are
    required to read one (summaries of earlier versions lack some of the others)."""

    schema: int = SCHEMA_VERSION  #: layout version (0: written before the field existed)
    run_dir: str | None = None  #: the run directory when it was written
    dataset: str | None = None  #: dataset name (``nyuv2``, ``cityscapes``, ``synthetic``)
    tasks: list[str]  #: the tasks trained, in order (one task: a single-task baseline, no Δ)
    choices: dict[str, Any] = field(default_factory=dict)  #: config group -> chosen option (``backbone``, ``weighting``, ...)
    seed: Any = None  #: the run's seed
    epochs: int | None = None  #: epochs trained (``trainer.epochs``)
    device: str | None = None  #: the device trained on, e.g. ``cuda:0``
    num_parameters: int | None = None  #: parameters of the student network
    select_split: str | None = None  #: split the best epoch is chosen on
    report_split: str | None = None  #: split whose numbers the selections report
    depth_unit: str | None = None  #: unit of depth numbers (``metres``, ``disparity``), from the dataset
    final: dict[str, dict[str, float]] = field(default_factory=dict)  #: split -> the last epoch's row of metrics.jsonl
    best: Best | None = None  #: the best epoch on ``select_split`` (null: the monitor was never finite)
    skipped_steps: int | None = None  #: training steps dropped for a non-finite loss (``nan_policy=skip``)
    selection: dict[str, Selection]  #: ``best``, ``last``, ``last_n_mean`` -> numbers ({} without an evaluation)
    delta: Deltas | None = None  #: Δm/Δp and their base
    time_s: float | None = None  #: wall time of the fit
    epoch_time_s_mean: float | None = None  #: mean wall time of an epoch (training and evaluation)
    wandb: Tracker | None = None  #: the W&B run of this run
    extra: dict[str, Any] = field(default_factory=dict)  #: keys this okd does not know, kept as they were

    # -- JSON ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The JSON object of ``summary.json`` (plain dicts, lists, strings and numbers)."""
        out: dict[str, Any] = {}
        for key in _top_keys():
            value = getattr(self, key)
            if key == "tasks":
                value = list(value)
            elif key in ("choices",):
                value = dict(value)
            elif key == "final":
                value = {s: dict(r) for s, r in value.items()}
            elif key == "selection":
                value = {name: sel.to_dict() for name, sel in value.items()}
            elif hasattr(value, "to_dict"):
                value = value.to_dict()
            out[key] = value
        out.update(self.extra)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RunSummary":
        """A summary from its JSON object; a :class:`SummaryError` when it is not an okd run summary."""
        if not isinstance(data, Mapping) or "tasks" not in data or "selection" not in data:
            raise SummaryError("not an okd run summary (no tasks/selection)")
        try:
            return cls(
                tasks=list(data["tasks"]),
                selection={k: Selection.from_dict(v) for k, v in (data["selection"] or {}).items()},
                schema=int(data.get("schema", 0)),
                run_dir=data.get("run_dir"), dataset=data.get("dataset"),
                choices=dict(data.get("choices") or {}), seed=data.get("seed"), epochs=data.get("epochs"),
                device=data.get("device"), num_parameters=data.get("num_parameters"),
                select_split=data.get("select_split"), report_split=data.get("report_split"),
                depth_unit=data.get("depth_unit"),
                final={s: dict(r) for s, r in (data.get("final") or {}).items()},
                best=Best.from_dict(data["best"]) if data.get("best") else None,
                skipped_steps=data.get("skipped_steps"),
                delta=Deltas.from_dict(data["delta"]) if data.get("delta") is not None else None,
                time_s=data.get("time_s"), epoch_time_s_mean=data.get("epoch_time_s_mean"),
                wandb=Tracker.from_dict(data["wandb"]) if data.get("wandb") is not None else None,
                extra={k: v for k, v in data.items() if k not in _top_keys()},
            )
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise SummaryError(f"not an okd run summary ({type(err).__name__}: {err})") from None

    # -- reads --------------------------------------------------------------------------------
    @property
    def single_task(self) -> bool:
        return len(self.tasks) == 1

    @property
    def backbone(self) -> str | None:
        return self.choices.get("backbone")

    def metrics(self, selection: str = "best") -> dict[str, float]:
        """The student's report-split numbers of one selection ({} when the run has not that selection)."""
        chosen = self.selection.get(selection)
        return dict(chosen.metrics) if chosen else {}


def _top_keys() -> tuple[str, ...]:
    """Top-level keys of summary.json, in the order they are written: the fields of :class:`RunSummary`."""
    return tuple(f.name for f in fields(RunSummary) if f.name != "extra")


def read_summary(path: str | Path) -> RunSummary:
    """The summary of a run dir (or of a ``summary.json`` path). Raises :class:`SummaryError` with one
    line naming the file: missing (:class:`MissingSummary`), unreadable, or not an okd run summary."""
    path = Path(path)
    if path.name != FILENAME and not path.is_file():
        path = path / FILENAME
    if not path.is_file():
        why = f"no {path.name} (the run has not finished, or this is not a run directory)"
        raise MissingSummary(f"{path.parent}: {why}", why)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        why = f"{path.name} unreadable ({' '.join(str(err).split())})"
        raise SummaryError(f"{path}: {why}", why) from None
    try:
        return RunSummary.from_dict(data)
    except SummaryError as err:
        why = f"{path.name} is {err}"
        raise SummaryError(f"{path}: {why}", why) from None


def as_summary(summary: RunSummary | Mapping[str, Any]) -> RunSummary:
    """A :class:`RunSummary` from itself or its dict form (what ``Trainer.fit`` returns)."""
    return summary if isinstance(summary, RunSummary) else RunSummary.from_dict(summary)


def sweeper_value(result: Any) -> float | None:
    """What run.py returns to a Hydra sweeper (e.g. Optuna): ``best.value`` of a training run's summary,
    None for anything else (no best epoch, ``mode=eval``/``predict`` results)."""
    if isinstance(result, Mapping) and "selection" not in result:
        return None
    try:
        summary = as_summary(result)
    except SummaryError:
        return None
    return summary.best.value if summary.best is not None else None
