"""fp16 loss scaling for every weighting method: ``Weighting.backward(..., loss_scale=S)``.

Contract (okd/weighting/base.py, module docstring): with S every ``.grad`` a method writes (the
network's and its own learnable weights') is S times the unscaled one, the method's decisions
(returned weights, state) are those of the unscaled run, and an overflow leaves non-finite values
in ``.grad`` while the method's state stays where it was. Every conf/weighting/*.yaml is covered,
plus the variants that take other code paths (``toys.METHODS``: representation level, weighted
heads, ...).
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from okd.weighting.base import (
    Weighting,
    all_finite,
    finite_or_zero,
    keep_if_finite,
    mark_overflow,
    scaled,
    unscaled,
)
from toys import METHODS, NAMES, Toy

#: a power of two, as GradScaler's scales are: scaling is then exact, so S x .grad matches tightly
S = 1024.0


class _Amplify(torch.autograd.Function):
    """Identity forward, gradient times ``factor`` backward: one task's gradient made huge."""

    @staticmethod
    def forward(ctx, x: Tensor, factor: float) -> Tensor:
        ctx.factor = factor
        return x.clone()

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad * ctx.factor, None


# -- harness -------------------------------------------------------------------------------------
def make(name: str, seed: int = 0) -> tuple[Toy, Weighting]:
    toy = Toy(seed=seed)
    method = METHODS[name]()
    method.bind(toy.bound)
    return toy, method


def all_params(toy: Toy, method: Weighting) -> list[torch.nn.Parameter]:
    """Everything the trainer's optimizer holds: the network's and the method's parameters."""
    return toy.parameters() + [p for g in method.param_groups() for p in g["params"]]


def forward(toy: Toy, amplify_task0: float | None = None) -> tuple[Tensor, Tensor]:
    """The toy's forward, optionally with task 0's gradient amplified (not its loss value)."""
    z = toy.representation()
    preds = [h(z)[:, 0] for h in toy.heads]
    if amplify_task0 is not None:
        preds[0] = _Amplify.apply(preds[0], amplify_task0)
    losses = torch.stack([((p - toy.y[:, k]) ** 2).mean() for k, p in enumerate(preds)])
    return losses, z


def backward(toy: Toy, method: Weighting, loss_scale: float | None = None, extra: bool = False,
             amplify_task0: float | None = None) -> tuple[Tensor, Tensor]:
    """One backward on fresh .grad; returns (detached losses, returned weights)."""
    for p in all_params(toy, method):
        p.grad = None
    losses, z = forward(toy, amplify_task0)
    extra_loss = 0.3 * (z**2).mean() if extra else None
    rep = z if method.needs_representation else None
    s = None if loss_scale is None else torch.tensor(loss_scale)
    weights = method.backward(losses, extra_loss=extra_loss, representation=rep, loss_scale=s)
    return losses.detach(), weights


def optimizer(toy: Toy, method: Weighting, lr: float = 0.05) -> torch.optim.Optimizer:
    return torch.optim.SGD([{"params": toy.parameters()}, *method.param_groups()], lr=lr)


def train(toy: Toy, method: Weighting, steps: int, loss_scale: float | None = None) -> None:
    """SGD steps; a scaled run divides every .grad by S before the step (GradScaler.unscale_)."""
    opt = optimizer(toy, method)
    for _ in range(steps):
        losses, _ = backward(toy, method, loss_scale)
        if loss_scale is not None:
            for p in all_params(toy, method):
                if p.grad is not None:
                    p.grad.div_(loss_scale)
        opt.step()
        method.after_step(losses, toy.recompute)


def tensors_equal(a: Tensor, b: Tensor) -> bool:
    return a.shape == b.shape and bool(((a == b) | (a.isnan() & b.isnan())).all())


def comparable_extra(method: Weighting) -> dict:
    """extra_state without RNG states (draws may be consumed) and Nash-MTL's last_solve_ok."""
    return {k: v for k, v in method.extra_state().items() if k not in ("generator", "last_solve_ok")}


# -- helpers -------------------------------------------------------------------------------------
def test_helpers_are_identities_without_a_scale():
    x = torch.randn(3, 4)
    assert scaled(x, None) is x
    assert unscaled(x, None) is x
    assert mark_overflow(x, x.exp(), None) is x


