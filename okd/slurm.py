"""SLURM: okd's launcher for ``hydra/launcher=okd_slurm`` and what a job needs to know about its queue.

:class:`SlurmLauncher` submits a sweep as one job array through submitit, as hydra-submitit-launcher
does, and adds what a cluster user needs while waiting:

* an sbatch rejection (a partition without GPUs, too much memory) ends the launch with one line
  naming sbatch's reason and the preset's resource keys, instead of a traceback;
* while jobs wait, a status line every ``report_every_s`` seconds: how many jobs are pending, running,
  requeued or done, and the scheduler's reason for the pending ones (``Resources``, ``Priority``,
  ``PartitionConfig``, ...);
* requeued jobs (preemption, time limit) are waited for however often they come back; a job that SLURM
  ended without a result (cancelled, node failure) becomes a failed job of the sweep, named with its
  state and log file, and the others are still collected.

:func:`requeue_target` is the job id ``scontrol requeue`` must get: for an array task that is
``<array id>_<task id>``, because the plain ``SLURM_JOB_ID`` of an array's first task equals the array's
id, and requeueing that id requeues every task of the array.
"""
from __future__ import annotations

import collections
import contextlib
import io
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

log = logging.getLogger(__name__)

#: job states after which a job comes back (submitit waits through them too)
WAITING = {"PENDING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESV_DEL_HOLD", "CONFIGURING", "SUSPENDED",
           "PREEMPTED", "UNKNOWN", "READY"}
RUNNING = {"RUNNING", "COMPLETING", "RESIZING", "SIGNALING", "STAGE_OUT"}


#: pending reasons that will not clear by waiting, and what to do about them
STUCK = {
    "PartitionConfig": "the job asks for more than the partition allows (CPUs, memory, GPUs per node): lower "
                       "hydra.launcher.cpus_per_task / mem_gb / gpus_per_node, or pick another partition",
    "PartitionTimeLimit": "hydra.launcher.timeout_min is above the partition's MaxTime: lower it (a longer run "
                          "continues in its requeued job)",
    "PartitionNodeLimit": "hydra.launcher.nodes is above the partition's limit",
    "ReqNodeNotAvail": "the nodes the job may use are down or reserved (see `sinfo`)",
    "InvalidAccount": "hydra.launcher.account is not an account of yours (see `sacctmgr show assoc user=$USER`)",
    "InvalidQOS": "hydra.launcher.qos is not allowed here",
    "JobHeldUser": "the jobs are held: `scontrol release <job id>` starts them",
    "JobHeldAdmin": "an administrator holds the jobs",
}


def requeue_target(env: Mapping[str, str] | None = None) -> str | None:
    """The id to give ``scontrol requeue`` from inside a job: only this job, never its array siblings."""
    env = os.environ if env is None else env
    array, task = env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return env.get("SLURM_JOB_ID")


