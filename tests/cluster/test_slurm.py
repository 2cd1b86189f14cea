"""okd on a real SLURM scheduler: a one-node cluster started by tests/cluster/slurm_cluster.sh (root only).

Every test launches `python run.py -m hydra/launcher=okd_slurm ...` as a user would, against slurmctld,
slurmd and slurmdbd (submitit polls sacct), and checks what lands on disk. SLURM delays the start of a
requeued batch job by two minutes (its begin time); the `cluster` fixture moves that begin time to now
(`scontrol update jobid=... StartTime=now`) as soon as it sees it, so that the tests do not wait on it.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.wandb_records import read_run

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tests" / "cluster" / "slurm_cluster.sh"
RUN = str(ROOT / "run.py")

pytestmark = pytest.mark.slurm

#: a small run that still takes several seconds, so that a signal lands in the middle of training
TRAIN = ["dataset.train_size=48", "dataset.val_size=8", "dataset.test_size=8", "dataset.height=32", "dataset.width=32",
         "trainer.batch_size=4", "trainer.epochs=4", "backbone.width=0.125"]
#: the preset asks for 1 GPU, 8 CPUs and 64 GB: this node has no GPU and two cores
RESOURCES = ["hydra/launcher=okd_slurm", "hydra.launcher.gpus_per_node=0", "hydra.launcher.mem_gb=1",
             "hydra.launcher.report_every_s=5", "hydra.launcher.poll_s=0.5"]


#: seconds a requeued job waits before the tests start it (SLURM itself waits 120)
RELEASE_AFTER_S = 15


@dataclass
class Cluster:
    env: dict

    def run(self, *args: str, check: bool = True) -> str:
        proc = subprocess.run(list(args), env=self.env, capture_output=True, text=True, timeout=60)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(args)}: {proc.stderr}")
        return proc.stdout

    def sweep(self, tmp_path: Path, *overrides: str) -> subprocess.Popen:
        """`run.py -m` in the background, its output in tmp_path/launcher.log."""
        log = open(tmp_path / "launcher.log", "w")
        return subprocess.Popen([sys.executable, RUN, "-m", *RESOURCES, f"hydra.sweep.dir={tmp_path / 'sweep'}",
                                 *overrides], cwd=tmp_path, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                text=True)

    def attempts(self, job: str) -> list[str]:
        """States of every run of one job (a requeued job has one line per attempt)."""
        return self.run("sacct", "-D", "-X", "-n", "-P", "-j", job, "-o", "State").split()


def finish(proc: subprocess.Popen, tmp_path: Path, timeout: float = 420) -> str:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"the launcher still waits after {timeout}s:\n{(tmp_path / 'launcher.log').read_text()}")
    out = (tmp_path / "launcher.log").read_text()
    assert proc.returncode == 0, f"run.py -m exited {proc.returncode}:\n{out}"
    return out


def wait_for(predicate, what: str, timeout: float = 180, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def trained_epochs(job_dir: Path) -> int:
    path = job_dir / "metrics.jsonl"
    if not path.is_file():
        return 0
    return len([1 for line in path.read_text().splitlines() if '"split": "train"' in line])


def rows(job_dir: Path) -> list[dict]:
    drop = ("time_s", "epoch_time_s")
    return [{k: v for k, v in json.loads(line).items() if k not in drop}
            for line in (job_dir / "metrics.jsonl").read_text().splitlines()]


def numbers(job_dir: Path) -> dict:
    """summary.json without what differs between two runs of the same computation (times, places, ids)."""
    summary = json.loads((job_dir / "summary.json").read_text())
    for key in ("run_dir", "time_s", "epoch_time_s_mean", "wandb"):
        summary.pop(key)
    # the tracker and the launcher are not part of the computation
    summary["choices"] = {k: v for k, v in summary["choices"].items() if k != "logger" and not k.startswith("hydra")}
    return summary


def wandb_ids(job_dir: Path) -> set[str]:
    """The W&B run ids of a job's offline runs (a resumed run adds a folder under the same id)."""
    return {path.name.rsplit("-", 1)[1] for path in job_dir.glob("wandb/offline-run-*")}


