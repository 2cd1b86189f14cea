"""The comparison report on small synthetic multiruns: rows, mean ± std, Δ against STL runs, files."""
from __future__ import annotations

import csv
import json
import re
import statistics
from pathlib import Path

import numpy as np
import pytest
from matplotlib.colors import to_rgb
from PIL import Image

from okd.app import run
from okd.metrics import deltas
from okd.results import RunSummary
from okd.report import (DIRECTIONS, RunRecord, _extra_overrides, build_report, figure_curves, figure_deltas, fmt,
                        group_methods, main, method_name)
from okd.config import compose as compose_cfg

TINY = ["dataset.train_size=8", "dataset.val_size=4", "dataset.test_size=4", "dataset.height=32",
        "dataset.width=32", "trainer.batch_size=8", "trainer.progress=false", "logger=none",
        "trainer.epochs=2", "dataset.tasks=[segmentation,depth]"]
MTL = {"ew": ("mtl/0", "mtl/1"), "uw": ("mtl/2", "mtl/3")}
DIRS = {"segmentation": "stl/0", "depth": "stl/1"}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


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
    # what the report labels its numbers with: the depth unit and last_n_mean's N
    assert summary(sweeps / "mtl/0")["depth_unit"] == "metres"
    assert summary(sweeps / "mtl/0")["selection"]["last_n_mean"]["last_n"] == 10
    report = build_report([sweeps / "stl", sweeps / "mtl"], tmp_path)
    assert report.depth_unit() == "m" and report.selection_text() == "model selected on val (best loss), reported on test"
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
        "- +trainer.epochs=3\n- selection.last_n=2\n- dataset.tasks=[segmentation,depth]\n")
    extras = _extra_overrides(tmp_path)
    assert extras == ("trainer.epochs=3", "weighting.temperature=1.0")
    record = RunRecord(tmp_path, RunSummary(seed=1, dataset="synthetic", tasks=["segmentation", "depth"], selection={},
                                            choices={"backbone": "segnet", "weighting": "dwa", "kd": "none"}), {}, extras)
    assert method_name(record, False, False) == "segnet / dwa / kd-none (trainer.epochs=3, weighting.temperature=1.0)"
    assert method_name(record, True, True) == ("synthetic / segnet / dwa / kd-none / segmentation+depth "
                                               "(trainer.epochs=3, weighting.temperature=1.0)")
    assert fmt((1.23456, 0.1)) == "1.235 ± 0.100" and fmt((-3.0, None), signed=True) == "-3.00"


def test_single_task_runs_of_two_weightings_get_distinct_rows():
    def record(weighting, seed):
        return RunRecord(Path(f"/runs/{weighting}{seed}"), RunSummary(
            seed=seed, dataset="synthetic", tasks=["depth"], selection={},
            choices={"backbone": "segnet", "weighting": weighting, "kd": "none"}), {"depth/abs_err": 1.0})
    rows = group_methods([record("ew", 0), record("uw", 0), record("ew", 1)])
    assert sorted((r.name, len(r.runs)) for r in rows) == [
        ("segnet / STL depth [weighting=ew]", 2), ("segnet / STL depth [weighting=uw]", 1)]


# ---------------------------------------------------------------------------------------------
# Figures and tables fit for a paper: hand-written run directories (no training, seconds)
# ---------------------------------------------------------------------------------------------
SEG, DEPTH = "segmentation", "depth"


def epoch_metrics(epoch: int, tasks, shift: float, split: str) -> dict[str, float]:
    """Numbers of one epoch: better with the epoch and with ``shift``; val and test differ."""
    off = 0.5 if split == "test" else 0.0
    out = {}
    if SEG in tasks:
        out.update({"segmentation/miou": 20.0 + 2 * epoch + shift + off, "segmentation/pix_acc": 60.0 + epoch + shift})
    if DEPTH in tasks:
        out.update({"depth/abs_err": 1.0 - 0.05 * epoch - shift / 100 + off / 10, "depth/rel_err": 0.4 - shift / 200})
    return out