def pending_reasons(job_ids: Sequence[str]) -> dict[str, str]:
    """``{job id: reason}`` of the pending jobs among ``job_ids`` (one ``squeue`` call; empty if it fails)."""
    arrays = sorted({j.split("_")[0] for j in job_ids})
    try:
        out = subprocess.run(["squeue", "-h", "-t", "PD", "-j", ",".join(arrays), "-o", "%i|%r"],
                             capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    reasons = {}
    for line in out.splitlines():
        job, _, reason = line.strip().partition("|")
        if reason and reason != "None":  # "None": no reason yet, the scheduler has not looked at it
            reasons[job] = reason
    return reasons


def status_line(states: Mapping[str, str], reasons: Mapping[str, str]) -> str:
    """``3 jobs: 1 pending (Resources), 1 running, 1 done`` from submitit/sacct states and squeue reasons."""
    counts: collections.Counter[str] = collections.Counter()
    for state in states.values():
        state = state.split()[0].upper() if state else "UNKNOWN"
        if state in RUNNING:
            counts["running"] += 1
        elif state == "PENDING" or state == "UNKNOWN":
            counts["pending"] += 1
        elif state in WAITING:
            counts["requeued"] += 1
        else:
            counts["done"] += 1
    why = collections.Counter(reasons.values())
    parts = []
    for kind in ("pending", "requeued", "running", "done"):
        if counts[kind]:
            text = f"{counts[kind]} {kind}"
            if kind == "pending" and why:
                text += " (" + ", ".join(f"{r}: {n}" if len(why) > 1 else r for r, n in why.most_common()) + ")"
            parts.append(text)
    return f"{len(states)} job(s): " + ", ".join(parts or ["none left"])


# ---------------------------------------------------------------------------------------------
# The launcher (needs hydra-submitit-launcher: pip install -e '.[sweeps]')
# ---------------------------------------------------------------------------------------------
try:
    from hydra.core.config_store import ConfigStore
    from hydra.core.utils import JobReturn, JobStatus
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf, SlurmQueueConf
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as _SubmititSlurmLauncher
except ImportError:  # the `sweeps` extra is not installed: hydra/launcher=okd_slurm says so when composed
    SUBMITIT = False
else:
    SUBMITIT = True

    @dataclass
    class OkdSlurmQueueConf(SlurmQueueConf):
        """hydra-submitit-launcher's SLURM settings plus okd's: how often the launcher reports."""

        _target_: str = "hydra_plugins.okd_launcher.SlurmLauncher"
        #: seconds between two status lines while jobs wait or run (0: only changes of the counts)
        report_every_s: float = 60.0
        #: seconds between two looks at the queue
        poll_s: float = 2.0

    ConfigStore.instance().store(group="hydra/launcher", name="okd_submitit_slurm", node=OkdSlurmQueueConf,
                                 provider="okd")

    class SlurmLauncher(_SubmititSlurmLauncher):
        """hydra-submitit-launcher's SLURM launcher with clear submission errors and queue reports."""

        def __init__(self, report_every_s: float = 60.0, poll_s: float = 2.0, **params: Any) -> None:
            if not float(poll_s) > 0 or not float(report_every_s) >= 0:
                # before anything is submitted; one line, as for every bad input (Hydra would wrap an exception)
                print(f"okd: error: hydra.launcher.poll_s must be > 0 and hydra.launcher.report_every_s >= 0 (0: "
                      f"report only when the counts change), got poll_s={poll_s}, report_every_s={report_every_s}",
                      file=sys.stderr, flush=True)
                raise SystemExit(2)
            super().__init__(**params)
            self.report_every_s = float(report_every_s)
            self.poll_s = float(poll_s)

        def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[Any]:
            from hydra.core.singleton import Singleton
            from hydra.core.utils import filter_overrides

            assert self.config is not None
            executor = self._executor()
            sweep_dir = Path(str(self.config.hydra.sweep.dir))
            sweep_dir.mkdir(parents=True, exist_ok=True)
            log.info(f"okd.slurm: submitting {len(job_overrides)} job(s) as one array; sweep dir {sweep_dir}")
            args = []
            for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
                log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
                args.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state()))
            jobs = self._submit(executor, args)
            log.info(f"okd.slurm: job array {jobs[0].job_id.split('_')[0]} submitted; its logs: "
                     f"{Path(str(self.params['submitit_folder']).replace('%j', '<job id>'))}")
            self._wait(jobs)
            return [self._result(job, list(overrides)) for job, overrides in zip(jobs, job_overrides)]

        def _executor(self) -> Any:
            """A submitit executor with the launcher's parameters (the plugin's mapping of them)."""
            import submitit

            params = dict(self.params)
            folder = params.pop("submitit_folder")
            executor = submitit.AutoExecutor(folder=folder, cluster=self._EXECUTOR,
                                             slurm_max_num_timeout=params.pop("max_num_timeout"))
            shared = set(BaseQueueConf.__dataclass_fields__)
            executor.update_parameters(**{k if k in shared else f"slurm_{k}": v for k, v in params.items()})
            return executor

        def _submit(self, executor: Any, args: list[tuple]) -> list[Any]:
            from submitit.core.utils import FailedJobError

            try:
                # submitit prints sbatch's stderr itself before raising: keep it for the one line below
                with contextlib.redirect_stderr(io.StringIO()):
                    return executor.map_array(self, *zip(*args))
            except FailedJobError as err:
                reason = " ".join(str(err).split()) or "no reason given"
                keys = {k: self.params.get(k) for k in ("partition", "gpus_per_node", "cpus_per_task", "mem_gb",
                                                        "timeout_min", "constraint", "account", "qos")}
                asked = ", ".join(f"{k}={v}" for k, v in keys.items() if v is not None)
                print(f"okd: error: sbatch refused the job array: {reason} (asked for {asked}; set the "
                      f"hydra.launcher.* keys to what the partition offers, see README \"SLURM\")",
                      file=sys.stderr, flush=True)
                raise SystemExit(2) from None

        def _wait(self, jobs: list[Any]) -> None:
            """Poll until every job has a result or has ended, reporting the queue as it goes."""
            last_report, last_line, hinted = float("-inf"), "", set()
            while True:
                done = [job.done() for job in jobs]
                if all(done):
                    break
                states = {job.job_id: ("COMPLETED" if d else job.state) for job, d in zip(jobs, done)}
                now = time.monotonic()
                due = self.report_every_s > 0 and now - last_report >= self.report_every_s
                counts = status_line(states, {})
                if due or counts != last_line:
                    waiting = [j for j, s in states.items() if s.upper() in ("PENDING", "UNKNOWN", "REQUEUED")]
                    reasons = pending_reasons(waiting) if waiting else {}
                    log.info(f"okd.slurm: {status_line(states, reasons)}")
                    for reason in sorted(set(reasons.values()) & set(STUCK) - hinted):
                        log.warning(f"okd.slurm: pending for {reason}: {STUCK[reason]}; `scancel "
                                    f"{jobs[0].job_id.split('_')[0]}` ends the sweep")
                        hinted.add(reason)
                    last_report, last_line = now, counts
                time.sleep(self.poll_s)
            log.info(f"okd.slurm: all {len(jobs)} job(s) ended")

        def _result(self, job: Any, overrides: list[str]) -> Any:
            """The job's JobReturn; a job SLURM ended without one (cancelled, node failure) becomes a
            failed JobReturn, so the sweep reports it and the other jobs' results are kept."""
            try:
                return job.results()[0]
            except Exception as err:  # submitit's UncompletedJobError/FailedJobError carry the log tail
                ret = JobReturn(overrides=overrides, status=JobStatus.FAILED)
                first = str(err).strip().splitlines()[:2]
                ret.return_value = RuntimeError(f"SLURM job {job.job_id} ended without a result (state "
                                                f"{job.state}): {' '.join(first)}; log: {job.paths.stderr}")
                return ret