def wandb_epochs(job_dir: Path) -> set[int]:
    """Epochs logged by the last attempt, whose records must be complete (it ended normally)."""
    last = sorted(job_dir.glob("wandb/offline-run-*/run-*.wandb"))[-1]
    run = read_run(last)
    assert run["run"].run_id in wandb_ids(job_dir)
    return {int(row["epoch"]) for row in run["history"] if "epoch" in row}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("the SLURM tests start a one-node cluster (slurmctld, slurmd, slurmdbd, munged, mariadbd) and "
                    "need root: run them as root, e.g. `make test-cluster` in CI")
    was_up = subprocess.run(["bash", str(SCRIPT), "status"], capture_output=True).returncode == 0
    started = subprocess.run(["bash", str(SCRIPT), "start"], capture_output=True, text=True, timeout=900)
    if started.returncode != 0:
        pytest.skip(f"no SLURM cluster could be started here: {started.stderr.strip().splitlines()[-1:]}")
    conf = subprocess.run(["bash", str(SCRIPT), "env"], capture_output=True, text=True).stdout.split("=", 1)[1].strip()
    env = {**os.environ, "SLURM_CONF": conf, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    env.pop("HYDRA_FULL_ERROR", None)
    c = Cluster(env)
    stop = threading.Event()

    def release_requeued():
        # A requeued job may start only two minutes later (its BeginTime): start it sooner, once the
        # previous attempt's processes are surely gone (KillWait=10 s), since a start while its old step
        # is still being killed fails the job.
        seen: dict[str, float] = {}
        while not stop.wait(0.5):
            out = c.run("squeue", "-h", "-t", "PD", "-o", "%i %r", check=False)
            for job, reason in (line.split(None, 1) for line in out.splitlines() if line.strip()):
                if reason.strip() != "BeginTime":
                    continue
                first = seen.setdefault(job, time.monotonic())
                if time.monotonic() - first >= RELEASE_AFTER_S:
                    c.run("scontrol", "update", f"jobid={job}", "StartTime=now", check=False)
                    seen.pop(job)

    thread = threading.Thread(target=release_requeued, daemon=True)
    thread.start()
    yield c
    stop.set()
    thread.join()
    c.run("scancel", "--user=root", check=False)
    if not was_up:
        subprocess.run(["bash", str(SCRIPT), "stop"], capture_output=True, timeout=120)


def test_sweep_goes_through_sbatch_and_reports_while_jobs_wait(cluster, tmp_path):
    """Two jobs held in the queue: the launcher prints their state and pending reason until they are
    released, then collects both results and lists every job at the end."""
    started = time.monotonic()
    proc = cluster.sweep(tmp_path, *TRAIN, "trainer.epochs=1", "logger=none", "seed=0,1",
                         "hydra.launcher.cpus_per_task=1", "+hydra.launcher.additional_parameters.hold=true")
    log = tmp_path / "launcher.log"
    # the pending reason, and once what to do about it
    wait_for(lambda: "pending (JobHeldUser)" in log.read_text() and "scontrol release" in log.read_text(),
             "the pending reason in the launcher's output")
    array = re.search(r"job array (\d+) submitted", log.read_text()).group(1)
    cluster.run("scontrol", "release", array)
    out = finish(proc, tmp_path)
    print(f"two-job sweep: submit to results {time.monotonic() - started:.1f}s")
    sweep = tmp_path / "sweep"
    for job in ("0", "1"):
        assert (sweep / job / "summary.json").is_file()
        # the job's whole console output is in its run dir, without progress-bar carriage returns
        text = (sweep / job / "run.log").read_text()
        assert "epoch 1/1" in text and "results:" in text and "\r" not in text
    assert "2 running" in out or "1 running" in out
    # the closing screen: one line per job with its status and folder
    assert re.search(r"done .*seed=0", out) and re.search(r"done .*seed=1", out)


def test_sbatch_rejection_is_one_line(cluster, tmp_path):
    """The preset's GPU request on a cluster without GPUs: sbatch says no, okd says it in one line."""
    proc = subprocess.run([sys.executable, RUN, "-m", "hydra/launcher=okd_slurm", f"hydra.sweep.dir={tmp_path}",
                           *TRAIN, "logger=none"], cwd=tmp_path, env=cluster.env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert errors == [errors[0]] and errors[0].startswith("okd: error: sbatch refused the job array: ")
    assert "gres" in errors[0] and "gpus_per_node=1" in errors[0] and "Traceback" not in proc.stdout + proc.stderr


def test_preemption_by_a_higher_priority_job_resumes_exactly_with_wandb(cluster, tmp_path):
    """A job of the `urgent` partition preempts (requeues) the sweep's job; the job saves on SIGTERM,
    comes back, resumes under the same W&B run and ends with exactly the numbers of an uninterrupted run."""
    proc = cluster.sweep(tmp_path, *TRAIN, "logger=wandb", "seed=3", "hydra.launcher.cpus_per_task=2")
    job = tmp_path / "sweep" / "0"
    wait_for(lambda: trained_epochs(job) >= 1, "the first epoch of the sweep's job")
    preempted_at = time.monotonic()
    cluster.run("sbatch", "-p", "urgent", "-c", "1", "-o", str(tmp_path / "urgent.out"), "--wrap", "sleep 1")
    wait_for(lambda: "resuming from" in (job / "run.log").read_text(), "the requeued job to resume")
    resumed_after = time.monotonic() - preempted_at
    finish(proc, tmp_path)
    print(f"preemption: requeue to resume {resumed_after:.1f}s")
    text = (job / "run.log").read_text()
    assert "SIGTERM received: saved" in text
    job_id = re.search(r"job array (\d+) submitted", (tmp_path / "launcher.log").read_text()).group(1)
    assert cluster.attempts(job_id)[0] in ("REQUEUED", "PREEMPTED")  # one job: submitit sends no array
    assert len(wandb_ids(job)) == 1 and len(list(job.glob("wandb/offline-run-*"))) >= 2  # one run, resumed
    assert wandb_epochs(job) >= {3}  # the resumed attempt logged up to the last epoch

    reference = tmp_path / "uninterrupted"
    subprocess.run([sys.executable, RUN, *TRAIN, "logger=none", "seed=3", f"hydra.run.dir={reference}"],
                   cwd=tmp_path, env=cluster.env, check=True, capture_output=True, timeout=300)
    assert rows(job) == rows(reference)
    assert numbers(job) == numbers(reference)


def test_usr1_to_one_array_task_requeues_only_that_task_with_wandb(cluster, tmp_path):
    """SIGUSR1 (the time-limit warning) to the array task whose SLURM_JOB_ID is the array's id: only that
    task is requeued, its sibling runs on untouched, the launcher waits for both and exits 0."""
    proc = cluster.sweep(tmp_path, *TRAIN, "logger=wandb", "seed=0,1", "hydra.launcher.cpus_per_task=1")
    sweep = tmp_path / "sweep"
    wait_for(lambda: trained_epochs(sweep / "0") >= 1 and trained_epochs(sweep / "1") >= 1, "both jobs to train")
    array = re.search(r"job array (\d+) submitted", (tmp_path / "launcher.log").read_text()).group(1)
    ids = dict(line.split() for line in cluster.run("squeue", "-h", "-j", array, "-o", "%i %A").splitlines())
    (signalled,) = [task for task, job_id in ids.items() if job_id == array]
    sibling = next(task for task in ids if task != signalled)
    cluster.run("scancel", "--signal=USR1", signalled)
    finish(proc, tmp_path)
    index = {f"{array}_{i}": sweep / str(i) for i in (0, 1)}
    assert cluster.attempts(signalled)[0] == "REQUEUED" and len(cluster.attempts(signalled)) == 2
    assert cluster.attempts(sibling) == ["COMPLETED"]
    assert "SIGUSR1 received: saved" in (index[signalled] / "run.log").read_text()
    assert "resuming from" not in (index[sibling] / "run.log").read_text()
    for job_dir in index.values():
        assert (job_dir / "summary.json").is_file() and len(wandb_ids(job_dir)) == 1


def test_srun_torchrun_inside_an_sbatch_script_saves_and_requeues_on_usr1(cluster, tmp_path):
    """One run on two processes (DDP over gloo), started as the README's sbatch script does. The time-limit
    warning (USR1, sent by SLURM to every process of the step) reaches the workers directly: they save
    and requeue the job; torchrun, which USR1 would kill, ignores it (`trap '' USR1` in the script)."""
    script = tmp_path / "ddp.sh"
    run_dir = tmp_path / "ddp"
    torchrun = Path(sys.executable).parent / "torchrun"
    script.write_text("#!/bin/bash\n#SBATCH -c 2 --signal=USR1@60 --requeue\n"
                      f"srun bash -c \"trap '' USR1; exec {torchrun} --standalone --nproc_per_node=2 {RUN} "
                      f"{' '.join(TRAIN)} dataset.train_size=400 trainer.epochs=2 logger=none trainer.device=cpu "
                      f"hydra.run.dir={run_dir} trainer.resume=auto\"\n")
    job = cluster.run("sbatch", "--parsable", "-o", str(tmp_path / "ddp.out"), str(script)).strip()
    wait_for(lambda: (run_dir / "checkpoints" / "last.pt").is_file(), "the first epoch of the DDP job")
    cluster.run("scancel", "--signal=USR1", job)
    wait_for(lambda: cluster.attempts(job)[-1:] == ["COMPLETED"] and len(cluster.attempts(job)) == 2,
             "the requeued DDP job to finish", timeout=300, every=1)
    log = (run_dir / "run.log").read_text()
    assert "SIGUSR1 received: saved" in log and "resuming from" in log, (tmp_path / "ddp.out").read_text()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert "x 2 processes (DDP)" in log and summary["epochs"] == 2


def test_a_paper_sweep_is_one_command_with_kdmtl_in_a_second_job_array(cluster, tmp_path):
    """`+sweep=paper_*` on SLURM: the staged sweeper submits the single-task teachers as one job array, and
    KD-MTL as a second array only once they have finished; the sweep ends with the report."""
    proc = cluster.sweep(tmp_path, "+sweep=paper_synthetic_segnet", "experiment=kdmtl_sweep,stl_segmentation,stl_depth,"
                         "stl_normal", "seed=0", *TRAIN, "trainer.epochs=1", "logger=none",
                         "hydra.launcher.cpus_per_task=1")
    out = finish(proc, tmp_path)
    arrays = [int(a) for a in re.findall(r"job array (\d+) submitted", out)]
    assert len(arrays) == 2 and arrays[0] < arrays[1], out
    assert "okd.slurm: submitting 3 job(s)" in out and "okd.slurm: submitting 1 job(s)" in out
    sweep = tmp_path / "sweep"
    (kdmtl,) = sweep.glob("*experiment=kdmtl_sweep*")
    started = (kdmtl / ".hydra" / "overrides.yaml").stat().st_mtime
    for task in ("segmentation", "depth", "normal"):
        (teacher,) = sweep.glob(f"*experiment=stl_{task},*")
        assert (teacher / "summary.json").stat().st_mtime <= started
    assert json.loads((kdmtl / "summary.json").read_text())["epochs"] == 1
    assert (sweep / "report" / "report.md").is_file() and "# okd comparison report" in out
