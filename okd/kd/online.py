"""Online knowledge distillation, ``kd=okd`` (docs/okd.md).

Jacob, Agarwal, Stenger, "Online Knowledge Distillation for Multi-task Learning", WACV 2023:
single-task teachers are trained at the same time as the multi-task student and guide it through
adaptive feature distillation (okd/kd/afd.py, Sec. 3.2); their epoch losses drive online task
weighting (okd/weighting/otw.py, Sec. 3.3).

Per iteration (docs/okd.md#one-iteration), with the trainer's part in brackets:
1. [student forward: predictions and stage features from ONE pass; task losses]
2. every teacher: ONE forward pass, its own task loss, its backward (teacher graph freed at once);
   its stage features are detached before AFD sees them, so no distillation gradient reaches it;
3. the AFD loss is returned as the student's extra loss [the weighting backpropagates
   sum_k lambda_k L_k + L_AFD into student, adaptors and gates; the student optimizer steps,
   gates included];
4. :meth:`after_step`: every teacher optimizer and the adaptor optimizer step.
Per-step values (teacher losses, AFD terms) stay on the device; the host reads them once per epoch.
"""
from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

from okd import distributed
from okd.kd.afd import VARIANTS, AdaptiveFeatureDistillation, check_stages, default_stages, stage_key
from okd.engine.evaluation import evaluate_split
from okd.engine.loaders import batch_to_device
from okd.kd.base import Distiller
from okd.logging import console
from okd.models.base import ModelOutput, MultiTaskModel
from okd.tasks import Task

OptimizerFactory = Callable[..., torch.optim.Optimizer]
#: docs/okd.md#teachers: teachers use Adam, lr 1e-4, weight decay 1e-5, no schedule.
DEFAULT_TEACHER_OPTIMIZER = functools.partial(torch.optim.Adam, lr=1e-4, weight_decay=1e-5)
#: docs/okd.md#adaptive-feature-distillation-afd: adaptors use Adam, lr 1e-4, weight decay 5e-4.
DEFAULT_ADAPTOR_OPTIMIZER = functools.partial(torch.optim.Adam, lr=1e-4, weight_decay=5e-4)


