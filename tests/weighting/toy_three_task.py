"""A 3-task toy shared by the weighting tests: shared nn.Linear + 3 linear heads, MSE losses.

Targets come from a teacher of the same shape, so all three losses can reach 0 together.
Parameters are drawn from a local torch.Generator (no global seeding).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from okd.weighting.base import BoundModel, Weighting

TASKS = ["seg", "depth", "normal"]


class Toy:
    def __init__(self, seed: int = 0, n: int = 16, d_in: int = 4, d_hidden: int = 3) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, d_in, generator=gen)
        self.shared = nn.Linear(d_in, d_hidden)
        self.heads = nn.ModuleList(nn.Linear(d_hidden, 1) for _ in TASKS)
        teacher_w = torch.randn(d_hidden, d_in, generator=gen)
        teacher_h = torch.randn(len(TASKS), d_hidden, generator=gen)
        self.y = (self.x @ teacher_w.T) @ teacher_h.T  # (n, K)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))
        self.bound = BoundModel(
            task_names=list(TASKS),
            shared_parameters=list(self.shared.parameters()),
            task_parameters=list(self.heads.parameters()),
            last_shared_parameters=list(self.shared.parameters()),
        )

    def parameters(self) -> list[nn.Parameter]:
        return list(self.shared.parameters()) + list(self.heads.parameters())

    def forward(self) -> tuple[Tensor, Tensor]:
        """(K,) losses with graph and the shared representation z."""
        z = self.shared(self.x)
        losses = torch.stack([((h(z)[:, 0] - self.y[:, k]) ** 2).mean() for k, h in enumerate(self.heads)])
        return losses, z

    def losses(self) -> Tensor:
        return self.forward()[0]

    def recompute(self) -> Tensor:
        with torch.no_grad():
            return self.losses()

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    def shared_grad(self) -> Tensor:
        return torch.cat([p.grad.reshape(-1) for p in self.shared.parameters()])

    def head_grad(self, k: int) -> Tensor:
        return torch.cat([p.grad.reshape(-1) for p in self.heads[k].parameters()])

    def task_gradients(self, transform: Callable[[Tensor], Tensor] = lambda l: l):
        """Independent reference: rows g_k of transform(L_k) on the shared params, head grads."""
        losses = transform(self.losses())
        rows, heads = [], []
        for k in range(len(TASKS)):
            g = torch.autograd.grad(losses[k], self.parameters(), retain_graph=True, allow_unused=True)
            rows.append(torch.cat([t.reshape(-1) for t in g[:2]]))
            heads.append(torch.cat([t.reshape(-1) for t in g[2 + 2 * k: 4 + 2 * k]]))
        return torch.stack(rows), heads


def train(
    method: Weighting, toy: Toy, steps: int = 40, lr: float = 0.05, use_representation: bool = False,
    recompute: bool = True,
) -> tuple[Tensor, Tensor]:
    """SGD on the toy with ``method``; asserts finite gradients; returns (first, last) losses."""
    opt = torch.optim.SGD(toy.parameters(), lr=lr)
    first = toy.recompute()
    for _ in range(steps):
        opt.zero_grad()
        losses, z = toy.forward()
        method.backward(losses, representation=z if use_representation else None)
        assert all(torch.isfinite(p.grad).all() for p in toy.parameters())
        opt.step()
        method.after_step(losses.detach(), toy.recompute if recompute else None)
    return first, toy.recompute()


def roundtrip(method: Weighting, fresh: Weighting, toy: Toy) -> None:
    """Save ``method`` through torch.save/torch.load into ``fresh`` (bound to the same toy)."""
    import io

    buffer = io.BytesIO()
    torch.save(method.checkpoint_state(), buffer)
    buffer.seek(0)
    fresh.bind(toy.bound)
    fresh.load_checkpoint_state(torch.load(buffer, weights_only=True))


def one_step(method: Weighting, toy: Toy, extra: bool = False, use_representation: bool = False):
    """One backward on a fresh .grad; returns (weights, shared grad, [head grads])."""
    toy.zero_grad()
    losses, z = toy.forward()
    extra_loss = 0.3 * (toy.shared.weight ** 2).sum() if extra else None
    w = method.backward(losses, extra_loss=extra_loss, representation=z if use_representation else None)
    return w, toy.shared_grad().clone(), [toy.head_grad(k).clone() for k in range(len(TASKS))]


def extra_gradient(toy: Toy) -> Tensor:
    """Gradient of one_step's extra loss 0.3 ||W||^2 on the flat shared parameters (weight, bias)."""
    weight, bias = toy.shared.weight.detach(), toy.shared.bias.detach()
    return torch.cat([0.6 * weight.reshape(-1), torch.zeros_like(bias)])


def assert_yaml_matches_defaults(name: str, cls: type) -> None:
    """conf/weighting/<name>.yaml targets ``cls`` and lists every argument with its default."""
    import inspect
    from pathlib import Path

    from omegaconf import OmegaConf

    path = Path(__file__).resolve().parents[2] / "conf" / "weighting" / f"{name}.yaml"
    cfg = OmegaConf.to_container(OmegaConf.load(path))
    assert cfg.pop("_target_") == f"{cls.__module__}.{cls.__qualname__}"
    defaults = {k: p.default for k, p in inspect.signature(cls).parameters.items()}
    defaults = {k: list(v) if isinstance(v, tuple) else v for k, v in defaults.items()}
    assert cfg == defaults