def test_helpers_scale_unscale_in_float32_and_mark_overflow():
    s = torch.tensor(2.0**10)
    half = torch.tensor([2048.0, -1024.0], dtype=torch.float16)
    out = unscaled(half, s)
    assert out.dtype == torch.float32  # fp16 gradients are lifted before they are divided
    torch.testing.assert_close(out, torch.tensor([2.0, -1.0]))
    torch.testing.assert_close(scaled(torch.tensor([1.5]), s), torch.tensor([1536.0]))
    rows = torch.tensor([[1.0, math.inf], [0.0, 1.0]])
    assert torch.isnan(mark_overflow(torch.ones(2), rows, s)).all()
    torch.testing.assert_close(mark_overflow(torch.ones(2), rows.nan_to_num(posinf=3.0), s), torch.ones(2))
    assert not bool(all_finite(rows))
    torch.testing.assert_close(finite_or_zero(rows), torch.zeros(2, 2))
    torch.testing.assert_close(finite_or_zero(rows.nan_to_num(posinf=3.0)), rows.nan_to_num(posinf=3.0))
    new, old = torch.tensor([5.0]), torch.tensor([1.0])
    assert keep_if_finite(new, old, torch.tensor(False)).item() == 1.0
    assert keep_if_finite(new, old, torch.tensor(True)).item() == 5.0


# -- (a) one backward: S x every gradient, same weights -------------------------------------------
@pytest.mark.parametrize("extra", [False, True], ids=["no_extra", "extra_loss"])
@pytest.mark.parametrize("name", NAMES)
def test_scaled_backward_writes_s_times_every_gradient(name, extra):
    toy_a, plain = make(name)
    toy_b, scaled_method = make(name)
    _, w_plain = backward(toy_a, plain, extra=extra)
    _, w_scaled = backward(toy_b, scaled_method, S, extra=extra)
    torch.testing.assert_close(w_scaled, w_plain, rtol=1e-5, atol=1e-7)
    params_a, params_b = all_params(toy_a, plain), all_params(toy_b, scaled_method)
    assert any(p.grad is not None for p in params_a[len(toy_a.parameters()):]) == any(
        p.grad is not None for p in params_b[len(toy_b.parameters()):])
    for pa, pb in zip(params_a, params_b):
        assert (pa.grad is None) == (pb.grad is None)
        if pa.grad is not None:
            torch.testing.assert_close(pb.grad, S * pa.grad, rtol=1e-5, atol=1e-7 * S)


def test_learnable_weights_get_scaled_gradients():
    """UW's s, GradNorm's w and IMTL's s are in the optimizer: GradScaler unscales them too."""
    for name in ("uw", "gradnorm", "imtl", "imtl_l"):
        toy_a, plain = make(name)
        toy_b, scaled_method = make(name)
        backward(toy_a, plain)
        backward(toy_b, scaled_method, S)
        (pa,), (pb,) = [[p for g in m.param_groups() for p in g["params"]] for m in (plain, scaled_method)]
        assert pa.grad.abs().sum() > 0
        torch.testing.assert_close(pb.grad, S * pa.grad, rtol=1e-6, atol=0)


# -- (b) training: same parameters and state after unscaled steps ----------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_scaled_training_matches_unscaled(name):
    toy_a, plain = make(name)
    toy_b, scaled_method = make(name)
    train(toy_a, plain, steps=4)
    train(toy_b, scaled_method, steps=4, loss_scale=S)
    for pa, pb in zip(all_params(toy_a, plain), all_params(toy_b, scaled_method)):
        torch.testing.assert_close(pb, pa, rtol=1e-5, atol=1e-6)
    state_a, state_b = plain.state_dict(), scaled_method.state_dict()
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        torch.testing.assert_close(state_b[key], state_a[key], rtol=1e-5, atol=1e-6, equal_nan=True,
                                   msg=lambda m: f"{name}: state {key!r}: {m}")
    assert comparable_extra(scaled_method) == comparable_extra(plain)


