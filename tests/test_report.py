"""The comparison report on small synthetic multiruns: rows, mean ± std, Δ against STL runs, files."""
from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import pytest
import torch
from PIL import Image

from okd.app import run
from okd.metrics import deltas
from okd.report import (DIRECTIONS, RunRecord, _extra_overrides, build_report, fmt, group_methods, main,
                        method_name)
from test_config import compose_cfg

TINY = ["dataset.train_size=8", "dataset.val_size=4", "dataset.test_size=4", "dataset.height=32",
        "dataset.width=32", "trainer.batch_size=8", "trainer.progress=false", "logger=none",
        "trainer.epochs=2", "dataset.tasks=[segmentation,depth]"]
MTL = {"ew": ("mtl/0", "mtl/1"), "uw": ("mtl/2", "mtl/3")}
DIRS = {"segmentation": "stl/0", "depth": "stl/1"}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny convolutions: a second torch thread only adds contention on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def train(overrides: list[str], run_dir: Path) -> dict:
    cfg = compose_cfg([*TINY, *overrides])
    return run(cfg, run_dir, dict(cfg.hydra.runtime.choices))  # choices as run.py passes them


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory) -> Path:
    """multirun/stl: one single-task run per task; multirun/mtl: weighting=ew,uw x seed=0,1."""
    root = tmp_path_factory.mktemp("report") / "multirun"
    for task, sub in DIRS.items():
        train([f"dataset.tasks=[{task}]"], root / sub)
    for weighting, subs in MTL.items():
        for seed, sub in enumerate(subs):
            train([f"weighting={weighting}", f"seed={seed}"], root / sub)
    return root


def summary(path: Path) -> dict:
    return json.loads((path / "summary.json").read_text())


def csv_rows(path: Path) -> dict[str, dict]:
    with open(path, newline="") as f:
        return {row["method"]: row for row in csv.DictReader(f)}


def stl_base(root: Path, selection: str) -> dict[str, float]:
    base = {}
    for task, sub in DIRS.items():
        metrics = summary(root / sub)["selection"][selection]["metrics"]
        base.update({k: v for k, v in metrics.items() if k.startswith(task + "/")})
    return base


def expected_deltas(root: Path, subs, selection: str) -> dict[str, list[float]]:
    directions = {k: v for k, v in DIRECTIONS.items() if k.split("/")[0] in DIRS}
    base = stl_base(root, selection)
    per_run = [deltas(summary(root / s)["selection"][selection]["metrics"], base, directions) for s in subs]
    return {k: [d[k] for d in per_run] for k in ("delta_m", "delta_p")}


def test_rows_mean_std_and_deltas_against_stl_runs_of_the_sweep(sweeps, tmp_path):
    # the MTL runs had no STL sibling in their own sweep: the report computes Δ itself
    assert summary(sweeps / "mtl/0")["delta"]["base"] is None
    report = build_report([sweeps / "stl", sweeps / "mtl"], tmp_path)
    assert [r.name for r in report.rows] == ["segnet / STL depth", "segnet / STL segmentation",
                                             "segnet / ew / kd-none", "segnet / uw / kd-none"]
    rows = csv_rows(tmp_path / "report.csv")
    for weighting, subs in MTL.items():
        row = rows[f"segnet / {weighting} / kd-none"]
        summaries = [summary(sweeps / s) for s in subs]
        assert row["n_seeds"] == "2" and row["seeds"] == "0 1" and row["tasks"] == "segmentation+depth"
        for key in ("segmentation/miou", "segmentation/pix_acc", "depth/abs_err", "depth/rel_err"):
            values = [s["selection"]["best"]["metrics"][key] for s in summaries]
            assert float(row[f"{key}_mean"]) == pytest.approx(statistics.fmean(values))
            assert float(row[f"{key}_std"]) == pytest.approx(statistics.stdev(values))
        for key, values in expected_deltas(sweeps, subs, "best").items():
            assert float(row[f"{key}_mean"]) == pytest.approx(statistics.fmean(values))
            assert float(row[f"{key}_std"]) == pytest.approx(statistics.stdev(values))
        times = [s["epoch_time_s_mean"] for s in summaries]
        assert float(row["epoch_time_s_mean"]) == pytest.approx(statistics.fmean(times))
        assert int(row["num_parameters"]) == summaries[0]["num_parameters"]
        assert row["base"].startswith("single-task runs found among the report's directories")
    stl_row = rows["segnet / STL depth"]
    assert stl_row["n_seeds"] == "1" and stl_row["delta_m_mean"] == "" and stl_row["segmentation/miou_mean"] == ""
    stl_metrics = summary(sweeps / "stl/1")["selection"]["best"]["metrics"]
    assert float(stl_row["depth/abs_err_mean"]) == stl_metrics["depth/abs_err"]

    md = (tmp_path / "report.md").read_text()
    assert "positive = better than the single-task base" in md and "model selection `best`" in md
    assert ("[1] single-task runs found among the report's directories (synthetic, segnet: "
            "segmentation x1, depth x1") in md
    ew = next(r for r in report.rows if r.name == "segnet / ew / kd-none")
    line = next(l for l in md.splitlines() if l.startswith("| segnet / ew / kd-none |"))
    assert line.startswith("| segnet / ew / kd-none | segmentation+depth | 2 (0, 1) | "
                           + fmt(ew.metric("segmentation/miou")) + " | ")
    assert f"| {fmt(ew.delta('delta_m'), signed=True)} | {fmt(ew.delta('delta_p'), signed=True)} | [1] |" in line
    for name in ("deltas.png", "curves.png"):
        assert f"]({name})" in md
        with Image.open(tmp_path / name) as png:
            png.verify()
            assert png.format == "PNG" and png.size[0] > 300 and png.size[1] > 100


