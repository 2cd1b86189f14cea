"""Model selection: which epoch is the run's model, and which of its numbers is the headline.

One concept, one config group (``conf/selection/``): after every epoch the ``monitor`` value on the
selection ``split`` is compared with the best so far in direction ``mode``; an improvement makes that
epoch ``checkpoints/best.pt``. At the end, summary.json reports the report split's numbers under three
rules (the best epoch, the last epoch, the mean of the last ``last_n`` epochs) and ``headline`` names
the one Δm and the tables lead with (docs/metrics.md#model-selections).
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence


MODES = ("auto", "min", "max")
HEADLINES = ("best", "last", "last_n_mean")


class ModelSelection:
    """Best-epoch choice (``monitor``/``mode``/``split``) and the headline selection (``headline``/``last_n``)."""

    def __init__(self, monitor: str = "loss", mode: str = "auto", split: str | None = None,
                 headline: str = "best", last_n: int = 10) -> None:
        if mode not in MODES:
            raise ValueError(f"selection.mode={mode!r}: expected one of {list(MODES)} (auto: the metric's own direction)")
        if headline not in HEADLINES:
            raise ValueError(f"selection.headline={headline!r}: expected one of {list(HEADLINES)}")
        if not isinstance(last_n, int) or isinstance(last_n, bool) or last_n < 1:
            raise ValueError(f"selection.last_n must be a positive integer (epochs averaged by last_n_mean), got {last_n!r}")
        self.monitor, self.mode, self.split = monitor, mode, split
        self.headline, self.last_n = headline, last_n
        self.higher = False              # set by bind(): is a larger monitor value better?
        self.best: dict[str, Any] | None = None
        self.improved = False            # did the last update() choose its epoch?

    def bind(self, directions: Mapping[str, bool], default_split: str | None, splits: Sequence[str]) -> None:
        """Check the settings against the run's metrics and evaluated splits; fix split and direction."""
        if self.monitor != "loss" and self.monitor not in directions:
            raise ValueError(f"selection.monitor={self.monitor!r} is not a metric of these tasks; use 'loss' "
                           f"or one of {sorted(directions)}")
        split = self.split or default_split
        if split is None:
            raise ValueError("the dataset has no validation split (dataset.val_fraction=0) and model selection on "
                           "the test split must be asked for: set selection.split=test (the mtan/OKD practice) "
                           "or dataset.val_fraction>0 (default 0.2)")
        if split not in splits:
            raise ValueError(f"selection.split={split!r} is not evaluated in this run (evaluated: {list(splits)}); "
                           f"add it to trainer.eval_splits or choose one of them")
        self.split = split
        self.higher = directions.get(self.monitor, False) if self.mode == "auto" else self.mode == "max"

    def update(self, epoch: int, rows: Mapping[str, Mapping[str, float]]) -> bool:
        """Consider one epoch's evaluation rows; True when it is the new best."""
        value = rows[self.split][self.monitor]
        previous = None if self.best is None else self.best["value"]
        self.improved = math.isfinite(value) and (
            previous is None or (value > previous if self.higher else value < previous))
        if self.improved:
            self.best = {"epoch": epoch, "split": self.split, "monitor": self.monitor, "value": value,
                         "metrics": {s: dict(r) for s, r in rows.items()}}
        return self.improved

    def label(self) -> str:
        """How the best epoch was chosen, e.g. ``val loss 0.8123``."""
        best = self.best or {}
        return f"{best.get('split')} {best.get('monitor')} {best.get('value', float('nan')):.4g}"

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best = state.get("best")
        self.improved = False
