"""summary.json as one typed schema (okd/results.py): round trip, summaries of earlier versions, the
reader's one-line errors, the documented keys, and the metric directions defined once by the tasks."""
from __future__ import annotations

import copy
import json
import re
from dataclasses import fields
from pathlib import Path
from types import SimpleNamespace

import pytest

from okd import results
from okd.data.base import TASK_NAMES
from okd.engine import summary as run_summary
from okd.logging import RunRecorder
from okd.results import (BASE_KINDS, SCHEMA_VERSION, Base, Best, DeltaResult, Deltas, MissingSummary, RunSummary,
                         Selection, SummaryError, Tracker, read_summary, sweeper_value)
from okd.tasks import TASK_TYPES, metric_directions

ROOT = Path(__file__).resolve().parents[1]
SEG = {"segmentation/miou": 40.0, "segmentation/pix_acc": 60.0}
DEPTH = {"depth/abs_err": 0.5, "depth/rel_err": 0.2}


def rows(epochs: int = 3, teachers: bool = True) -> list[dict]:
    out = []
    for e in range(epochs):
        out.append({"epoch": e, "split": "train", "loss": 1.0 - e / 10, "loss/segmentation": 1.0, "weight/depth": 1.0})
        for split, off in (("val", 0.0), ("test", 0.5)):
            row = {"epoch": e, "split": split, "loss": 1.0 - e / 10, "loss/depth": 0.3,
                   **{k: v + e + off for k, v in SEG.items()}, **{k: v - e / 100 + off for k, v in DEPTH.items()}}
            if teachers:
                row.update({f"teacher/{k}": v - 1 for k, v in SEG.items()})
                row.update({f"teacher/{k}": v + 0.1 for k, v in DEPTH.items()})
                row["teacher/loss/depth"] = 0.4
            out.append(row)
    return out


def context(tmp_path: Path, tasks=("segmentation", "depth"), delta=None):
    """What summary.build reads of a RunContext, without building a model."""
    return SimpleNamespace(
        run_dir=tmp_path, tasks=[SimpleNamespace(name=t) for t in tasks], seed=3,
        data=SimpleNamespace(name="synthetic", report_split="test", select_split="val", info={"depth_unit": "metres"}),
        choices={"backbone": "segnet", "weighting": "ew", "kd": "okd"}, delta=delta or {"last_n": 2},
        selection=SimpleNamespace(last_n=2, headline="best", split="val"),
        model=SimpleNamespace(num_parameters=lambda: 1234),
        logger=SimpleNamespace(run_id=None, describe=lambda: None))


def built(tmp_path: Path, **kwargs) -> RunSummary:
    history = rows(teachers=kwargs.pop("teachers", True))
    best = {"epoch": 1, "split": "val", "monitor": "loss", "value": 0.9,
            "metrics": {"val": {"loss": 0.9}, "test": {"loss": 0.9}}}
    ctx = context(tmp_path, **kwargs)
    directions = metric_directions([t for t in TASK_TYPES if t.name in [x.name for x in ctx.tasks]])
    return run_summary.build(ctx, rows=history, best=best, last={"test": history[-1]}, epochs=3, device="cpu",
                             directions=directions, skipped_steps=0, seconds=2.5, epoch_times=[1.0, 2.0])


# ---------------------------------------------------------------------------------------------
def test_build_returns_the_schema_and_the_json_round_trip_is_exact(tmp_path):
    summary = built(tmp_path)
    assert isinstance(summary, RunSummary) and summary.schema == SCHEMA_VERSION
    assert isinstance(summary.best, Best) and isinstance(summary.selection["best"], Selection)
    assert summary.delta.base.kind == "teachers" and summary.delta.headline == "best"
    assert isinstance(summary.delta.results["last"], DeltaResult) and summary.delta.results["last"].ok
    data = summary.to_dict()
    assert json.loads(json.dumps(data)) == data  # JSON-compatible as it is
    assert RunSummary.from_dict(data) == summary
    assert RunSummary.from_dict(data).to_dict() == data
    assert list(data) == [f.name for f in fields(RunSummary) if f.name != "extra"]
    # what the trainer writes is what the reader gives back
    RunRecorder(tmp_path).write_summary(summary)
    assert read_summary(tmp_path) == summary == read_summary(tmp_path / "summary.json")
    assert json.loads((tmp_path / "summary.json").read_text()) == data