# -- (c) overflow: non-finite .grad, state untouched ----------------------------------------------
@pytest.mark.parametrize("overflow", ["one_task", "infinite_scale"])
@pytest.mark.parametrize("name", NAMES)
def test_overflow_reaches_grad_and_leaves_state_unchanged(name, overflow):
    toy, method = make(name)
    train(toy, method, steps=2)  # warm state: EMAs, Nash alpha, GradNorm L(0), phi_hat, FAMO xi
    state = {k: v.clone() for k, v in method.state_dict().items()}
    extra = comparable_extra(method)
    if overflow == "one_task":
        # task 0's gradient (not its loss) is 1e30 x: finite unscaled, inf once scaled by 2^40
        _, weights = backward(toy, method, 2.0**40, amplify_task0=1e30)
    else:
        _, weights = backward(toy, method, math.inf)
    for p in toy.bound.shared_parameters:
        assert not bool(torch.isfinite(p.grad).all()), f"{name}: {overflow} left a finite shared .grad"
    assert torch.isfinite(weights).all(), f"{name}: logged weights of an overflow step must stay finite"
    after = method.state_dict()
    for key, value in state.items():
        assert tensors_equal(after[key], value), f"{name}: state {key!r} changed on an overflow step"
    assert comparable_extra(method) == extra


def test_overflow_on_one_task_is_finite_without_scaling():
    """The amplified toy itself is fine in fp32: the overflow of the test above comes from S."""
    toy, method = make("pcgrad")
    backward(toy, method, amplify_task0=1e30)
    assert all(torch.isfinite(p.grad).all() for p in toy.parameters())


def test_dbmtl_state_after_overflow_continues_as_if_it_was_skipped():
    """An overflow step between two steps changes nothing: the next step equals the no-overflow run."""
    toy_a, plain = make("dbmtl_beta_sigma")
    toy_b, interrupted = make("dbmtl_beta_sigma")
    train(toy_a, plain, 2, S)
    train(toy_b, interrupted, 2, S)
    backward(toy_b, interrupted, math.inf)
    w_a = backward(toy_a, plain, S)[1]
    w_b = backward(toy_b, interrupted, S)[1]
    torch.testing.assert_close(w_b, w_a, rtol=0, atol=0)
    torch.testing.assert_close(toy_b.shared_grad(), toy_a.shared_grad(), rtol=0, atol=0)
    assert int(interrupted.step) == 3


def test_nashmtl_overflow_on_an_update_step_solves_again_next_step():
    toy, method = make("nashmtl_every_2")
    train(toy, method, 2)
    assert method.step == 2
    backward(toy, method, math.inf)
    assert method.step == 2 and not method.last_gram_finite  # not counted: the next step re-solves
    backward(toy, method, S)
    assert method.step == 3 and method.last_gram_finite and method.last_solve_ok


# -- (d) end to end: fp16 autocast + GradScaler on the CPU ----------------------------------------
E2E = ["ew", "uw", "pcgrad", "mgda_ub", "gradnorm", "dbmtl", "nashmtl", "gradvac", "graddrop",
       "imtl_hybrid_representation", "alignedmtl_ub", "famo"]


@pytest.mark.parametrize("name", E2E)
def test_fp16_autocast_with_grad_scaler(name):
    toy, method = make(name, seed=1)
    opt = optimizer(toy, method, lr=0.02)
    # 2^24: the first steps overflow the fp16 activation gradients, so skipping is exercised too
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**24)
    start = toy.recompute()
    skipped = applied = 0
    for _ in range(30):
        for p in all_params(toy, method):
            p.grad = None
        with torch.autocast("cpu", dtype=torch.float16):
            losses, z = toy.forward()
            losses = losses.float()
        assert z.dtype == torch.float16
        rep = z if method.needs_representation else None
        method.backward(losses, representation=rep, loss_scale=scaler.scale(torch.ones(())))
        before = scaler.get_scale()
        scaler.step(opt)
        scaler.update()
        if scaler.get_scale() < before:  # GradScaler found inf/NaN and skipped the step
            skipped += 1
        else:
            applied += 1
            method.after_step(losses.detach(), toy.recompute)
        assert all(torch.isfinite(p).all() for p in all_params(toy, method))
    assert skipped >= 1 and applied >= 15, (skipped, applied)
    for key, value in method.state_dict().items():
        assert torch.isfinite(value.float()).all(), f"{name}: state {key!r} is not finite"
    end = toy.recompute()
    assert end.sum() < start.sum(), f"{name}: {start.tolist()} -> {end.tolist()}"