def fake_run(path: Path, tasks=(SEG, DEPTH), weighting: str = "ew", seed: int = 0, epochs: int = 4,
             shift: float = 0.0, overrides=("trainer.epochs=4",), last_n: int | None = 10,
             config_last_n: int | None = None, metrics: dict | None = None) -> Path:
    """A finished run dir as okd writes it: summary.json, metrics.jsonl, .hydra/overrides.yaml."""
    path.mkdir(parents=True)
    shift += seed / 10
    lines = []
    for e in range(epochs):
        lines.append({"epoch": e, "split": "train", **{f"loss/{t}": 2.0 - 0.1 * e - shift / 50 for t in tasks}})
        for split in ("val", "test"):
            lines.append({"epoch": e, "split": split, **epoch_metrics(e, tasks, shift, split)})
    (path / "metrics.jsonl").write_text("".join(json.dumps(l) + "\n" for l in lines))
    last = metrics or epoch_metrics(epochs - 1, tasks, shift, "test")
    tail = list(range(epochs))[-(last_n or config_last_n or 10):]
    mean = {k: statistics.fmean(epoch_metrics(e, tasks, shift, "test")[k] for e in tail) for k in last}
    selection = {"best": {"epoch": epochs - 1, "split": "test", "chosen_on": "val", "monitor": "loss", "metrics": last},
                 "last": {"epoch": epochs - 1, "split": "test", "metrics": last},
                 "last_n_mean": {"epochs": tail, "split": "test", "metrics": metrics or mean}}
    if last_n is not None:
        selection["last_n_mean"]["last_n"] = last_n
    summary = {"dataset": "synthetic", "tasks": list(tasks), "seed": seed, "epochs": epochs,
               "choices": {"backbone": "segnet", "weighting": weighting, "kd": "none", "trainer": "default",
                           "experiment": None, "dataset": "synthetic"},
               "select_split": "val", "report_split": "test", "depth_unit": "metres",
               "selection": selection, "delta": {"base": None}, "num_parameters": 1000, "epoch_time_s_mean": 1.0}
    (path / "summary.json").write_text(json.dumps(summary))
    (path / ".hydra").mkdir()
    items = [f"weighting={weighting}", f"seed={seed}", *overrides]
    (path / ".hydra" / "overrides.yaml").write_text("".join(f"- {i}\n" for i in items))
    if config_last_n is not None:
        (path / ".hydra" / "config.yaml").write_text(f"delta:\n  last_n: {config_last_n}\n")
    return path


#: weighting -> shift of its numbers: uw is best, then dwa, then ew (not alphabetical)
SHIFTS = {"ew": 0.0, "dwa": 1.0, "uw": 3.0}


@pytest.fixture(scope="module")
def paper_runs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("paper")
    fake_run(root / "stl/0", tasks=(SEG,), weighting="ew", shift=-2.0)
    fake_run(root / "stl/1", tasks=(DEPTH,), weighting="ew", shift=-2.0)
    for i, (weighting, shift) in enumerate(SHIFTS.items()):
        for seed in (0, 1):
            fake_run(root / f"mtl/{2 * i + seed}", weighting=weighting, seed=seed, shift=shift)
    return root


def pdf_is_vector(path: Path, width_in: float) -> None:
    data = path.read_bytes()
    assert data.startswith(b"%PDF-") and data.rstrip().endswith(b"%%EOF")
    assert b"/Subtype /Image" not in data  # no embedded bitmap: lines, bands, bars and text are vector
    box = re.search(rb"/MediaBox \[ 0 0 ([\d.]+) ([\d.]+) \]", data)
    assert float(box.group(1)) == pytest.approx(72 * width_in)  # 7 in = 504 pt


def texts(fig) -> list:
    from matplotlib.text import Text

    return [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]


def test_figures_as_png_and_vector_pdf_at_publication_size(paper_runs, tmp_path):
    report = build_report([paper_runs], tmp_path)
    for name in ("deltas", "curves"):
        pdf_is_vector(tmp_path / f"{name}.pdf", 7.0)
        with Image.open(tmp_path / f"{name}.png") as png:
            assert png.size[0] == 7 * 300  # 7 in at 300 dpi
        assert report.files[f"{name}_pdf"] == tmp_path / f"{name}.pdf"
        fig = (figure_curves if name == "curves" else figure_deltas)(report)
        small = [(t.get_text(), t.get_fontsize()) for t in texts(fig) if t.get_fontsize() < 8]
        assert not small  # every text at 8 pt or more
    md = (tmp_path / "report.md").read_text()
    assert "`report.tex`, `deltas.pdf`, `curves.pdf`" in md
    assert "leave out what every run shares: segnet, kd-none, trainer.epochs=4" in md


