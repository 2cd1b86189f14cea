"""The 3-task toys and helpers shared by the weighting tests (imported by name; not a test module).

A shared ``nn.Linear`` gives the representation Z the three ``nn.Linear(d, 1)`` heads consume; each
head regresses its own target (MSE). Two flavours, whose random draws are fixed because the
tests compare against values computed with them:

* :class:`Toy` -- float32, Z = Linear(4, 3)(x), targets from a teacher of the same shape (so the
  three losses can reach 0 together). Tests that compare with rtol ~1e-5 and the fp16 tests.
* :class:`TanhToy` -- float64, Z = tanh(Linear(4, 5)(x)), three unrelated linear targets. Tests
  whose 1e-10 tolerances need float64.

Both bind the shared layer as GradNorm's last shared layer. Every number comes from a local
``torch.Generator`` (no global seeding).

Also here: one step / training / checkpoint helpers, the checks every method passes (``check_*``,
run by test_properties.py), and ``METHODS``, every option of conf/weighting/ plus the variants that
take other code paths, by name (test_properties.py, test_loss_scaling.py).
"""
from __future__ import annotations

import inspect
import io
from pathlib import Path
from typing import Callable

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import Tensor, nn

from okd.weighting.alignedmtl import AlignedMTL
from okd.weighting.base import BoundModel, Weighting
from okd.weighting.cagrad import CAGrad
from okd.weighting.dbmtl import DBMTL
from okd.weighting.graddrop import GradDrop
from okd.weighting.gradvac import GradVac
from okd.weighting.imtl import IMTL
from okd.weighting.mgda import MGDA
from okd.weighting.nashmtl import NashMTL
from okd.weighting.pcgrad import PCGrad
from okd.weighting.uw import UW

TASKS = ["seg", "depth", "normal"]


class Toy:
    """float32 teacher toy (module docstring); :class:`TanhToy` is the float64 flavour."""

    dtype = torch.float32

    def __init__(self, seed: int = 0, n: int = 16, d_in: int = 4, d_hidden: int = 3) -> None:
        gen = torch.Generator().manual_seed(seed)
        self._build(d_in, d_hidden)
        # draw order: inputs, teacher, parameters
        self.x = torch.randn(n, d_in, generator=gen, dtype=self.dtype)
        teacher_w = torch.randn(d_hidden, d_in, generator=gen, dtype=self.dtype)
        teacher_h = torch.randn(len(TASKS), d_hidden, generator=gen, dtype=self.dtype)
        self.y = (self.x @ teacher_w.T) @ teacher_h.T  # (n, K)
        self._draw_parameters(gen)

    def _build(self, d_in: int, d_hidden: int) -> None:
        self.shared = nn.Linear(d_in, d_hidden, dtype=self.dtype)
        self.heads = nn.ModuleList(nn.Linear(d_hidden, 1, dtype=self.dtype) for _ in TASKS)
        self.bound = BoundModel(
            task_names=list(TASKS),
            shared_parameters=list(self.shared.parameters()),
            task_parameters=list(self.heads.parameters()),
            last_shared_parameters=list(self.shared.parameters()),
        )

    def _draw_parameters(self, gen: torch.Generator) -> None:
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(0.5 * torch.randn(p.shape, generator=gen, dtype=self.dtype))

    # -- forward -----------------------------------------------------------------------------
    def representation(self) -> Tensor:
        return self.shared(self.x)

    def forward(self) -> tuple[Tensor, Tensor]:
        """(K,) losses with graph and the shared representation Z, from one forward pass."""
        z = self.representation()
        losses = torch.stack([((h(z)[:, 0] - self.y[:, k]) ** 2).mean() for k, h in enumerate(self.heads)])
        return losses, z

    def losses(self) -> Tensor:
        return self.forward()[0]

    def recompute(self) -> Tensor:
        """Detached losses (FAMO's post-step losses)."""
        with torch.no_grad():
            return self.losses()

    # -- parameters and gradients ------------------------------------------------------------
    def parameters(self) -> list[nn.Parameter]:
        return self.bound.shared_parameters + self.bound.task_parameters

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    def shared_grad(self) -> Tensor:
        return torch.cat([p.grad.reshape(-1) for p in self.bound.shared_parameters])

    def head_grad(self, k: int | None = None) -> Tensor:
        """Flat .grad of head k, or of every head's parameters concatenated (k None)."""
        params = self.bound.task_parameters if k is None else list(self.heads[k].parameters())
        return torch.cat([p.grad.reshape(-1) for p in params])

    def reference(self, transform: Callable[[Tensor], Tensor] = lambda l: l) -> dict[str, Tensor]:
        """Per-task gradients of transform(L_k) from a separate forward pass (an independent reference).

        G (K x P, shared parameters), heads (K x H, every head parameter; zero outside head k),
        z (K, *Z.shape, gradients at Z), plus the detached losses and Z.
        """
        losses, z = self.forward()
        losses = transform(losses)
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

    def task_gradients(
        self, transform: Callable[[Tensor], Tensor] = lambda l: l
    ) -> tuple[Tensor, list[Tensor]]:
        """(G, [gradient of transform(L_k) on head k's own parameters]) from :meth:`reference`."""
        ref = self.reference(transform)
        sizes = [sum(p.numel() for p in h.parameters()) for h in self.heads]
        offsets = [sum(sizes[:k]) for k in range(len(sizes))]
        return ref["G"], [ref["heads"][k, o: o + s] for k, (o, s) in enumerate(zip(offsets, sizes))]

    def encoder_vjp(self, grad_z: Tensor) -> Tensor:
        """J_Z^T grad_z for the shared parameters (what Z.backward(grad_z) puts in .grad)."""
        z = self.representation()
        gs = torch.autograd.grad(z, self.bound.shared_parameters, grad_outputs=grad_z)
        return torch.cat([g.reshape(-1) for g in gs])


