"""Preemption without a scheduler: which job a requeue names, the launcher's queue line, and a W&B run
whose service process dies with the same signal (as SLURM signals every process of a job)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from okd.logging import WandbLogger
from okd.slurm import requeue_target, status_line

ROOT = Path(__file__).resolve().parents[1]
TINY = ["dataset.train_size=160", "dataset.val_size=4", "dataset.test_size=4", "dataset.height=32",
        "dataset.width=32", "trainer.batch_size=4", "trainer.epochs=3", "trainer.log_images=0"]


def test_requeue_names_only_this_array_task():
    # the first task of an array has SLURM_JOB_ID == SLURM_ARRAY_JOB_ID: that id would requeue them all
    array_task = {"SLURM_JOB_ID": "17", "SLURM_ARRAY_JOB_ID": "17", "SLURM_ARRAY_TASK_ID": "1"}
    assert requeue_target(array_task) == "17_1"
    assert requeue_target({"SLURM_JOB_ID": "42"}) == "42"
    assert requeue_target({}) is None


def test_queue_line_counts_states_and_pending_reasons():
    states = {"1_0": "PENDING", "1_1": "PENDING", "1_2": "RUNNING", "1_3": "COMPLETED", "1_4": "REQUEUED"}
    line = status_line(states, {"1_0": "Resources", "1_1": "PartitionConfig"})
    assert line == "5 job(s): 2 pending (Resources: 1, PartitionConfig: 1), 1 requeued, 1 running, 1 done"
    assert status_line({"1_0": "PENDING"}, {"1_0": "JobHeldUser"}) == "1 job(s): 1 pending (JobHeldUser)"


class DeadRun:
    """A W&B run whose service process is gone: every call fails as wandb's do then."""

    id = "abc123"

    def log(self, *args, **kwargs):
        raise ConnectionResetError("Connection lost")

    def finish(self, *args, **kwargs):
        raise RuntimeError("HandleAbandonedError")

    @property
    def summary(self):
        raise ConnectionResetError("Connection lost")


def test_a_dead_tracker_is_reported_once_and_never_raises(caplog):
    logger = WandbLogger(mode="offline")
    logger._run = DeadRun()
    logger.log({"train/loss": 1.0}, step=0)
    logger.log({"train/loss": 0.5}, step=1)
    logger.summary({"best/epoch": 1})
    logger.finish(143)
    warnings = [r.getMessage() for r in caplog.records if "W&B stopped working" in r.getMessage()]
    assert len(warnings) == 1 and "ConnectionResetError" in warnings[0]


def test_sigterm_to_every_process_with_wandb_saves_and_keeps_the_exit_status(tmp_path):
    """SIGTERM to every process of the run (the trainer and W&B's service, as SLURM does): the run
    saves last.pt and exits 143, not with the tracker's ConnectionResetError; the resumed run
    continues the same W&B run and ends as the uninterrupted one."""
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1"}
    env.pop("SLURM_JOB_ID", None)
    run = [sys.executable, str(ROOT / "run.py"), *TINY, "logger=wandb", "trainer.progress=false"]
    cut = tmp_path / "cut"
    proc = subprocess.Popen([*run, f"hydra.run.dir={cut}"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (cut / "checkpoints" / "last.pt").is_file() and time.monotonic() < deadline:
        time.sleep(0.05)
    children = [int(p) for p in subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True,
                                               text=True).stdout.split()]
    assert children, "W&B's service process runs beside the trainer"
    for pid in [proc.pid, *children]:  # what SLURM does: every process of the job gets the signal
        os.kill(pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, out + err
    assert "SIGTERM received: saved" in out and "okd: error" not in err, out + err
    subprocess.run([*run, f"hydra.run.dir={cut}", "trainer.resume=true"], env=env, check=True,
                   capture_output=True, timeout=300)
    ids = {p.name.rsplit("-", 1)[1] for p in cut.glob("wandb/offline-run-*")}
    assert len(ids) == 1 and len(list(cut.glob("wandb/offline-run-*"))) == 2
    straight = tmp_path / "straight"
    subprocess.run([*run, "logger=none", f"hydra.run.dir={straight}"], env=env, check=True, capture_output=True,
                   timeout=300)
    final = lambda d: json.loads((d / "summary.json").read_text())["final"]  # noqa: E731
    assert final(cut) == final(straight)


def test_launcher_report_settings_are_checked_before_anything_is_submitted(tmp_path):
    """A bad launcher setting ends the launch with one line and status 2, before any sbatch."""
    pytest.importorskip("submitit")
    proc = subprocess.run([sys.executable, str(ROOT / "run.py"), "-m", "hydra/launcher=okd_slurm",
                           "hydra.launcher.poll_s=0", f"hydra.sweep.dir={tmp_path}", "seed=0"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert errors == ["okd: error: hydra.launcher.poll_s must be > 0 and hydra.launcher.report_every_s >= 0 (0: "
                      "report only when the counts change), got poll_s=0.0, report_every_s=60.0"], proc.stderr