def test_curves_have_units_a_seed_band_distinct_styles_and_the_selection_split(paper_runs, tmp_path):
    report = build_report([paper_runs], tmp_path)
    fig = figure_curves(report)
    axes = fig.axes
    assert [ax.get_ylabel() for ax in axes] == ["train loss: cross-entropy", "train loss: L1 (m)",
                                                "mIoU (%) ↑", "abs. error (m) ↓"]
    assert all(ax.get_xlabel() == "epoch" for ax in axes)
    (legend,) = fig.legends
    labels = [t.get_text() for t in legend.get_texts()]
    assert labels == ["STL depth", "STL segmentation", "dwa", "ew", "uw"]  # no trainer.epochs=4, no segnet
    assert "All runs: segnet, kd-none, trainer.epochs=4" in fig.get_suptitle()
    assert "val (selection split)" in fig.get_suptitle()
    miou = axes[2]
    lines = {l.get_label(): l for l in miou.get_lines()}
    styles = [(lines[m].get_color(), lines[m].get_linestyle(), lines[m].get_marker()) for m in ("dwa", "ew", "uw")]
    for i in range(3):  # colour, line style and marker each differ between methods
        assert len({s[i] for s in styles}) == 3
    # the curve is the mean over seeds of the selection split (val), not the report split
    expected = [statistics.fmean(epoch_metrics(e, (SEG,), SHIFTS["uw"] + s / 10, "val")["segmentation/miou"]
                                 for s in (0, 1)) for e in range(4)]
    np.testing.assert_allclose(lines["uw"].get_ydata(), expected)
    # a ± std band per method with two seeds (the single-task rows have one seed: no band)
    bands = [c for c in miou.collections if type(c).__name__ == "FillBetweenPolyCollection"
             or type(c).__name__ == "PolyCollection"]
    assert len(bands) == 4  # STL segmentation (empty: one seed) + dwa, ew, uw
    (uw_band,) = [b for b in bands if np.allclose(b.get_facecolor()[0][:3], to_rgb(lines["uw"].get_color()))]
    ys = uw_band.get_paths()[0].vertices[:, 1]
    spread = statistics.stdev([epoch_metrics(3, (SEG,), SHIFTS["uw"] + s / 10, "val")["segmentation/miou"]
                               for s in (0, 1)])
    assert ys.max() == pytest.approx(expected[-1] + spread)


def test_deltas_sorted_by_delta_m_with_n_selection_and_base_and_no_overlap(paper_runs, tmp_path):
    long = "some.very.long.override.name=with_a_long_value_that_would_overlap"
    fake_run(paper_runs.parent / "long/0", weighting="dwa", shift=2.0, overrides=("trainer.epochs=4", long))
    report = build_report([paper_runs, paper_runs.parent / "long"], tmp_path)
    fig = figure_deltas(report)
    fig.canvas.draw()
    ticks = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert [t.split(" (n")[0] for t in ticks][:1] == ["uw"]
    squeeze = lambda text: "".join(text.split())  # noqa: E731 (labels are wrapped over lines)
    order = [next(r for r in report.rows if squeeze(f"{r.label} (n = {len(r.deltas)})") == squeeze(t))
             for t in ticks]
    means = [r.delta("delta_m")[0] for r in order]
    assert means == sorted(means, reverse=True) and len(order) == 4  # best Δm on top
    assert any(long in squeeze(t) for t in ticks) and max(len(line) for t in ticks for line in t.splitlines()) <= 32
    title = fig.get_suptitle().replace("\n", " ")
    assert "Model selected on val (best loss), reported on test" in title and "best on test" not in title
    assert "Base: single-task runs found among the report's directories" in title
    # nothing overlaps: the two panel titles, the figure title, the tick labels and the panels
    renderer = fig.canvas.get_renderer()
    boxes = [fig.axes[0].title.get_window_extent(renderer), fig.axes[1].title.get_window_extent(renderer),
             fig._suptitle.get_window_extent(renderer)]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not a.overlaps(b)
    left = fig.axes[0].get_window_extent(renderer).x0
    for label in fig.axes[0].get_yticklabels():
        box = label.get_window_extent(renderer)
        assert box.x0 >= 0 and box.x1 <= left + 1  # inside the figure, left of the first panel


