"""KD-MTL, ``kd=kdmtl`` (docs/okd.md#kd-mtl): distillation from frozen single-task teachers.

Li & Bilen, "Knowledge Distillation for Multi-task Learning", ECCV Workshops 2020, Sec. 3, Eq. (2)-(3):
teachers are single-task networks trained beforehand (here: single-task checkpoints of this
framework, e.g. ``dataset.tasks=[depth]`` runs or teachers exported from a ``kd=okd`` run); per task
a bias-free 1x1 adaptor maps the student's feature into the teacher's space and

    L_KD = sum_i lambda_i (1/J) sum_j mean_{b,h,w} || n(A_ij(s_j)) - n(t_ij) ||^2,   lambda = (1, 1, 2)

with the channel normalisation n of AFD (okd/kd/afd.py with the gates fixed to 1). The task losses
are weighted by the configured weighting (KD-MTL: equal weights). Teachers never train: they run in
eval mode without a graph, and are not part of the run's checkpoints (they are reloaded from their
files on resume).
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from okd import distributed
from okd.kd.afd import AdaptiveFeatureDistillation, check_stages, stage_key
from okd.kd.base import Distiller
from okd.kd.online import OptimizerFactory
from okd.models.base import ModelOutput, MultiTaskModel
from okd.tasks import Task

#: docs/okd.md#kd-mtl: Adam, weight decay 5e-4; lr 1e-4 as in the ResNet release (the SegNet paper used 0.1).
DEFAULT_ADAPTOR_OPTIMIZER = functools.partial(torch.optim.Adam, lr=1e-4, weight_decay=5e-4)


def kdmtl_default_stages(model: nn.Module) -> list[str]:
    """KD-MTL's distilled features (docs/okd.md#kd-mtl): the model's ``kdmtl_stages`` (okd/models/; SegNet
    the encoder bottleneck and the last decoder feature, ResNet ``layer4``, per column for cross-stitch),
    otherwise the shared representation the heads read."""
    if getattr(model, "kdmtl_stages", ()):
        return list(model.kdmtl_stages)
    try:
        return [model.representation_key]
    except ValueError as err:
        raise ValueError(f"kd=kdmtl: no default stage for {type(model).__name__}; set kd.stages=[...] "
                         f"(features: {list(getattr(model, 'feature_names', ()))})") from err


class OfflineDistillation(Distiller):
    """``kd=kdmtl``: frozen single-task teachers loaded from checkpoints, adaptors, no gates.

    Args:
        teachers: ``{task: checkpoint file or run directory}``, one per task of the run; a run
            directory means its ``checkpoints/best.pt``.
        stages: distilled student features; None = :func:`kdmtl_default_stages`.
        task_weights: lambda_i by task (None: segmentation 1, depth 1, normal 2).
        adaptor_optimizer: factory ``params -> Optimizer`` for the adaptors.
        eps: epsilon of the channel normalisation.
    """

    def __init__(self, teachers: Mapping[str, str] | None = None, stages: Sequence[str] | None = None,
                 task_weights: Mapping[str, float] | None = None,
                 adaptor_optimizer: OptimizerFactory | None = None, eps: float = 1e-6) -> None:
        super().__init__()
        if teachers is not None and not isinstance(teachers, Mapping):
            raise ValueError(f"kd.teachers must map task names to checkpoint paths, got {teachers!r}")
        if adaptor_optimizer is not None and not callable(adaptor_optimizer):
            raise ValueError(f"kd.adaptor_optimizer must be a factory (_partial_: true), got {adaptor_optimizer!r}")
        self.teacher_paths = {k: v for k, v in (teachers or {}).items() if v is not None}  # null: no teacher
        self.stage_names = None if stages is None else list(stages)
        self.task_weight_map = None if task_weights is None else dict(task_weights)
        self.adaptor_optimizer_factory = adaptor_optimizer or DEFAULT_ADAPTOR_OPTIMIZER
        self.eps = float(eps)
        self.afd: AdaptiveFeatureDistillation | None = None
        self.adaptor_optimizer: torch.optim.Optimizer | None = None
        # Not submodules: frozen, never in a checkpoint, never switched to train mode.
        self.frozen_teachers: dict[str, MultiTaskModel] = {}
        self._sum: Tensor | None = None   # per-step AFD terms, summed on the device over an epoch
        self._steps = 0

    def setup(self, student: MultiTaskModel, tasks: Sequence[Task], device: torch.device,
              build_model: Callable[[Sequence[Task]], MultiTaskModel] | None = None) -> None:
        names = [t.name for t in tasks]
        if build_model is None:
            raise ValueError("kd=kdmtl needs a model builder (RunContext.build_model) to rebuild its teachers")
        missing = [n for n in names if n not in self.teacher_paths]
        extra = [n for n in self.teacher_paths if n not in names]
        if missing or extra:
            raise ValueError(
                f"kd=kdmtl needs one single-task teacher checkpoint per task of this run {names}: "
                + (f"missing {missing}" if missing else "") + ("; " if missing and extra else "")
                + (f"not tasks of this run: {extra}" if extra else "")
                + "; e.g. kd.teachers={segmentation: outputs/<seg run>, depth: ..., normal: ...}")
        self.tasks, self.device = list(tasks), torch.device(device)
        self.frozen_teachers = {t.name: self._load_teacher(t, build_model).to(self.device) for t in self.tasks}
        stages = self.stage_names or kdmtl_default_stages(student)
        check_stages(stages, student, "student", names)
        for name, teacher in self.frozen_teachers.items():
            check_stages(stages, teacher, f"{name} teacher", [name])
        self.afd = AdaptiveFeatureDistillation(names, stages, gates=False, adaptors=True, variant="per_task",
                                               task_weights=self.task_weight_map, eps=self.eps).to(self.device)

    def _load_teacher(self, task: Task, build_model: Callable[[Sequence[Task]], MultiTaskModel]) -> MultiTaskModel:
        from okd.engine.checkpoint import check_model_state, load_checkpoint

        given = Path(self.teacher_paths[task.name])
        path = given / "checkpoints" / "best.pt" if given.is_dir() else given
        if not path.is_file():
            raise FileNotFoundError(f"kd.teachers.{task.name}: no checkpoint at {path} (give a .pt file or the "
                                    f"run directory of a single-task run)")
        state = load_checkpoint(path, map_location="cpu")
        if state.get("tasks") != [task.name]:
            raise ValueError(f"kd.teachers.{task.name}: {path} was trained on tasks {state.get('tasks')}; a KD-MTL "
                             f"teacher must be a single-task {task.name!r} network (dataset.tasks=[{task.name}])")
        teacher = build_model([task])
        saved = {"num_classes": state.get("num_classes")}
        try:
            check_model_state(teacher, state["model"], path, saved,
                              {"num_classes": getattr(task, "num_classes", saved["num_classes"])})
        except ValueError as err:
            raise ValueError(f"kd.teachers.{task.name}: the teacher must have the student's backbone and settings "
                             f"(the checkpoint's run: {state.get('choices') or 'choices not recorded'}); {err}") from err
        teacher.load_state_dict(state["model"])
        teacher.requires_grad_(False)
        return teacher.eval()

    def training_step(self, images: Tensor, targets: Mapping[str, Tensor], student: ModelOutput) -> Tensor | None:
        with torch.no_grad():
            features = {}
            for name, teacher in self.frozen_teachers.items():
                out = teacher(images)                               # one pass per teacher, no graph
                features[name] = {k: out.features[k] for k in (stage_key(s, name) for s in self.afd.stages)}
        result = self.afd(student.features, features)
        if self.adaptor_optimizer is None:
            self.adaptor_optimizer = self.adaptor_optimizer_factory(self.afd.adaptor_parameters())
        self.adaptor_optimizer.zero_grad(set_to_none=True)
        self._sum = result.terms if self._sum is None else self._sum + result.terms
        self._steps += 1
        return result.total

    def after_step(self) -> None:
        if self.adaptor_optimizer is not None:
            distributed.average_gradients_(self.afd.adaptor_parameters())  # outside DDP's wrapper
            self.step(self.adaptor_optimizer)  # through the fp16 scaler, if any

    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        if not self._steps:
            return {}
        terms = distributed.average(self._sum / self._steps)
        per_task = terms.mean(dim=1)
        names = self.afd.term_names() + [f"afd/{t.name}" for t in self.tasks] + ["afd/total"]
        flat = torch.cat([terms.reshape(-1), per_task, (self.afd.task_weights * per_task).sum().reshape(1)]).tolist()
        self._sum, self._steps = None, 0
        return dict(zip(names, flat))

    def checkpoint_state(self) -> dict:
        return {"module": self.state_dict(), "afd_layout": self.afd.layout() if self.afd else None,
                "adaptor_optimizer": self.adaptor_optimizer.state_dict() if self.adaptor_optimizer else None,
                "teachers": {k: str(v) for k, v in self.teacher_paths.items()},
                # the running sums of the current epoch: a mid-epoch checkpoint resumes with them
                "epoch_sums": {"sum": None if self._sum is None else self._sum.detach().cpu(), "steps": self._steps}}

    def load_checkpoint_state(self, state: dict) -> None:
        if state.get("afd_layout") is not None and not self.afd.built:
            self.afd.build_layout(state["afd_layout"], device=self.device)
        self.load_state_dict(state["module"])
        if state.get("adaptor_optimizer") is not None:
            self.adaptor_optimizer = self.adaptor_optimizer_factory(self.afd.adaptor_parameters())
            self.adaptor_optimizer.load_state_dict(state["adaptor_optimizer"])
        sums = state.get("epoch_sums") or {"sum": None, "steps": 0}  # absent in older checkpoints
        self._sum = None if sums["sum"] is None else sums["sum"].to(self.device)
        self._steps = int(sums["steps"])
