"""``trainer.precision``: the autocast dtype and, for float16, the loss scaling of every optimizer step.

* ``32``: float32, no autocast;
* ``bf16``: forward passes under bfloat16 autocast (losses, metrics and weighting arithmetic stay in
  float32); no scaling needed;
* ``16``: float16 autocast and one ``torch.amp.GradScaler`` shared by the student's optimizer, the
  weighting's own parameters and the distiller's optimizers. A step whose gradients overflow is
  skipped and the scale halved; :meth:`Precision.step` says so, so that state derived from the step
  (e.g. FAMO's) stays where it was.
"""
from __future__ import annotations

import warnings

from typing import Any

import torch
from torch import Tensor

#: trainer.precision -> autocast dtype (None: float32, no autocast)
DTYPES = {"32": None, "bf16": torch.bfloat16, "16": torch.float16}


class Precision:
    """Autocast and (fp16) gradient scaling for one device; ``scaler`` is None unless float16."""

    def __init__(self, precision: str | int = 32) -> None:
        self.name = str(precision)
        if self.name not in DTYPES:
            raise ValueError(f"trainer.precision must be one of {list(DTYPES)}, got {precision!r} (32: float32; "
                             f"bf16: bfloat16 autocast; 16: float16 autocast with gradient scaling)")
        self.dtype = DTYPES[self.name]
        self.device_type = "cpu"
        self.scaler: torch.amp.GradScaler | None = None
        self._one: Tensor | None = None

    def setup(self, device: torch.device) -> None:
        self.device_type = device.type
        self.scaler = torch.amp.GradScaler(device.type) if self.name == "16" else None
        self._one = torch.ones((), device=device)

    def autocast(self):
        return torch.autocast(self.device_type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None)

    def loss_scale(self) -> Tensor | None:
        """S, the factor a weighting multiplies what it backpropagates by (a device tensor), or None."""
        return self.scaler.scale(self._one) if self.scaler is not None else None

    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        """Step ``optimizer`` (unscaled first under fp16); False when fp16 skipped the step."""
        if self.scaler is None:
            optimizer.step()
            return True
        self.scaler.unscale_(optimizer)
        # read the overflow flags before the optimizer's kernels are queued: GradScaler.step's own
        # read then finds the device idle, so a step costs one host sync, as with a plain scaler
        stepped = not found_inf(self.scaler, optimizer)
        self.scaler.step(optimizer)  # skips the step when a gradient overflowed
        return stepped

    def step_scheduler(self, scheduler: Any) -> None:
        """An epoch's LR step. fp16: GradScaler may skip every step of an epoch (while it finds its
        scale); PyTorch then warns that the scheduler stepped before the optimizer, which is expected."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step", category=UserWarning)
            scheduler.step()

    def update(self) -> None:
        """After every optimizer of the step has stepped: the next scale."""
        if self.scaler is not None:
            self.scaler.update()

    def state_dict(self) -> dict[str, Any] | None:
        return self.scaler.state_dict() if self.scaler is not None else None

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


def found_inf(scaler: torch.amp.GradScaler, optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``scaler.step(optimizer)`` will skip the step (after ``scaler.unscale_(optimizer)``):
    the flags GradScaler.step reads on the host to decide (torch keeps them per optimizer, privately)."""
    flags = scaler._per_optimizer_states[id(optimizer)].get("found_inf_per_device", {})
    return any(bool(v) for v in flags.values())