def latex_rows(tex: str) -> dict[str, list[str]]:
    body = tex.split("\\midrule", 1)[1].split("\\bottomrule")[0]
    rows = [l.rstrip(" \\").split(" & ") for l in body.splitlines() if " & " in l]
    return {r[0]: r[1:] for r in rows}


def test_latex_table_booktabs_bold_best_with_direction_and_arrows(paper_runs, tmp_path):
    report = build_report([paper_runs], tmp_path)
    assert report.files["tex"] == tmp_path / "report.tex"
    tex = (tmp_path / "report.tex").read_text()
    for rule in ("\\toprule", "\\midrule", "\\bottomrule", "\\cmidrule(lr){2-3}", "\\begin{tabular}"):
        assert rule in tex
    header = next(l for l in tex.splitlines() if l.startswith("Method & "))
    assert header.split(" & ")[1:] == ["mIoU (\\%) $\\uparrow$", "pixel acc. (\\%) $\\uparrow$",
                                       "abs. error (m) $\\downarrow$", "rel. error $\\downarrow$",
                                       "$\\Delta_{\\mathrm{m}}$ (\\%) $\\uparrow$",
                                       "$\\Delta_{\\mathrm{p}}$ (\\%) $\\uparrow$", "$n$ \\\\"]
    rows = latex_rows(tex)
    assert list(rows) == ["STL depth", "STL segmentation", "dwa", "ew", "uw"]
    # uw has the highest mIoU and the lowest errors: bold in every column (higher or lower is better)
    for col in range(6):
        bold = [name for name, cells in rows.items() if "\\mathbf" in cells[col]]
        assert bold == ["uw"], (col, bold)
    uw = next(r for r in report.rows if r.label == "uw")
    assert rows["uw"][0] == f"$\\mathbf{{{fmt(uw.metric('segmentation/miou')).split(' ± ')[0]}}} \\pm " \
                            f"{fmt(uw.metric('segmentation/miou')).split(' ± ')[1]}$"
    assert rows["STL depth"][0] == "--" and rows["uw"][-1] == "2"
    assert "Model selected on val (best loss), reported on test." in tex and "All runs: segnet, kd-none" in tex
    assert "trainer.epochs=4" not in "".join(rows)  # row names leave out what every run shares


def test_lower_is_better_column_bolds_the_smallest_value(tmp_path):
    fake_run(tmp_path / "a", metrics={"depth/abs_err": 0.5, "segmentation/miou": 10.0})
    fake_run(tmp_path / "b", weighting="uw", metrics={"depth/abs_err": 0.4, "segmentation/miou": 9.0})
    build_report([tmp_path / "a", tmp_path / "b"], tmp_path / "out")
    rows = latex_rows((tmp_path / "out" / "report.tex").read_text())
    assert rows["ew"][0] == "$\\mathbf{10.00}$" and rows["uw"][0] == "$9.000$"   # mIoU ↑
    assert rows["ew"][1] == "$0.5000$" and rows["uw"][1] == "$\\mathbf{0.4000}$"  # abs. error ↓


