"""okd entry point: ``python run.py [group=option ...] [key=value ...]`` (``-m`` for sweeps).

Hydra composes conf/config.yaml with the chosen options; okd.app instantiates the objects and
trains. Runs land in outputs/<date>/<time>/ (multiruns in outputs/multirun/...); the working
directory is not changed.
"""
from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

import okd.config  # noqa: F401  (registers the resolvers conf/ uses)


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    from okd.app import run  # imported after Hydra has parsed the command line: --help stays fast
    from okd.errors import OkdError

    runtime = HydraConfig.get().runtime
    try:
        summary = run(cfg, Path(runtime.output_dir), dict(runtime.choices), list(HydraConfig.get().overrides.task))
    # Bad input (okd.errors), and okd's own checks (ValueError, OSError, a non-finite loss), as one line;
    # anything else is a bug and keeps its traceback.
    except (OkdError, ValueError, OSError, FloatingPointError) as err:
        print(f"okd: error: {err}", file=sys.stderr)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # in a sweep, fail this job only: the launcher/sweeper records it and goes on
        raise SystemExit(2) from None
    best = summary.get("best") or {} if isinstance(summary, dict) else {}
    return best.get("value")  # what a Hydra sweeper (e.g. Optuna) optimises


def join_torchrun_job() -> bool:
    """Under ``torchrun --nproc_per_node=N``: join the process group before Hydra picks the run dir,
    so that every process uses rank 0's; only rank 0 writes Hydra's ``.hydra/`` snapshot."""
    from okd import distributed

    if not distributed.launched_with_torchrun():
        return False
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


if __name__ == "__main__":
    if join_torchrun_job():
        from okd import distributed

        try:
            main()
        finally:
            distributed.shutdown()
    else:
        main()