class TanhToy(Toy):
    """float64 toy with Z = tanh(Linear(4, 5)(x)) and three unrelated linear targets."""

    dtype = torch.float64

    def __init__(self, seed: int = 0, n: int = 16) -> None:  # noqa: D107 (own draw order)
        gen = torch.Generator().manual_seed(seed)
        self._build(4, 5)
        # draw order: parameters, inputs, targets
        self._draw_parameters(gen)
        self.x = torch.randn(n, 4, generator=gen, dtype=self.dtype)
        self.y = self.x @ torch.randn(4, len(TASKS), generator=gen, dtype=self.dtype)

    def representation(self) -> Tensor:
        return torch.tanh(self.shared(self.x))


# -- one step, training, checkpoints ----------------------------------------------------------------
def extra_loss(z: Tensor) -> Tensor:
    """The extra loss of :func:`step`: on Z, so it shares the graph of the task losses."""
    return 0.3 * (z**2).mean()


def extra_gradient(toy: Toy) -> Tensor:
    """Gradient of :func:`extra_loss` on the flat shared parameters, from a fresh forward."""
    gs = torch.autograd.grad(extra_loss(toy.representation()), toy.bound.shared_parameters)
    return torch.cat([g.reshape(-1) for g in gs])


def backward(method: Weighting, toy: Toy, extra: bool = False) -> tuple[Tensor, Tensor]:
    """One backward of ``method`` on a fresh forward and fresh .grad (toy's and method's).

    Z goes to the method when it ``needs_representation``. Returns (detached losses, weights).
    """
    toy.zero_grad()
    for p in method.parameters():
        p.grad = None
    losses, z = toy.forward()
    rep = z if method.needs_representation else None
    weights = method.backward(losses, extra_loss=extra_loss(z) if extra else None, representation=rep)
    return losses.detach(), weights


def step(method: Weighting, toy: Toy, extra: bool = False) -> Tensor:
    """:func:`backward`, returning the weights."""
    return backward(method, toy, extra)[1]


def one_step(method: Weighting, toy: Toy, extra: bool = False) -> tuple[Tensor, Tensor, list[Tensor]]:
    """:func:`step`, returning (weights, shared .grad, [.grad of head k])."""
    w = step(method, toy, extra)
    return w, toy.shared_grad().clone(), [toy.head_grad(k).clone() for k in range(len(TASKS))]


def train(method: Weighting, toy: Toy, steps: int = 40, lr: float = 0.05,
          recompute: bool = True) -> tuple[Tensor, Tensor]:
    """SGD on the toy's and the method's parameters, ``after_step`` included; asserts finite
    weights and gradients at every step; returns the (first, last) losses."""
    params = toy.parameters() + [p for g in method.param_groups() for p in g["params"]]
    opt = torch.optim.SGD(params, lr=lr)
    first = toy.recompute()
    for _ in range(steps):
        losses, weights = backward(method, toy)
        assert torch.isfinite(weights).all()
        assert all(torch.isfinite(p.grad).all() for p in toy.parameters())
        opt.step()
        method.after_step(losses, toy.recompute if recompute else None)
    return first, toy.recompute()


def bound_method(make: Callable[[], Weighting], toy: Toy) -> Weighting:
    method = make()
    method.bind(toy.bound)
    return method


def copy_state(src: Weighting, dst: Weighting) -> None:
    """Checkpoint round trip through torch.save (what a resume does, as okd/engine/checkpoint.py)."""
    buf = io.BytesIO()
    torch.save(src.checkpoint_state(), buf)
    buf.seek(0)
    dst.load_checkpoint_state(torch.load(buf, weights_only=True))


def roundtrip(method: Weighting, fresh: Weighting, toy: Toy) -> None:
    """Bind ``fresh`` to the toy and load ``method``'s checkpoint into it."""
    fresh.bind(toy.bound)
    copy_state(method, fresh)


# -- checks shared by the gradient-method tests (float64 toy) ---------------------------------------
def check_descent(make: Callable[[], Weighting], steps: int = 40, lr: float = 0.1) -> None:
    """Finite gradients every step and all three losses lower after ``steps`` SGD steps."""
    toy = TanhToy(seed=1)
    start, end = train(bound_method(make, toy), toy, steps, lr, recompute=False)
    assert (end < start).all(), f"losses did not all decrease: {start.tolist()} -> {end.tolist()}"