def test_header_says_the_real_reason_for_no_delta_once(tmp_path):
    # single-task runs present, but the base mIoU is exactly 0
    fake_run(tmp_path / "zero/stl/0", tasks=(SEG,), metrics={"segmentation/miou": 0.0, "segmentation/pix_acc": 5.0})
    fake_run(tmp_path / "zero/stl/1", tasks=(DEPTH,))
    fake_run(tmp_path / "zero/mtl/0")
    fake_run(tmp_path / "zero/mtl/1", seed=1)
    build_report([tmp_path / "zero"], tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text()
    assert "no single-task runs were found" not in md and "Base: none found" not in md
    reason = "base value of segmentation/miou is 0.0: relative change undefined"
    assert md.count(reason) == 1
    header = md.split("| method |")[0]
    assert f"Base: none usable (no Δ): {reason}" in header and "(all 2 multi-task runs)" in header
    assert "## Notes" not in md

    # no base anywhere: the header says so, once, and the notes do not repeat it per run
    fake_run(tmp_path / "none/0")
    fake_run(tmp_path / "none/1", seed=1)
    build_report([tmp_path / "none"], tmp_path / "out_none")
    md = (tmp_path / "out_none" / "report.md").read_text()
    assert md.count("no single-task runs were found") == 1 and "Base: none found (no Δ)" in md
    assert "## Notes" not in md


def test_summaries_written_by_earlier_versions_are_read(tmp_path):
    """A run whose summary.json predates okd/results.py (no schema, a recorded base without a kind):
    the report reads it and takes the Δ it recorded; a newer summary of the same method is read the same."""
    old = fake_run(tmp_path / "runs/old")
    summary = json.loads((old / "summary.json").read_text())
    assert "schema" not in summary
    summary["delta"] = {"definition": {}, "base": {"source": "reference numbers from config (delta.reference)",
                                                   "values": {"depth/abs_err": 1.0}},
                        "headline": "best", "best": {"delta_m": 1.5, "delta_p": 2.5}}
    (old / "summary.json").write_text(json.dumps(summary))
    new = fake_run(tmp_path / "runs/new", seed=1)
    summary = RunSummary.from_dict({**summary, "seed": 1}).to_dict()
    assert summary["schema"] == 0
    summary["schema"] = 1
    summary["delta"]["base"]["kind"] = "reference"
    (new / "summary.json").write_text(json.dumps(summary))
    report = build_report([tmp_path / "runs"], tmp_path / "out")
    (row,) = report.rows
    assert row.deltas == [{"delta_m": 1.5, "delta_p": 2.5}] * 2
    assert row.bases == ["reference numbers from config (delta.reference)"] * 2


def test_last_n_mean_on_runs_shorter_than_n_says_so(tmp_path):
    fake_run(tmp_path / "short/0", epochs=4, last_n=10)
    fake_run(tmp_path / "short/1", epochs=4, last_n=None, config_last_n=10, seed=1)  # N from .hydra/config.yaml
    build_report([tmp_path / "short"], tmp_path / "out", selection="last_n_mean")
    md = (tmp_path / "out" / "report.md").read_text()
    assert "model selection `last_n_mean`: mean of the last 10 epochs, reported on test (runs shorter" in md
    assert ("`last_n_mean` averages the last 10 evaluated epochs, but some runs are shorter, so their numbers "
            "are the mean of all their epochs (every run has 4 epochs)") in md
    fake_run(tmp_path / "short/2", epochs=12, last_n=10, weighting="uw")
    build_report([tmp_path / "short"], tmp_path / "out_mixed", selection="last_n_mean")
    md = (tmp_path / "out_mixed" / "report.md").read_text()
    assert "the mean of all their epochs (segnet / ew / kd-none (trainer.epochs=4): 4 epochs)" in md
    fake_run(tmp_path / "long/0", epochs=4, last_n=3)
    build_report([tmp_path / "long"], tmp_path / "out_long", selection="last_n_mean")
    md = (tmp_path / "out_long" / "report.md").read_text()
    assert "mean of the last 3 epochs" in md and "shorter" not in md


def test_methods_with_identical_numbers_get_a_note(tmp_path):
    for weighting in ("ew", "dwa"):
        for seed in (0, 1):
            fake_run(tmp_path / f"runs/{weighting}{seed}", weighting=weighting, seed=seed)
    fake_run(tmp_path / "runs/uw0", weighting="uw", seed=0, shift=1.0)
    build_report([tmp_path / "runs"], tmp_path / "out")
    notes = (tmp_path / "out" / "report.md").read_text().split("## Notes")[1]
    assert ("segnet / dwa / kd-none (trainer.epochs=4) and segnet / ew / kd-none (trainer.epochs=4) have "
            "identical numbers (every metric of every seed)") in notes
    assert "DWA weights every task 1 in its first two epochs" in notes
    assert "uw" not in notes.split("## Runs")[0]


def test_curve_styles_tell_up_to_32_methods_apart():
    from okd.report import curve_style

    styles = [curve_style(i) for i in range(32)]
    assert len({(c, ls) for c, ls, _ in styles}) == 32  # colour and line style alone
    assert all(len(set(a) & set(b)) == 0 for a, b in zip(styles, styles[1:]))  # neighbours differ in all three
