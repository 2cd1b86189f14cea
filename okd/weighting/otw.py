"""Online task weighting (OTW) (docs/okd.md#online-task-weighting-otw).

Jacob, Agarwal, Stenger, "Online Knowledge Distillation for Multi-task Learning", WACV 2023,
Sec. 3.3 (online task weighting): tasks on which the multi-task student lags its single-task
teacher the most get the largest weight.
"""
from __future__ import annotations

import torch
from torch import Tensor

from okd.weighting.arguments import is_number, require, require_choice
from okd.weighting.base import LossWeighting

VARIANTS = ("v2", "v1")


class OTW(LossWeighting):
    """Online task weighting from the student/teacher loss ratio of the last epoch.

    Jacob et al., WACV 2023, Sec. 3.3: lambda = 1 in the first epoch, then
    lambda_k = K g(exp(r_k / T)) / sum_j g(exp(r_j / T)), g(v) = min(v, clamp), with r_k the
    student/teacher epoch-loss ratio (``v2``) or that ratio capped at 1 plus a DWA-like rate
    (``v1``). Needs the teachers' epoch losses (``kd=okd``); docs/weighting.md#otw, #otw_v1.

    Args:
        temperature: T > 0 (0.1 released; 1.0 in v1).
        clamp: upper bound of exp(r/T) (10 released; None = no clamp, the v1 behaviour).
        variant: ``v2`` (default) or ``v1``.
    """

    needs_reference_losses = True

    def __init__(self, temperature: float = 0.1, clamp: float | None = 10.0, variant: str = "v2") -> None:
        super().__init__()
        require(is_number(temperature) and temperature > 0, "OTW", "temperature", "a finite number > 0",
                temperature)
        require(clamp is None or (is_number(clamp) and clamp > 0),
                "OTW", "clamp", "a number > 0 or null (no clamp)", clamp)
        require_choice("OTW", "variant", variant, VARIANTS)
        self.temperature = float(temperature)
        self.clamp = None if clamp is None else float(clamp)
        self.variant = variant

    def setup(self, num_tasks: int) -> None:
        self.register_buffer("lambdas", torch.ones(num_tasks))
        self.register_buffer("ratios", torch.full((num_tasks,), float("nan")))  # r_k behind lambdas
        self.register_buffer("previous", torch.full((num_tasks,), float("nan")))  # Lbar(e-1), for v1
        self.register_buffer("epochs_seen", torch.zeros((), dtype=torch.long))

    def weights(self, losses: Tensor) -> Tensor:
        # A copy: the buffer changes at the epoch end, weights already returned must not.
        return self.lambdas.to(device=losses.device, dtype=losses.dtype, copy=True)

    def on_epoch_end(self, epoch: int, train_losses: Tensor, reference_losses: Tensor | None = None) -> None:
        if reference_losses is None:
            raise ValueError("OTW needs the teachers' epoch losses (reference_losses), got None; use kd=okd")
        student = train_losses.detach().to(self.lambdas).reshape(-1)
        teacher = reference_losses.detach().to(self.lambdas).reshape(-1)
        if student.numel() != self.num_tasks or teacher.numel() != self.num_tasks:
            raise ValueError(f"OTW: expected {self.num_tasks} student and teacher losses, got "
                             f"{student.numel()} and {teacher.numel()}")
        first = int(self.epochs_seen) == 0          # the epoch that ended was the first one
        r = self.ratio(student, teacher, self.previous, first)
        self.ratios.copy_(r)
        self.lambdas.copy_(self.otw_weights(r))
        self.previous.copy_(student)
        self.epochs_seen += 1

    def epoch_logs(self) -> dict[str, float]:
        """``otw/ratio/<task>``: r_k of the epoch that just ended, which sets the next epoch's weights."""
        if int(self.epochs_seen) == 0:
            return {}
        return {f"otw/ratio/{name}": r for name, r in zip(self.bound.task_names, self.ratios.tolist())}

    def ratio(self, student: Tensor, teacher: Tensor, previous: Tensor, first: bool) -> Tensor:
        """r_k for the next epoch from the epoch that ended (``first``: it was epoch 0)."""
        r = student / teacher
        if self.variant == "v2":
            return r.clamp(max=1.0) if first else r
        r = r.clamp(max=1.0)          # min(r, 1); NaN stays NaN (guarded by g)
        return r if first else r + student / previous

    def otw_weights(self, r: Tensor) -> Tensor:
        """lambda = K g(exp(r/T)) / sum_j g(exp(r_j/T)) (docs/weighting.md#otw)."""
        k = r.numel()
        z = r.double() / self.temperature
        if self.clamp is None:
            if not bool(torch.isfinite(z).all()):  # once per epoch: a host check is affordable
                raise FloatingPointError(f"OTW (unclamped): non-finite loss ratio {r.tolist()}; a teacher "
                                         f"loss is 0 or not finite (set weighting.clamp to guard it)")
            return (k * torch.softmax(z, dim=0)).to(r.dtype)
        v = torch.exp(z).clamp(max=self.clamp)       # exp overflow -> inf -> clamp
        v = torch.where(torch.isnan(v), torch.full_like(v, self.clamp), v)   # g(NaN) = clamp
        return (k * v / v.sum()).to(r.dtype)