class OnlineDistillation(Distiller):
    """``kd=okd``: one single-task teacher per task trained online, AFD into the student.

    Args:
        warmup_epochs: epochs each teacher trains alone before joint training (5 released).
        teacher_update_until: teachers stop updating from this (0-based) epoch on; None = never
            (CNN protocol); 100 in the transformer protocol. Frozen teachers run in eval mode.
        teacher_optimizer: factory ``params -> Optimizer`` (Hydra ``_partial_``), one per teacher.
        adaptor_optimizer: factory for the AFD adaptors' optimizer.
        teacher_backbone: factory ``tasks -> MultiTaskModel`` for the teachers (e.g. another
            width); None = the run's backbone (``build_model``).
        afd: False = no distillation loss (teachers still train: OTW only).
        stages: distilled features; None = the backbone's default (okd.kd.afd.default_stages).
        gates: learnable sigma; None = follow ``adaptive``.
        adaptors: 1x1 adaptors; None = follow ``adaptive`` (and off for token features).
        adaptive: False = plain feature distillation (sigma = 1, no adaptors).
        task_weights: lambda_i of L_AFD by task (None: segmentation 1, depth 1, normal 2).
        variant: ``per_task`` (CNN: per-task adaptors, gates, task weights) | ``summed`` (the
            transformer variant: one gated-sum target per block) | None = summed for ViT blocks
            and token sequences, per_task otherwise (okd/kd/afd.py).
        eps: epsilon of the channel normalisation.
    """

    provides_reference_losses = True

    def __init__(
        self,
        warmup_epochs: int = 5,
        teacher_update_until: int | None = None,
        teacher_optimizer: OptimizerFactory | None = None,
        adaptor_optimizer: OptimizerFactory | None = None,
        teacher_backbone: Callable[..., MultiTaskModel] | None = None,
        afd: bool = True,
        stages: Sequence[str] | None = None,
        gates: bool | None = None,
        adaptors: bool | None = None,
        adaptive: bool = True,
        task_weights: Mapping[str, float] | None = None,
        variant: str | None = None,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if not isinstance(warmup_epochs, int) or warmup_epochs < 0:
            raise ValueError(f"kd.warmup_epochs must be an integer >= 0, got {warmup_epochs!r}")
        if teacher_update_until is not None and (not isinstance(teacher_update_until, int) or teacher_update_until < 0):
            raise ValueError(f"kd.teacher_update_until must be null or an integer >= 0, got {teacher_update_until!r}")
        if not adaptive and (gates or adaptors):
            raise ValueError(f"kd.adaptive=false is plain feature distillation (no gates, no adaptors), but "
                             f"kd.gates={gates} kd.adaptors={adaptors}; leave them null or set adaptive=true")
        if variant not in (None, *VARIANTS):
            raise ValueError(f"kd.variant must be one of {list(VARIANTS)} or null (auto), got {variant!r}")
        for name, factory in (("teacher_optimizer", teacher_optimizer), ("adaptor_optimizer", adaptor_optimizer),
                              ("teacher_backbone", teacher_backbone)):
            if factory is not None and not callable(factory):
                raise ValueError(f"kd.{name} must be a factory (a config with _target_ and _partial_: true), "
                                 f"got {factory!r}")
        self.warmup_epochs = warmup_epochs
        self.teacher_update_until = teacher_update_until
        self.teacher_optimizer_factory = teacher_optimizer or DEFAULT_TEACHER_OPTIMIZER
        self.adaptor_optimizer_factory = adaptor_optimizer or DEFAULT_ADAPTOR_OPTIMIZER
        self.teacher_backbone = teacher_backbone
        self.use_afd = bool(afd)
        self.stage_names = None if stages is None else list(stages)
        self.use_gates = adaptive if gates is None else bool(gates)
        # None keeps "on for per_task, off for summed" (the paper's transformer variant has none).
        self.use_adaptors = (None if adaptive else False) if adaptors is None else bool(adaptors)
        self.task_weight_map = None if task_weights is None else dict(task_weights)
        self.variant = variant
        self.eps = float(eps)
        self.teachers = nn.ModuleDict()
        self.afd: AdaptiveFeatureDistillation | None = None
        self.epochs_done = 0   # joint-training epochs finished (a Python int: read every step, no sync)
        self.register_buffer("last_reference", torch.zeros(0))
        self._warmup_log: dict[str, float] = {}

    # -- set-up ----------------------------------------------------------------------------------
    def setup(self, student: MultiTaskModel, tasks: Sequence[Task], device: torch.device,
              build_model: Callable[[Sequence[Task]], MultiTaskModel] | None = None) -> None:
        builder = (lambda ts: self.teacher_backbone(tasks=list(ts))) if self.teacher_backbone else build_model
        if builder is None:
            raise ValueError("kd=okd builds one single-task teacher per task but was given no model builder "
                             "(RunContext.build_model) and no kd.teacher_backbone")
        self.tasks, self.device = list(tasks), torch.device(device)
        self.teachers = nn.ModuleDict({t.name: builder([t]) for t in self.tasks}).to(self.device)
        self.teacher_optimizers = {t.name: self.teacher_optimizer_factory(self.teachers[t.name].parameters())
                                   for t in self.tasks}
        if self.use_afd:
            names = [t.name for t in self.tasks]
            stages = self.stage_names or default_stages(student)
            check_stages(stages, student, "student", names)
            for name, teacher in self.teachers.items():
                check_stages(stages, teacher, f"{name} teacher", [name])
            self.afd = AdaptiveFeatureDistillation(
                names, stages, gates=self.use_gates, adaptors=self.use_adaptors,
                task_weights=self.task_weight_map, variant=self.variant, eps=self.eps).to(self.device)
            self._teacher_keys = {n: [stage_key(s, n) for s in stages] for n in names}
        self.adaptor_optimizer: torch.optim.Optimizer | None = None
        self.last_reference = torch.full((len(self.tasks),), float("nan"), device=self.device)
        self._reset_epoch()

    def student_param_groups(self) -> list[dict]:
        """The gates train with the student's optimizer (docs/okd.md#adaptive-feature-distillation-afd)."""
        if self.afd is not None and self.afd.gates is not None:
            return [{"params": [self.afd.gates]}]
        return []

    def _reset_epoch(self) -> None:
        k = len(self.tasks)
        self._teacher_loss_sum = torch.zeros(k, device=self.device)
        self._afd_sum = None
        self._steps = 0

    def _ensure_adaptor_optimizer(self) -> None:
        if self.adaptor_optimizer is None and self.afd is not None and self.afd.has_adaptors:
            self.adaptor_optimizer = self.adaptor_optimizer_factory(self.afd.adaptor_parameters())

    # -- state of the teachers -------------------------------------------------------------------
    @property
    def teachers_update(self) -> bool:
        until = self.teacher_update_until
        return until is None or self.epochs_done < until

    def train(self, mode: bool = True) -> "OnlineDistillation":
        super().train(mode)
        if not self.teachers_update:
            self.teachers.eval()  # frozen teachers: no batch-norm statistics updates either
        return self

    # -- warm-up (before epoch 0 of a fresh run) --------------------------------------------------
    def warmup(self, loader: Iterable[Mapping[str, Tensor]]) -> None:
        """Each teacher trains alone on its task for ``warmup_epochs`` (docs/okd.md#teachers).

        All teachers share each pass over the data (they are independent, so this equals training
        them one after the other, with one data pass per epoch instead of K).
        """
        if self.warmup_epochs == 0:
            return
        generator = getattr(loader, "generator", None)
        if generator is not None:  # warm-up data order follows the run's seed (global RNG)
            generator.manual_seed(int(torch.randint(0, 2**62, (1,))))
        self.teachers.train()
        for epoch in range(self.warmup_epochs):
            sums, steps = torch.zeros(len(self.tasks), device=self.device), 0
            for batch in loader:
                images, targets = self._to_device(batch)
                sums += self._teacher_steps(images, targets)
                steps += 1
            means = distributed.average(sums / max(steps, 1)).tolist()
            self._warmup_log = {f"teacher/warmup_loss/{t.name}": v for t, v in zip(self.tasks, means)}
            if distributed.is_main():
                console.info(f"okd warm-up epoch {epoch + 1}/{self.warmup_epochs}: teacher losses "
                             + ", ".join(f"{t.name} {v:.4g}" for t, v in zip(self.tasks, means)))

    def _teacher_steps(self, images: Tensor, targets: Mapping[str, Tensor]) -> Tensor:
        """One plain optimisation step of every teacher; returns the (K,) detached losses."""
        losses = []
        for t in self.tasks:
            out = self.teachers[t.name](images)
            loss = t.loss(out.predictions[t.name], targets[t.name])
            opt = self.teacher_optimizers[t.name]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            distributed.average_gradients_(self.teachers[t.name].parameters())  # DDP: whole-batch gradient
            opt.step()
            losses.append(loss.detach())
        return torch.stack(losses)

    # -- per step --------------------------------------------------------------------------------
    def training_step(self, images: Tensor, targets: Mapping[str, Tensor], student: ModelOutput) -> Tensor | None:
        teacher_features, losses = {}, []
        update = self.teachers_update
        for t in self.tasks:
            teacher = self.teachers[t.name]
            with torch.set_grad_enabled(update):
                out = teacher(images)                                    # the teacher's ONE forward pass
                loss = t.loss(out.predictions[t.name], targets[t.name])
            if update:
                self.teacher_optimizers[t.name].zero_grad(set_to_none=True)
                self.scaled(loss).backward()                             # its own loss only
            losses.append(loss.detach())
            if self.afd is not None:
                teacher_features[t.name] = {k: out.features[k].detach() for k in self._teacher_keys[t.name]}
        self._teacher_loss_sum += torch.stack(losses)
        self._steps += 1
        if self.afd is None:
            return None
        result = self.afd(student.features, teacher_features)
        self._ensure_adaptor_optimizer()
        if self.adaptor_optimizer is not None:
            self.adaptor_optimizer.zero_grad(set_to_none=True)
        self._afd_sum = result.terms if self._afd_sum is None else self._afd_sum + result.terms
        return result.total

    def after_step(self) -> None:
        # Teachers and adaptors live outside the student's DDP wrapper: under DDP their gradients are
        # averaged here, in one flat all-reduce each (identity in one process).
        if self.teachers_update:
            distributed.average_gradients_(self.teachers.parameters())
            for opt in self.teacher_optimizers.values():
                self.step(opt)
        if self.adaptor_optimizer is not None:
            distributed.average_gradients_(self.afd.adaptor_parameters())
            self.step(self.adaptor_optimizer)  # its gradients came scaled through the student's backward

    # -- per epoch -------------------------------------------------------------------------------
    def reference_losses(self) -> Tensor | None:
        """Teachers' mean training loss per task over the epoch that just ended (before
        :meth:`on_epoch_end`), afterwards that of the last finished epoch."""
        if self._steps > 0:
            return distributed.average(self._teacher_loss_sum / self._steps)
        return self.last_reference.clone() if self.epochs_done > 0 else None

    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        """Teacher losses (what OTW divides by), every gate sigma and AFD term: one host sync."""
        if self._steps == 0:
            return {}
        names = [f"teacher/loss/{t.name}" for t in self.tasks]
        values = [self._teacher_loss_sum / self._steps]
        self.last_reference.copy_(values[0])
        if self.afd is not None and self._afd_sum is not None:
            terms = self._afd_sum / self._steps
            names += self.afd.term_names()
            values.append(terms.reshape(-1))
            if terms.dim() == 2:   # per task: (1/J) sum_j d_ij, and the weighted total L_AFD
                names += [f"afd/{t.name}" for t in self.tasks] + ["afd/total"]
                per_task = terms.mean(dim=1)
                values += [per_task, (self.afd.task_weights * per_task).sum().reshape(1)]
            else:
                names.append("afd/total")
                values.append(terms.mean().reshape(1))
            names += self.afd.gate_names()
            values.append(self.afd.sigma().detach().reshape(-1))
        flat = distributed.average(torch.cat([v.detach().float().reshape(-1) for v in values])).tolist()
        # under DDP each process's teachers ran batch norm on its shard: keep rank 0's statistics
        distributed.broadcast_module_(self.teachers, buffers_only=True)
        logs = dict(zip(names, flat))
        logs["teacher/updating"] = float(self.teachers_update)
        if epoch == 0 and self._warmup_log:
            logs.update(self._warmup_log)
        self.epochs_done = epoch + 1
        self._reset_epoch()
        if not self.teachers_update:
            self.teachers.eval()
        return logs

    def evaluate(self, loader: Iterable[Mapping[str, Tensor]]) -> dict[str, float]:
        """Each teacher's loss and metrics on a split: the single-task baseline of this run."""
        was_training = self.teachers.training
        self.teachers.eval()
        row = evaluate_split(lambda images: {t.name: self.teachers[t.name](images).predictions[t.name]
                                             for t in self.tasks},
                             self.tasks, map(self._to_device, loader), self.device, prefix="teacher/")
        self.teachers.train(was_training and self.teachers_update)
        return row

    def _to_device(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        return batch_to_device(batch, [t.name for t in self.tasks], self.device)

    # -- checkpoints -----------------------------------------------------------------------------
    def checkpoint_state(self) -> dict:
        """Teachers, adaptors, gates, counters and every optimizer the distiller owns."""
        return {
            "module": self.state_dict(),
            "epochs_done": self.epochs_done,
            "afd_layout": self.afd.layout() if self.afd is not None else None,
            "teacher_optimizers": {name: opt.state_dict() for name, opt in self.teacher_optimizers.items()},
            "adaptor_optimizer": self.adaptor_optimizer.state_dict() if self.adaptor_optimizer else None,
            "epoch_sums": self._epoch_sums(),
        }

    def _epoch_sums(self) -> dict:
        """The running sums of the current epoch (zero right after an epoch's end). A checkpoint taken
        mid-epoch (a signal, checkpoint_every_n_steps) resumes with them, so the epoch's teacher losses
        (OTW's reference) and AFD terms are those of the whole epoch, not of its resumed part."""
        return {"teacher_loss_sum": self._teacher_loss_sum.detach().cpu(), "steps": self._steps,
                "afd_sum": None if self._afd_sum is None else self._afd_sum.detach().cpu(),
                "warmup_log": dict(self._warmup_log)}

    def load_checkpoint_state(self, state: dict) -> None:
        layout = state.get("afd_layout")
        if layout is not None:
            if self.afd is None:
                raise ValueError("the checkpoint has AFD adaptors/gates but this run has kd.afd=false")
            if not self.afd.built:
                self.afd.build_layout(layout, device=self.device)
        self.load_state_dict(state["module"])
        self.epochs_done = int(state["epochs_done"])
        for name, opt in self.teacher_optimizers.items():
            opt.load_state_dict(state["teacher_optimizers"][name])
        self._ensure_adaptor_optimizer()
        if state.get("adaptor_optimizer") is not None:
            self.adaptor_optimizer.load_state_dict(state["adaptor_optimizer"])
        self._reset_epoch()
        sums = state.get("epoch_sums")
        if sums is not None:  # absent in checkpoints written before they were saved
            self._teacher_loss_sum = sums["teacher_loss_sum"].to(self.device)
            self._afd_sum = None if sums["afd_sum"] is None else sums["afd_sum"].to(self.device)
            self._steps = int(sums["steps"])
            self._warmup_log = dict(sums["warmup_log"])
        self.train(self.training)


# ---------------------------------------------------------------------------------------------
# Teachers as standalone single-task checkpoints
# ---------------------------------------------------------------------------------------------
def export_teachers(checkpoint: str | Path, out_dir: str | Path) -> list[Path]:
    """Write each OKD teacher of a run checkpoint as a single-task checkpoint ``<out_dir>/<task>.pt``.

    The files have the trainer's checkpoint layout (``model``, ``tasks``, ``num_classes``,
    ``choices``), so that ``kd=kdmtl`` can load them as teachers and a single-task run can resume
    from / be evaluated with them.
    """
    from okd.engine.checkpoint import load_checkpoint, save_checkpoint

    path = _checkpoint_file(checkpoint)
    state = load_checkpoint(path, map_location="cpu")
    module = (state.get("distiller") or {}).get("module", {})
    out, written = Path(out_dir), []
    for task in state.get("tasks", []):
        prefix = f"teachers.{task}."
        weights = {k[len(prefix):]: v for k, v in module.items() if k.startswith(prefix)}
        if not weights:
            raise ValueError(f"{path} holds no teacher for task {task!r}: is it a kd=okd run?")
        target = out / f"{task}.pt"
        save_checkpoint(target, {
            "version": state.get("version"), "epoch": state.get("epoch"), "model": weights,
            "tasks": [task], "num_classes": state.get("num_classes"), "choices": dict(state.get("choices") or {}),
            "source": {"checkpoint": str(path), "role": "okd teacher"},
        })
        written.append(target)
    return written


def _checkpoint_file(path: str | Path) -> Path:
    """A checkpoint file, or a run dir (its ``checkpoints/last.pt``)."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoints" / "last.pt"
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path} (give a .pt file or a run directory)")
    return path


def main(argv: list[str] | None = None) -> None:
    """``python -m okd.kd.online export <checkpoint|run dir> <out dir>``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m okd.kd.online",
                                     description="Export the teachers of a kd=okd run as single-task checkpoints")
    parser.add_argument("command", choices=["export"])
    parser.add_argument("checkpoint", help="a run's checkpoint (.pt) or run directory (uses checkpoints/last.pt)")
    parser.add_argument("out_dir")
    args = parser.parse_args(argv)
    try:
        written = export_teachers(args.checkpoint, args.out_dir)
    except (FileNotFoundError, ValueError) as err:
        parser.exit(1, f"okd.kd.online: {err}\n")
    for p in written:
        print(p)


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
