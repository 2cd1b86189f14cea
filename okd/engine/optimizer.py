"""The optimizer and LR scheduler of a fit, from the factories of ``conf/trainer/`` (Hydra ``_partial_``)."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch


def build_optimizer(optimizer: Callable[..., torch.optim.Optimizer], scheduler: Callable[..., Any] | None,
                    param_groups: Sequence[dict]) -> tuple[torch.optim.Optimizer, Any]:
    """One optimizer over every group the step updates (student, distiller's student-side modules,
    the weighting's own parameters); torch's own checks become one line naming the config."""
    try:
        built = optimizer(list(param_groups))
        return built, scheduler(built) if scheduler else None
    except (ValueError, TypeError) as err:  # torch's own checks: "Invalid learning rate: -1.0", ...
        raise ValueError(f"trainer.optimizer/scheduler: {err} (see conf/trainer/default.yaml for valid "
                         f"settings: lr >= 0, weight_decay >= 0, ...)") from err