def test_the_json_keeps_the_keys_of_the_earlier_dict_layout(tmp_path):
    data = built(tmp_path).to_dict()
    assert set(data) == {"schema", "run_dir", "dataset", "tasks", "choices", "seed", "epochs", "device",
                         "num_parameters", "select_split", "report_split", "depth_unit", "final", "best",
                         "skipped_steps", "selection", "delta", "time_s", "epoch_time_s_mean", "wandb"}
    assert list(data["selection"]["best"]) == ["epoch", "split", "chosen_on", "monitor", "metrics", "teacher_metrics"]
    assert list(data["selection"]["last"]) == ["epoch", "split", "metrics", "teacher_metrics"]
    assert list(data["selection"]["last_n_mean"]) == ["epochs", "last_n", "split", "metrics", "teacher_metrics"]
    assert list(data["delta"]) == ["definition", "base", "headline", "last", "last_n_mean", "best"]
    assert list(data["delta"]["base"]) == ["kind", "source", "values"]
    assert list(data["delta"]["best"]) == ["delta_m", "delta_p"]
    assert list(data["best"]) == ["epoch", "split", "monitor", "value", "metrics"]
    assert data["wandb"] == {"id": None, "where": None}
    single = built(tmp_path / "stl", tasks=("depth",), teachers=False).to_dict()
    assert single["delta"] == {"base": None, "reason": "single-task run: it is a baseline itself"}


def test_selections_and_deltas_numbers(tmp_path):
    summary = built(tmp_path)
    test = [r for r in rows() if r["split"] == "test"]
    assert summary.selection["best"].metrics["segmentation/miou"] == test[1]["segmentation/miou"]
    assert summary.selection["last_n_mean"].epochs == [1, 2]
    assert summary.selection["last_n_mean"].metrics["depth/abs_err"] == pytest.approx(
        (test[1]["depth/abs_err"] + test[2]["depth/abs_err"]) / 2)
    assert summary.selection["last"].teacher_metrics["segmentation/miou"] == test[2]["teacher/segmentation/miou"] == 39.0
    from okd.metrics import deltas
    expected = deltas(summary.selection["last"].metrics, summary.selection["last"].teacher_metrics,
                      metric_directions(TASK_TYPES[:2]))
    assert summary.delta.get("last").to_dict() == expected
    flat = run_summary.flat(summary)
    assert flat == run_summary.flat(summary.to_dict())  # the W&B flat form from the object or its dict
    assert flat["delta_m/last"] == expected["delta_m"] and flat["best/epoch"] == 1
    assert flat["delta_base"] == summary.delta.base.source and flat["delta_base_kind"] == "teachers"
    assert flat["last/test/segmentation/miou"] == 42.5
    assert "delta_base_kind" not in run_summary.flat(OLD) and run_summary.flat(OLD)["delta_m/best"] == 2.5


#: a summary.json as okd wrote it before okd/results.py (no schema, no base kind, a base without teachers)
OLD = {
    "run_dir": "/old/run", "dataset": "nyuv2", "tasks": ["segmentation", "depth"],
    "choices": {"backbone": "segnet", "weighting": "dwa", "kd": "none"}, "seed": 0, "epochs": 2, "device": "cuda",
    "num_parameters": 10, "select_split": "val", "report_split": "test", "depth_unit": "metres",
    "final": {"test": {"epoch": 1, "split": "test", "segmentation/miou": 41.0}},
    "best": {"epoch": 1, "split": "val", "monitor": "loss", "value": 0.5, "metrics": {"val": {"loss": 0.5}}},
    "skipped_steps": 0,
    "selection": {"best": {"epoch": 1, "split": "test", "chosen_on": "val", "monitor": "loss",
                           "metrics": {"segmentation/miou": 41.0}, "teacher_metrics": {}},
                  "last": {"epoch": 1, "split": "test", "metrics": {"segmentation/miou": 41.0}, "teacher_metrics": {}},
                  "last_n_mean": {"epochs": [0, 1], "last_n": 10, "split": "test",
                                  "metrics": {"segmentation/miou": 40.0}, "teacher_metrics": {}}},
    "delta": {"definition": {"delta_m": "...", "delta_p": "..."},
              "base": {"source": "reference numbers from config (delta.reference)", "values": {"segmentation/miou": 40.0}},
              "headline": "best", "best": {"delta_m": 2.5, "delta_p": 2.5}, "last": {"error": "base value is 0"}},
    "time_s": 3.0, "epoch_time_s_mean": 1.5, "wandb": {"id": "abc", "where": "W&B run abc"},
}
#: an older one still (and the report tests' hand-written runs): only what the report reads
OLDEST = {"dataset": "synthetic", "tasks": ["depth"], "seed": 1, "epochs": 4,
          "selection": {"best": {"epoch": 3, "split": "test", "metrics": {"depth/abs_err": 0.5}},
                        "last_n_mean": {"epochs": [2, 3], "split": "test", "metrics": {"depth/abs_err": 0.6}}},
          "delta": {"base": None}, "num_parameters": 1000}


