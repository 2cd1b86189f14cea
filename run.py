"""okd entry point: ``python run.py [group=option ...] [key=value ...]`` (``-m`` for sweeps).

Hydra composes conf/config.yaml with the chosen options; okd.app instantiates the objects and
trains. Runs land in outputs/<date>/<time>/ (multiruns in outputs/multirun/...); the working
directory is not changed.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

import okd.config  # noqa: F401  (registers the resolvers conf/ uses)
from okd.launch import launched_with_torchrun


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    from okd.app import run  # imported after Hydra has parsed the command line: --help stays fast
    from okd.errors import OkdError

    logging.captureWarnings(True)  # warnings join the console and run.log
    runtime = HydraConfig.get().runtime
    try:
        summary = run(cfg, Path(runtime.output_dir), dict(runtime.choices), list(HydraConfig.get().overrides.task))
    # Bad input (okd.errors), and okd's own checks (ValueError, OSError, a non-finite loss), as one line;
    # anything else is a bug and keeps its traceback.
    except (OkdError, ValueError, OSError, FloatingPointError) as err:
        report_error(f"okd: error: {err}")
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # in a sweep, fail this job only: the launcher/sweeper records it and goes on
        raise SystemExit(2) from None
    from okd.results import sweeper_value

    return sweeper_value(summary)  # best.value of summary.json: what a Hydra sweeper (e.g. Optuna) optimises


def report_error(message: str) -> None:
    """One line on stderr, and in the run's run.log (Hydra's file handler) with the rest of the run."""
    print(message, file=sys.stderr, flush=True)
    record = logging.LogRecord("okd", logging.ERROR, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def join_torchrun_job() -> bool:
    """Under ``torchrun --nproc_per_node=N``: join the process group before Hydra picks the run dir,
    so that every process uses rank 0's; only rank 0 writes Hydra's ``.hydra/`` snapshot."""
    if not launched_with_torchrun():
        return False
    from okd import distributed  # torch: imported only in torchrun's workers, so --help stays fast

    if any(arg in ("-m", "--multirun") for arg in sys.argv[1:]):
        print("okd: error: torchrun trains ONE run on several processes; a sweep (-m) launches many runs: use "
              "hydra/launcher=okd_joblib or okd_slurm for sweeps, torchrun for one run", file=sys.stderr)
        raise SystemExit(2)
    distributed.init_from_env()
    from datetime import datetime

    okd.config.share_start_time(distributed.broadcast_object(datetime.now()))
    if not distributed.is_main() and not any(a.startswith("hydra.output_subdir=") for a in sys.argv[1:]):
        sys.argv.append("hydra.output_subdir=null")
    return True


def list_sweep_jobs() -> None:
    """After ``-m`` (finished or not): one screen with every job of the sweep (okd.launch.sweep_summary),
    then the comparison report of its runs (okd.launch.sweep_report: files in <sweep dir>/report/, the
    table printed, a W&B run of the sweep's group); neither can fail the sweep."""
    from okd import launch

    root = launch.sweep_dir()
    if root is not None and root.is_dir():
        try:
            print(launch.sweep_summary(root), flush=True)
        except Exception as err:  # noqa: BLE001  (the jobs' own results are written; this is a digest)
            print(f"okd: could not summarise the sweep in {root}: {err}", file=sys.stderr)
        launch.sweep_report(root)


if __name__ == "__main__":
    sys.argv[1:], moved = okd.config.moved_overrides(sys.argv[1:])  # old model-selection keys keep working
    for note in moved:
        print(note, file=sys.stderr)
    if (null_group := okd.config.null_group_error(sys.argv[1:])) is not None:  # `protocol=null`: Hydra's traceback
        print(null_group, file=sys.stderr)
        raise SystemExit(2)
    if join_torchrun_job():
        from okd import distributed

        try:
            main()
        finally:
            distributed.shutdown()
    else:
        try:
            main()
        finally:
            list_sweep_jobs()
