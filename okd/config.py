"""OmegaConf resolvers used by conf/ (registered on import; run.py and the tests import this)."""
from __future__ import annotations

from datetime import datetime

from omegaconf import OmegaConf


def run_name(name: str, overrides: str = "") -> str:
    """W&B run name: the experiment name, then the command-line overrides that make this run."""
    return f"{name}[{overrides}]" if overrides else str(name)


_shared_start: datetime | None = None


def share_start_time(start: datetime) -> None:
    """Fix the time ``${okd_now:...}`` gives (torchrun: rank 0's, so every process picks one run dir)."""
    global _shared_start
    _shared_start = start


def now(pattern: str) -> str:
    """Like Hydra's ``${now:...}``, but the same in every process of a DDP job."""
    return (_shared_start or datetime.now()).strftime(pattern)


def register_resolvers() -> None:
    OmegaConf.register_new_resolver("okd_run_name", run_name, replace=True)
    OmegaConf.register_new_resolver("okd_now", now, use_cache=True, replace=True)


register_resolvers()

import okd.launch  # noqa: E402,F401  (resolvers of conf/sweep/ and experiment=kdmtl_sweep)
import okd.slurm  # noqa: E402,F401  (hydra/launcher=okd_slurm's schema)
