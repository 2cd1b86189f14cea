"""A 3-task toy shared by the gradient-weighting tests (imported by name; not a test module).

Shared ``nn.Linear(4, 5)`` + tanh gives the representation Z; three ``nn.Linear(5, 1)`` heads
regress three different linear targets (MSE). Everything is seeded by local generators, float64.
"""
from __future__ import annotations

import io
from typing import Callable

import torch
from torch import Tensor, nn

from okd.weighting.base import BoundModel, Weighting

TASKS = ["a", "b", "c"]


class Toy:
    def __init__(self, seed: int = 0, n: int = 16) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.shared = nn.Linear(4, 5).double()
        self.heads = nn.ModuleList(nn.Linear(5, 1).double() for _ in TASKS)
        with torch.no_grad():
            for p in list(self.shared.parameters()) + list(self.heads.parameters()):
                p.copy_(0.5 * torch.randn(p.shape, generator=gen, dtype=torch.float64))
        self.x = torch.randn(n, 4, generator=gen, dtype=torch.float64)
        coef = torch.randn(4, len(TASKS), generator=gen, dtype=torch.float64)
        self.y = self.x @ coef
        self.bound = BoundModel(
            task_names=list(TASKS),
            shared_parameters=list(self.shared.parameters()),
            task_parameters=[p for h in self.heads for p in h.parameters()],
        )

    def forward(self) -> tuple[Tensor, Tensor]:
        """(losses (3,), representation Z) from one forward pass."""
        z = torch.tanh(self.shared(self.x))
        losses = torch.stack([((h(z)[:, 0] - self.y[:, k]) ** 2).mean() for k, h in enumerate(self.heads)])
        return losses, z

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    def parameters(self) -> list[nn.Parameter]:
        return self.bound.shared_parameters + self.bound.task_parameters

    def shared_grad(self) -> Tensor:
        return torch.cat([p.grad.reshape(-1) for p in self.bound.shared_parameters])

    def head_grad(self) -> Tensor:
        return torch.cat([p.grad.reshape(-1) for p in self.bound.task_parameters])

    def reference(self) -> dict[str, Tensor]:
        """Per-task gradients from a separate forward pass: G (K x P), heads (K x H), z (K, B, 5)."""
        losses, z = self.forward()
        shared, heads = self.bound.shared_parameters, self.bound.task_parameters
        rows, head_rows, z_rows = [], [], []
        for k in range(len(TASKS)):
            gs = torch.autograd.grad(losses[k], shared + heads + [z], retain_graph=True, allow_unused=True)
            rows.append(torch.cat([g.reshape(-1) for g in gs[: len(shared)]]))
            head_rows.append(torch.cat([
                (g if g is not None else torch.zeros_like(p)).reshape(-1)
                for g, p in zip(gs[len(shared):-1], heads)
            ]))
            z_rows.append(gs[-1])
        return {"losses": losses.detach(), "G": torch.stack(rows), "heads": torch.stack(head_rows),
                "z": torch.stack(z_rows), "Z": z.detach()}

    def encoder_vjp(self, grad_z: Tensor) -> Tensor:
        """J_Z^T grad_z for the shared parameters (what Z.backward(grad_z) puts in .grad)."""
        _, z = self.forward()
        gs = torch.autograd.grad(z, self.bound.shared_parameters, grad_outputs=grad_z)
        return torch.cat([g.reshape(-1) for g in gs])


def bound_method(make: Callable[[], Weighting], toy: Toy) -> Weighting:
    method = make()
    method.bind(toy.bound)
    return method


def copy_state(src: Weighting, dst: Weighting) -> None:
    """Checkpoint round trip through torch.save (what a resume does)."""
    buf = io.BytesIO()
    torch.save(src.checkpoint_state(), buf)
    buf.seek(0)
    dst.load_checkpoint_state(torch.load(buf, weights_only=True))  # as okd/engine/checkpoint.py


def step(method: Weighting, toy: Toy, extra: bool = False) -> Tensor:
    """One backward of ``method`` on a fresh forward; returns the weights."""
    toy.zero_grad()
    for p in method.parameters():
        p.grad = None
    losses, z = toy.forward()
    extra_loss = 0.3 * (z**2).mean() if extra else None
    rep = z if method.needs_representation else None
    return method.backward(losses, extra_loss=extra_loss, representation=rep)


def check_descent(make: Callable[[], Weighting], steps: int = 40, lr: float = 0.1) -> None:
    """Finite gradients every step and all three losses lower after ``steps`` SGD steps."""
    toy = Toy(seed=1)
    method = bound_method(make, toy)
    params = toy.parameters() + [p for g in method.param_groups() for p in g["params"]]
    opt = torch.optim.SGD(params, lr=lr)
    start = toy.forward()[0].detach()
    for _ in range(steps):
        weights = step(method, toy)
        assert torch.isfinite(weights).all()
        assert all(torch.isfinite(p.grad).all() for p in toy.parameters())
        opt.step()
    end = toy.forward()[0].detach()
    assert (end < start).all(), f"losses did not all decrease: {start.tolist()} -> {end.tolist()}"


def check_extra_loss(make: Callable[[], Weighting]) -> None:
    """extra_loss adds its own gradient to the shared .grad and leaves the heads' alone."""
    toy = Toy(seed=2)
    plain = bound_method(make, toy)
    with_extra = bound_method(make, toy)
    copy_state(plain, with_extra)
    step(plain, toy)
    shared, heads = toy.shared_grad(), toy.head_grad()
    step(with_extra, toy, extra=True)
    _, z = toy.forward()
    extra_grad = torch.autograd.grad(0.3 * (z**2).mean(), toy.bound.shared_parameters)
    expected = shared + torch.cat([g.reshape(-1) for g in extra_grad])
    torch.testing.assert_close(toy.shared_grad(), expected, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(toy.head_grad(), heads, rtol=1e-9, atol=1e-12)


def check_round_trip(make: Callable[[], Weighting], warmup: int = 3) -> None:
    """State saved after a few steps and loaded into a fresh method gives identical next steps."""
    toy = Toy(seed=3)
    first = bound_method(make, toy)
    for _ in range(warmup):
        step(first, toy)
    second = bound_method(make, toy)
    copy_state(first, second)
    for _ in range(2):
        w1 = step(first, toy)
        g1 = toy.shared_grad()
        w2 = step(second, toy)
        torch.testing.assert_close(w1, w2, rtol=0, atol=0)
        torch.testing.assert_close(g1, toy.shared_grad(), rtol=0, atol=0)

