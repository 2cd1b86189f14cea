"""What a fit works on besides the trainer's own settings: the objects okd.app builds from the config."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from okd.data.base import DataBundle
from okd.engine.selection import ModelSelection
from okd.kd.base import Distiller, NoDistillation
from okd.logging import Logger, NullLogger
from okd.models.base import MultiTaskModel
from okd.tasks import Task
from okd.weighting.base import Weighting


@dataclass
class RunContext:
    """Everything a fit needs besides the trainer's own settings (built by okd.app)."""

    model: MultiTaskModel
    tasks: list[Task]
    data: DataBundle
    weighting: Weighting
    run_dir: Path
    distiller: Distiller = field(default_factory=NoDistillation)
    logger: Logger = field(default_factory=NullLogger)
    #: which epoch is the run's model and which selection is the headline (conf/selection/)
    selection: ModelSelection = field(default_factory=ModelSelection)
    seed: int = 0
    config: dict = field(default_factory=dict)
    choices: dict = field(default_factory=dict)
    #: builds a fresh network of the configured backbone for a task list (teachers, STL baselines)
    build_model: Callable[[Sequence[Task]], MultiTaskModel] | None = None
    #: the single-task base of Δm: stl_runs, reference (conf: delta)
    delta: dict = field(default_factory=dict)
    #: the run's command-line overrides (saved in checkpoints: a resume compares its own with them)
    overrides: list = field(default_factory=list)