def check_extra_loss(make: Callable[[], Weighting]) -> None:
    """extra_loss adds its own gradient to the shared .grad and leaves the heads' alone."""
    toy = TanhToy(seed=2)
    plain = bound_method(make, toy)
    with_extra = bound_method(make, toy)
    copy_state(plain, with_extra)
    step(plain, toy)
    shared, heads = toy.shared_grad(), toy.head_grad()
    step(with_extra, toy, extra=True)
    expected = shared + extra_gradient(toy)
    torch.testing.assert_close(toy.shared_grad(), expected, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(toy.head_grad(), heads, rtol=1e-9, atol=1e-12)


def check_round_trip(make: Callable[[], Weighting], warmup: int = 2) -> None:
    """State saved after a few steps (``after_step`` included) and loaded into a fresh method
    gives identical next steps."""
    toy = TanhToy(seed=3)
    first = bound_method(make, toy)
    for _ in range(warmup):
        first.after_step(backward(first, toy)[0], toy.recompute)
    second = bound_method(make, toy)
    copy_state(first, second)
    for _ in range(2):
        losses, w1 = backward(first, toy)
        g1 = toy.shared_grad()
        first.after_step(losses, toy.recompute)
        losses, w2 = backward(second, toy)
        second.after_step(losses, toy.recompute)
        torch.testing.assert_close(w1, w2, rtol=0, atol=0)
        torch.testing.assert_close(g1, toy.shared_grad(), rtol=0, atol=0)


def t64(x) -> Tensor:
    """A float64 tensor (hand cases)."""
    return torch.tensor(x, dtype=torch.float64)


def rows64(*rows) -> Tensor:
    """The float64 matrix with these rows (hand-case gradients G)."""
    return t64(rows)


# -- every method: the options of conf/weighting/ and variants that take other code paths -----------
CONF = Path(__file__).resolve().parents[2] / "conf" / "weighting"
OPTIONS = sorted(p.stem for p in CONF.glob("*.yaml"))


def from_yaml(option: str, seed: int = 0) -> Callable[[], Weighting]:
    """A maker of conf/weighting/<option>.yaml's method; ``${seed}`` resolves to ``seed``, as
    against the root key of the composed config."""
    cfg = OmegaConf.create({"seed": seed, "weighting": OmegaConf.load(CONF / f"{option}.yaml")})
    return lambda: instantiate(cfg.weighting, _convert_="all")


#: code paths the YAML defaults do not take
VARIANTS: dict[str, Callable[[], Weighting]] = {
    "mgda_libmtl_l2": lambda: MGDA(normalization="l2", apply="libmtl"),
    "mgda_nashmtl_loss": lambda: MGDA(normalization="loss", apply="nashmtl"),
    "mgda_ub_libmtl_batch_sum": lambda: MGDA(level="representation", apply="libmtl", rep_gram="batch_sum"),
    "imtl_g": lambda: IMTL(mode="g"),
    "imtl_l": lambda: IMTL(mode="l"),
    "imtl_hybrid_representation": lambda: IMTL(level="representation"),
    "imtl_g_representation": lambda: IMTL(mode="g", level="representation"),
    "graddrop_parameters_leak": lambda: GradDrop(level="parameters", leak=0.2),
    "nashmtl_every_2": lambda: NashMTL(update_weights_every=2),
    "dbmtl_beta_sigma": lambda: DBMTL(beta_sigma=0.5),
    "gradvac_tensor_groups": lambda: GradVac(group_type="tensor", beta=0.5),
    "uw_halved": lambda: UW(form="halved"),
    "pcgrad_mean": lambda: PCGrad(reduction="mean"),
    "cagrad_libmtl": lambda: CAGrad(c=0.5, times_k=False),
    "alignedmtl_median_mean": lambda: AlignedMTL(scale_mode="median", reduction="mean"),
}
#: every option and variant, by name
METHODS: dict[str, Callable[[], Weighting]] = {**{o: from_yaml(o) for o in OPTIONS}, **VARIANTS}
NAMES = sorted(METHODS)


#: old spellings that still load with a FutureWarning (tests/weighting/test_levels.py); no YAML lists them
DEPRECATED_ARGUMENTS = ("use_representation",)


def assert_yaml_matches_defaults(name: str, cls: type) -> None:
    """conf/weighting/<name>.yaml targets ``cls`` and lists every argument with its default
    (``seed: ${seed}`` stands for the run's seed)."""
    cfg = OmegaConf.to_container(OmegaConf.load(CONF / f"{name}.yaml"))
    assert cfg.pop("_target_") == f"{cls.__module__}.{cls.__qualname__}"
    defaults = {k: p.default for k, p in inspect.signature(cls).parameters.items()
                if k not in DEPRECATED_ARGUMENTS}
    defaults = {k: list(v) if isinstance(v, tuple) else v for k, v in defaults.items()}
    if cfg.get("seed") == "${seed}":
        defaults["seed"] = cfg["seed"]
    assert cfg == defaults
