"""One command, the whole comparison: the staged sweeper (okd.launch.StagedSweeper, hydra/sweeper=okd_staged)
runs KD-MTL after its single-task teachers with the basic and the joblib launcher, skips finished jobs on a
relaunch, refuses a KD-MTL job without teachers in one line, and every multirun ends with the report
(report.md/.csv/.tex, figures; the W&B run of the report: tests/test_sweeps.py, the ad-hoc sweep).

Tiny synthetic runs (32x32, 8 training images, one epoch, one thread), no tracker (W&B costs seconds per job).
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from okd import launch

ROOT = Path(__file__).resolve().parents[1]
RUN = str(ROOT / "run.py")
SWEEP = "paper_synthetic_segnet"
TINY = ["trainer.epochs=1", "dataset.train_size=8", "dataset.val_size=4", "dataset.test_size=4",
        "dataset.height=32", "dataset.width=32", "trainer.batch_size=4", "trainer.progress=false", "trainer.threads=1"]
#: KD-MTL first on the command line: without stages it would start before its teachers (and fail)
GRID = "experiment=kdmtl_sweep,stl_segmentation,stl_depth,stl_normal"
TEACHERS = ("stl_segmentation", "stl_depth", "stl_normal")


def okd(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.run([sys.executable, RUN, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"run.py {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def job(sweep: Path, experiment: str) -> Path:
    (folder,) = [p for p in sweep.iterdir() if f"experiment={experiment}," in p.name]
    return folder


def started(folder: Path) -> float:
    """When Hydra started the job: it writes .hydra/ before the task function runs."""
    return (folder / ".hydra" / "overrides.yaml").stat().st_mtime


def assert_kdmtl_after_its_teachers(sweep: Path) -> None:
    kdmtl = job(sweep, "kdmtl_sweep")
    summary = json.loads((kdmtl / "summary.json").read_text())
    assert summary["epochs"] == 1
    # the teachers it loaded (the run's resolved config, saved in its checkpoint): this sweep's single-task runs
    teachers = torch.load(kdmtl / "checkpoints" / "last.pt", weights_only=True)["config"]["kd"]["teachers"]
    assert teachers == {e[4:]: str(job(sweep, e)) for e in TEACHERS}
    for experiment in TEACHERS:
        teacher = job(sweep, experiment)
        assert (teacher / "summary.json").stat().st_mtime <= started(kdmtl), f"KD-MTL started before {experiment}"


@pytest.fixture(scope="module")
def basic(tmp_path_factory):
    """The synthetic paper sweep, KD-MTL and its teachers, seed 0, basic launcher; then the same
    command again after KD-MTL lost its summary.json (an interrupted job)."""
    cwd = tmp_path_factory.mktemp("staged")
    args = ["-m", f"+sweep={SWEEP}", GRID, "seed=0", "logger=none", *TINY]
    first = okd(cwd, *args)
    sweep = cwd / "outputs" / "sweeps" / SWEEP
    times = {p.parent.name: p.stat().st_mtime for p in sweep.glob("*/summary.json")}
    (job(sweep, "kdmtl_sweep") / "summary.json").unlink()
    second = okd(cwd, *args)
    return cwd, sweep, first, second, times


def test_one_command_runs_kdmtl_after_its_teachers_of_this_sweep(basic):
    _, sweep, first, _, times = basic
    assert len(times) == 4
    assert "stage 2 of 2: 1 job(s)" in first.stdout
    assert_kdmtl_after_its_teachers(sweep)


def test_the_multirun_ends_with_the_report_written_and_printed(basic):
    _, sweep, first, _, _ = basic
    out = sweep / "report"
    for name in ("report.md", "report.csv", "report.tex", "curves.png", "curves.pdf"):
        assert (out / name).stat().st_size > 0, name
    # (no deltas figure here: one-epoch single-task normals have within_11.25 = 0, so Δ is undefined,
    # which report.md says; the full sweep of the README has it)
    methods = [row["method"] for row in csv.DictReader(open(out / "report.csv"))]
    assert len(methods) == 4 and any("kdmtl" in m for m in methods)
    printed = first.stdout[first.stdout.index("# okd comparison report"):]
    assert "| method | tasks | seeds |" in printed and f"report: {Path('outputs/sweeps') / SWEEP / 'report'}/" in printed
    for method in methods:
        assert f"| {method} |" in printed
    assert (out / "report.md").read_text().startswith(launch.report_table((out / "report.md").read_text()))
    # one base for every row: the sweep's own single-task runs (not OKD's teachers, not a run's recorded base)
    assert sorted(launch.sweep_bases(sweep, "best")) == sorted(job(sweep, e) for e in TEACHERS)
    assert "single-task runs of this sweep (synthetic, segnet: segmentation x1, depth x1, normal x1" in \
        (out / "report.md").read_text()
    assert launch.sweep_bases(job(sweep, "stl_depth"), "best") == []  # single-task runs only: no Δ to take


def test_a_relaunch_skips_finished_jobs_and_redoes_unfinished_ones(basic):
    _, sweep, _, second, times = basic
    assert "3 of 4 job(s) already finished" in second.stdout
    now = {p.parent.name: p.stat().st_mtime for p in sweep.glob("*/summary.json")}
    assert sorted(now) == sorted(times)
    kdmtl = job(sweep, "kdmtl_sweep").name
    assert now[kdmtl] > times[kdmtl]  # run again (from its last.pt: trainer.resume=auto)
    assert all(now[k] == times[k] for k in times if k != kdmtl)  # untouched
    assert "Launching 1 jobs locally" in second.stdout + second.stderr
    assert not (sweep / "report" / "wandb").exists()  # logger=none: no W&B run for the report either


def test_joblib_runs_the_stages_in_parallel_workers(tmp_path):
    proc = okd(tmp_path, "-m", f"+sweep={SWEEP}", "experiment=kdmtl_sweep,stl_segmentation,stl_depth,stl_normal",
               "seed=0", "logger=none", "hydra/launcher=okd_joblib", "hydra.launcher.n_jobs=2",
               "hydra.callbacks.okd_resources.gpus=[]", f"hydra.callbacks.okd_resources.lock_dir={tmp_path / 'locks'}",
               *TINY)
    sweep = tmp_path / "outputs" / "sweeps" / SWEEP
    assert "2 parallel job(s)" in proc.stdout and "stage 2 of 2: 1 job(s)" in proc.stdout
    assert_kdmtl_after_its_teachers(sweep)
    pids = {line.split("in process ")[1].split(":")[0] for p in sweep.glob("*/run.log")
            for line in p.read_text().splitlines() if "in process " in line}
    assert len(pids) >= 2  # joblib's workers, not this process
    assert (sweep / "report" / "report.md").is_file()


def test_kdmtl_without_teachers_is_one_line_and_not_started(tmp_path):
    proc = okd(tmp_path, "-m", f"+sweep={SWEEP}", "experiment=kdmtl_sweep", "seed=0", "logger=none", *TINY,
               check=False)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.startswith("okd: error:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert "experiment=kdmtl_sweep seed=0" in lines[0] and "not started" in lines[0]
    assert "experiment=stl_depth,seed=0" in lines[0] and "not a job of this sweep" in lines[0]
    sweep = tmp_path / "outputs" / "sweeps" / SWEEP
    assert not list(sweep.glob("*/summary.json")) and not list(sweep.glob("*kdmtl*"))
    assert "no report" not in proc.stderr  # no job finished: nothing to compare, and nothing more to say


def test_a_report_failure_is_one_warning(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "summary.json").write_text("{}")  # a finished job, but a summary the report cannot use
    assert launch.sweep_report(tmp_path, wandb=False) is None
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"okd: warning: no report for the sweep in {tmp_path}")
    assert launch.sweep_report(tmp_path / "run" / "nothing", wandb=False) is None  # no job finished: silent
    assert capsys.readouterr().err == ""


def test_the_report_logs_to_wandb_only_where_the_jobs_do():
    from okd.config import compose
    from okd.report_tracker import tracker_settings

    cfg = compose([f"+sweep={SWEEP}", "logger.project=p"], as_run=False)
    assert tracker_settings(cfg) == {"project": "p", "entity": None, "group": SWEEP, "mode": "auto"}
    assert tracker_settings(compose(["logger=none"], as_run=False)) is None
    assert tracker_settings(compose(["logger.mode=disabled"], as_run=False)) is None
