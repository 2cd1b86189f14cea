"""OmegaConf resolvers used by conf/ (registered on import; run.py and the tests import this)."""
from __future__ import annotations

from omegaconf import OmegaConf


def run_name(name: str, overrides: str = "") -> str:
    """W&B run name: the experiment name, then the command-line overrides that make this run."""
    return f"{name}[{overrides}]" if overrides else str(name)


def register_resolvers() -> None:
    OmegaConf.register_new_resolver("okd_run_name", run_name, replace=True)


register_resolvers()

import okd.launch  # noqa: E402,F401  (resolvers of conf/sweep/ and experiment=kdmtl_sweep)