@pytest.mark.parametrize("old", [OLD, OLDEST], ids=["before-schema", "oldest"])
def test_summaries_written_by_earlier_versions_load(tmp_path, old):
    (tmp_path / "summary.json").write_text(json.dumps(old))
    summary = read_summary(tmp_path)
    assert summary.schema == 0 and summary.tasks == old["tasks"]
    data = summary.to_dict()
    for key, value in old.items():  # every key of the old file, unchanged
        assert data[key] == value, key
    assert RunSummary.from_dict(data) == summary
    added = {k: v for k, v in data.items() if k not in old}
    assert added.pop("schema") == 0 and all(v in (None, {}) for v in added.values()), added  # absent: empty


def test_an_old_base_has_no_kind_and_an_unknown_kind_is_refused(tmp_path):
    summary = RunSummary.from_dict(OLD)
    assert summary.delta.base.kind is None and summary.delta.base.source.startswith("reference")
    assert summary.delta.get("best").delta_m == 2.5 and summary.delta.get("last") is None
    assert summary.delta.results["last"].error == "base value is 0"
    for kind in BASE_KINDS:
        assert Base.from_dict({"kind": kind, "source": "s", "values": {}}).kind == kind
    with pytest.raises(ValueError, match="Base.kind must be one of"):
        Base("teacher", "s")


def test_unknown_keys_are_kept(tmp_path):
    data = {**OLD, "schema": 1, "something_new": {"a": 1}}
    assert RunSummary.from_dict(data).extra == {"something_new": {"a": 1}}
    assert RunSummary.from_dict(data).to_dict() == data


def one_line(err: BaseException) -> str:
    text = str(err)
    assert "\n" not in text, text
    return text


def test_the_reader_says_what_is_wrong_in_one_line(tmp_path):
    with pytest.raises(MissingSummary) as missing:
        read_summary(tmp_path / "nope")
    assert re.fullmatch(r".*nope: no summary\.json \(the run has not finished.*\)", one_line(missing.value))
    assert isinstance(missing.value, FileNotFoundError) and isinstance(missing.value, SummaryError)
    (tmp_path / "summary.json").write_text("{not json\n\n")
    with pytest.raises(SummaryError) as bad:
        read_summary(tmp_path)
    assert one_line(bad.value).startswith(f"{tmp_path / 'summary.json'}: summary.json unreadable (")
    assert bad.value.reason.startswith("summary.json unreadable")
    for junk in ({}, [], {"tasks": ["depth"]}, {"tasks": ["depth"], "selection": {"best": {"epoch": "x", "metrics": 3}}}):
        (tmp_path / "summary.json").write_text(json.dumps(junk))
        with pytest.raises(SummaryError) as bad:
            read_summary(tmp_path)
        assert "summary.json is not an okd run summary" in one_line(bad.value)
    (tmp_path / "summary.json").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(SummaryError, match="unreadable"):
        read_summary(tmp_path)


def test_sweeper_value_is_the_best_value_of_a_training_summary(tmp_path):
    summary = built(tmp_path)
    assert sweeper_value(summary) == 0.9 == sweeper_value(summary.to_dict())
    assert sweeper_value({"predictions": []}) is None and sweeper_value({"test": {"loss": 1.0}}) is None
    assert sweeper_value({**OLD, "best": None}) is None


# ---------------------------------------------------------------------------------------------
# The documentation: every field of the schema, with its comment, in okd/results.py and docs/metrics.md
# ---------------------------------------------------------------------------------------------
SCHEMA_CLASSES = (RunSummary, Best, Selection, Deltas, Base, DeltaResult, Tracker)


def test_every_field_has_a_comment_in_okd_results():
    source = (ROOT / "okd" / "results.py").read_text()
    for cls in SCHEMA_CLASSES:
        for f in fields(cls):
            assert re.search(rf"^    {f.name}: .*#: \S", source, re.M), f"{cls.__name__}.{f.name} has no #: comment"


#: the JSON keys of each schema class: its prefix in summary.json (``delta.results`` are ``delta.<selection>``)
PREFIXES = {RunSummary: "", Best: "best.", Selection: "selection.<name>.", Deltas: "delta.", Base: "delta.base.",
            DeltaResult: "delta.<selection>.", Tracker: "wandb."}


def schema_rows() -> list[tuple[str, str]]:
    """(key, its #: comment in okd/results.py) of every key of summary.json, in the docs' order."""
    source = (ROOT / "okd" / "results.py").read_text()
    out = []
    for cls, prefix in PREFIXES.items():
        body = source.split(f"class {cls.__name__}", 1)[1]
        for f in fields(cls):
            if f.name in ("extra", "results"):
                continue
            comment = re.search(rf"^    {f.name}: .*#: (.*)$", body, re.M).group(1)
            out.append((prefix + f.name, comment.strip()))
    return out


