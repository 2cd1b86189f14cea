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

    runtime = HydraConfig.get().runtime
    try:
        summary = run(cfg, Path(runtime.output_dir), dict(runtime.choices), list(HydraConfig.get().overrides.task))
    except (ValueError, OSError, TypeError, FloatingPointError) as err:
        print(f"okd: error: {err}", file=sys.stderr)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # in a sweep, fail this job only: the launcher/sweeper records it and goes on
        raise SystemExit(2) from None
    best = summary.get("best") or {} if isinstance(summary, dict) else {}
    return best.get("value")  # what a Hydra sweeper (e.g. Optuna) optimises


if __name__ == "__main__":
    main()
