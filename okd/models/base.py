"""What every multi-task network provides (docs/architecture.md#multitaskmodel-and-modeloutput).

``model(x)`` returns a :class:`ModelOutput`: per-task predictions (already activated, e.g. unit
normals) and, from the same forward pass, the named stage features used for distillation. The model
also says which parameters are shared, which belong to task heads, which layer is the last shared
one (GradNorm), which feature is the shared representation the heads consume (MGDA-UB, GradDrop) and
which stage features are distilled by default (``distillation_stages``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
from torch import Tensor, nn

from okd.tasks import Task


@dataclass
class ModelOutput:
    predictions: dict[str, Tensor]
    features: dict[str, Tensor]


def task_heads_spec(tasks: Sequence[Task]) -> dict[str, int]:
    """Head channel count per task name, in task order."""
    return {t.name: t.channels for t in tasks}


class MultiTaskModel(nn.Module):
    """Base of every backbone: a shared trunk plus one head per task.

    Subclasses build ``self.heads`` (an ``nn.ModuleDict`` keyed by task name) and implement
    :meth:`trunk`, returning the representation the heads consume and the stage features.
    """

    #: name of the feature (in ``ModelOutput.features``) that the heads consume.
    representation_key: str = "representation"
    #: names of the stage features, in network order.
    feature_names: tuple[str, ...] = ()
    #: the stages distilled when ``kd.stages`` is not set (okd/kd/afd.py ``default_stages``); empty:
    #: every name in ``feature_names``. ``{task}`` marks per-column features (``{task}/layer3``).
    distillation_stages: tuple[str, ...] = ()
    #: the student features KD-MTL distils by default (okd/kd/offline.py); empty: the shared representation.
    kdmtl_stages: tuple[str, ...] = ()

    def __init__(self, tasks: Sequence[Task]) -> None:
        super().__init__()
        if not tasks:
            raise ValueError("a model needs at least one task")
        self.tasks = list(tasks)
        self.heads = nn.ModuleDict()

    def trunk(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        raise NotImplementedError

    def head_input(self, name: str, representation: Tensor, features: Mapping[str, Tensor]) -> Tensor:
        """What head ``name`` reads (the shared representation, unless a subclass says otherwise)."""
        return representation

    def forward(self, x: Tensor) -> ModelOutput:
        representation, features = self.trunk(x)
        features = {**features, self.representation_key: representation}
        predictions = {
            t.name: t.activate(self.heads[t.name](self.head_input(t.name, representation, features)))
            for t in self.tasks
        }
        return ModelOutput(predictions, features)

    def task_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.heads.parameters() if p.requires_grad]

    def shared_parameters(self) -> list[nn.Parameter]:
        head_ids = {id(p) for p in self.heads.parameters()}
        return [p for p in self.parameters() if p.requires_grad and id(p) not in head_ids]

    def last_shared_layer(self) -> nn.Module:
        raise NotImplementedError

    def last_shared_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.last_shared_layer().parameters() if p.requires_grad]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