def docs_table() -> str:
    """The table of docs/metrics.md "What is in summary.json" (regenerate: python -m tests.test_results)."""
    return "\n".join(["| key | what |", "|---|---|"] + [f"| `{k}` | {c.replace('|', '/')} |" for k, c in schema_rows()])


def test_docs_list_every_key_of_summary_json():
    """docs/metrics.md "What is in summary.json" is the table generated from okd/results.py's field comments."""
    text = (ROOT / "docs/metrics.md").read_text()
    assert "## What is in summary.json" in text
    section = text.split("## What is in summary.json", 1)[1].split("\n## ", 1)[0]
    assert docs_table() in section, "docs/metrics.md is out of date: python -m tests.test_results prints the table"


if __name__ == "__main__":
    print(docs_table())


# ---------------------------------------------------------------------------------------------
# Metric directions: defined once, by the tasks
# ---------------------------------------------------------------------------------------------
def test_directions_come_from_the_tasks_everywhere():
    from okd import config, report

    assert tuple(t.name for t in TASK_TYPES) == TASK_NAMES
    every = metric_directions()
    assert every == {f"{t.name}/{m}": hib for t in TASK_TYPES for m, hib in t.higher_is_better.items()}
    assert report.DIRECTIONS == every and report.TASK_ORDER == TASK_NAMES
    for key, higher in every.items():
        assert config.direction(key) == ("maximize" if higher else "minimize")
    assert config.direction("loss") == "minimize"


def test_no_other_module_defines_directions_or_matches_a_base_by_its_prose():
    """Directions are only written in okd/tasks.py, and no reader (nor test) tells bases apart by their text."""
    prose = re.compile(r"source\"?\]?\)?\.startswith")  # e.g. base["source"].startswith("teachers"): use base.kind
    for path in sorted((ROOT / "okd").rglob("*.py")) + [ROOT / "run.py"] + sorted((ROOT / "tests").rglob("*.py")):
        text = path.read_text()
        if ROOT / "okd" in path.parents and path.name != "tasks.py":  # no table of directions, no list of the tasks
            assert "higher_is_better = {" not in text and "(Segmentation, Depth, Normal)" not in text, path
            assert ".higher_is_better.items()" not in text, f"{path}: use okd.tasks.metric_directions"
        if path.name != "test_results.py":
            assert not prose.search(text), path


def test_deltas_reads_the_base_kind_not_its_source(tmp_path):
    """The teachers' base is recognised by its kind: a teachers' base with another text still compares each
    selection with the teachers of the same epochs."""
    chosen = run_summary.selections(rows(), "test", {"epoch": 0, "split": "val", "monitor": "loss"}, 2)
    directions = metric_directions(TASK_TYPES[:2])
    out = run_summary.deltas(chosen, tasks=["segmentation", "depth"], dataset="synthetic", backbone="segnet",
                             run_dir=tmp_path, delta={}, directions=directions)
    assert out.base.kind == "teachers"
    from okd.metrics import deltas
    for name, sel in chosen.items():
        assert out.results[name].to_dict() == deltas(sel.metrics, sel.teacher_metrics, directions)
    stl = copy.deepcopy(chosen)
    for sel in stl.values():
        sel.teacher_metrics = {}
    ref = run_summary.deltas(stl, tasks=["segmentation", "depth"], dataset="synthetic", backbone="segnet",
                             run_dir=tmp_path, delta={"reference": {**SEG, **DEPTH}}, directions=directions)
    assert ref.base.kind == "reference" and ref.base.values == {**SEG, **DEPTH}


# ---------------------------------------------------------------------------------------------
# The other readers: the end-of-sweep job list (okd/launch.py) and the value run.py returns
# ---------------------------------------------------------------------------------------------
def test_the_sweep_job_list_reads_new_and_old_summaries(tmp_path):
    from okd.launch import sweep_summary

    for i in range(3):
        (tmp_path / str(i) / ".hydra").mkdir(parents=True)
        (tmp_path / str(i) / ".hydra" / "overrides.yaml").write_text(f"- seed={i}\n")
    RunRecorder(tmp_path / "0").write_summary(built(tmp_path / "0"))
    (tmp_path / "1" / "summary.json").write_text(json.dumps(OLD))
    lines = sweep_summary(tmp_path).splitlines()
    assert lines[0].startswith(f"sweep {tmp_path}: 3 job(s), 2 done, 1 ")
    new, old, none = lines[1:]
    assert new.split()[:6] == ["done", "loss", "0.9", "(val,", "epoch", "1)"] and "Δm " in new
    assert old.split()[:6] == ["done", "loss", "0.5", "(val,", "epoch", "1)"] and "Δm +2.50%" in old
    assert not none.split()[0] == "done"