def test_recorded_base_then_cli_with_base_runs_and_another_selection(sweeps, tmp_path, capsys):
    stl = [str(sweeps / sub) for sub in DIRS.values()]
    recorded = train(["weighting=ew", f"delta.stl_runs=[{stl[0]},{stl[1]}]"], sweeps / "extra/0")
    report = build_report([sweeps / "extra"], tmp_path / "recorded")
    (row,) = report.rows
    assert row.deltas == [{k: recorded["delta"]["best"][k] for k in ("delta_m", "delta_p")}]
    assert row.bases == [recorded["delta"]["base"]["source"]]
    assert f"[1] {recorded['delta']['base']['source']}" in (tmp_path / "recorded" / "report.md").read_text()

    # no base anywhere: numbers without Δ, and the header says so
    build_report([sweeps / "mtl"], tmp_path / "none")
    assert "Base: none found" in (tmp_path / "none" / "report.md").read_text()
    assert csv_rows(tmp_path / "none" / "report.csv")["segnet / ew / kd-none"]["delta_m_mean"] == ""

    out = tmp_path / "cli"
    assert main([str(sweeps / "mtl"), "--out", str(out), "--selection", "last", "--base-runs", *stl]) == 0
    assert "| segnet / uw / kd-none |" in capsys.readouterr().out
    rows = csv_rows(out / "report.csv")
    values = [summary(sweeps / s)["selection"]["last"]["metrics"]["depth/abs_err"] for s in MTL["uw"]]
    assert float(rows["segnet / uw / kd-none"]["depth/abs_err_mean"]) == pytest.approx(statistics.fmean(values))
    for key, values in expected_deltas(sweeps, MTL["uw"], "last").items():
        assert float(rows["segnet / uw / kd-none"][f"{key}_mean"]) == pytest.approx(statistics.fmean(values))
    assert rows["segnet / uw / kd-none"]["base"].startswith("single-task runs given by --base-runs")
    assert "model selection `last`" in (out / "report.md").read_text()


def test_bad_directories_are_clear_errors(tmp_path, capsys):
    assert main([str(tmp_path / "missing")]) == 2
    assert "does not exist (expected a run dir or a multirun dir)" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 2
    assert "no summary.json under" in capsys.readouterr().err
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "summary.json").write_text("{}")
    assert main([str(tmp_path / "junk")]) == 2
    assert "not an okd run summary" in capsys.readouterr().err


def test_command_line_overrides_name_methods_but_seed_and_logging_do_not(tmp_path):
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "overrides.yaml").write_text(
        "- weighting=dwa\n- seed=1\n- weighting.temperature=1.0\n- logger=none\n- trainer.progress=false\n"
        "- +trainer.epochs=3\n- delta.last_n=2\n- dataset.tasks=[segmentation,depth]\n")
    extras = _extra_overrides(tmp_path)
    assert extras == ("trainer.epochs=3", "weighting.temperature=1.0")
    record = RunRecord(tmp_path, {"seed": 1, "dataset": "synthetic", "tasks": ["segmentation", "depth"],
                                  "choices": {"backbone": "segnet", "weighting": "dwa", "kd": "none"}}, {}, extras)
    assert method_name(record, False, False) == "segnet / dwa / kd-none (trainer.epochs=3, weighting.temperature=1.0)"
    assert method_name(record, True, True) == ("synthetic / segnet / dwa / kd-none / segmentation+depth "
                                               "(trainer.epochs=3, weighting.temperature=1.0)")
    assert fmt((1.23456, 0.1)) == "1.235 ± 0.100" and fmt((-3.0, None), signed=True) == "-3.00"


def test_single_task_runs_of_two_weightings_get_distinct_rows():
    def record(weighting, seed):
        return RunRecord(Path(f"/runs/{weighting}{seed}"), {
            "seed": seed, "dataset": "synthetic", "tasks": ["depth"],
            "choices": {"backbone": "segnet", "weighting": weighting, "kd": "none"}}, {"depth/abs_err": 1.0})
    rows = group_methods([record("ew", 0), record("uw", 0), record("ew", 1)])
    assert sorted((r.name, len(r.runs)) for r in rows) == [
        ("segnet / STL depth [weighting=ew]", 2), ("segnet / STL depth [weighting=uw]", 1)]
