"""UW (okd/weighting/uw.py) against Kendall et al. 2018 (both forms), with hand-computed values."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from okd.weighting.base import BoundModel
from okd.weighting.uw import UW


def _uw(num_tasks: int = 2, **kwargs) -> UW:
    uw = UW(**kwargs)
    uw.bind(BoundModel([f"t{k}" for k in range(num_tasks)], list(nn.Linear(2, 2).parameters())))
    return uw


def test_default_inits_per_form():
    assert torch.equal(_uw(form="kendall").log_vars.detach(), torch.zeros(2))
    assert torch.equal(_uw(form="halved").log_vars.detach(), torch.full((2,), -0.5))
    assert torch.equal(_uw(3, form="kendall", init=1.0).log_vars.detach(), torch.ones(3))


def test_kendall_weights_objective_and_gradient():
    uw = _uw(form="kendall")
    with torch.no_grad():
        uw.log_vars.copy_(torch.tensor([0.0, math.log(2.0)]))
    losses = torch.tensor([3.0, 4.0], requires_grad=True)
    total, w = uw.objective(losses)
    torch.testing.assert_close(w.detach(), torch.tensor([1.0, 0.5]))  # exp(-s)
    torch.testing.assert_close(total.detach(), torch.tensor(5.693147180559945))  # 3 + 4/2 + 0 + ln 2
    used = uw.backward(losses)
    torch.testing.assert_close(used, torch.tensor([1.0, 0.5]))
    assert not used.requires_grad
    # d/ds [exp(-s) L + s] = 1 - exp(-s) L ; d/dL = exp(-s)
    torch.testing.assert_close(uw.log_vars.grad, torch.tensor([1.0 - 3.0, 1.0 - 2.0]))
    torch.testing.assert_close(losses.grad, torch.tensor([1.0, 0.5]))


def test_halved_weights_objective_and_gradient():
    uw = _uw(form="halved")  # s0 = -0.5, weight 1 / (2 e^-0.5) = 0.824361
    losses = torch.tensor([3.0, 4.0], requires_grad=True)
    total, w = uw.objective(losses)
    torch.testing.assert_close(w.detach(), torch.full((2,), 0.8243606353500641))
    torch.testing.assert_close(total.detach(), torch.tensor(5.270524447450448))  # 7 w - 0.5
    uw.backward(losses)
    # d/ds [L / (2 e^s) + s / 2] = 1/2 - L / (2 e^s)
    torch.testing.assert_close(uw.log_vars.grad, torch.tensor([-1.9730819060501923, -2.7974425414002564]))


def test_extra_loss_is_added_unweighted():
    uw = _uw(form="kendall", init=math.log(4.0))  # weights 1/4
    losses = torch.tensor([2.0, 6.0], requires_grad=True)
    extra = torch.tensor(5.0, requires_grad=True)
    uw.backward(losses, extra_loss=extra)
    torch.testing.assert_close(losses.grad, torch.full((2,), 0.25))
    torch.testing.assert_close(extra.grad, torch.tensor(1.0))


def test_param_groups_hold_the_log_variances():
    uw = _uw(form="kendall")
    groups = uw.param_groups()
    assert len(groups) == 1 and groups[0]["params"] == [uw.log_vars]
    assert groups[0]["weight_decay"] == 0.0


def test_noisier_task_learns_larger_log_variance():
    """Two linear regressions, noise std 0.3 and 1.5, shared layer + heads, 120 SGD steps."""
    g = torch.Generator().manual_seed(0)
    n, d = 128, 4
    x = torch.randn(n, d, generator=g)
    y_clean = x @ torch.randn(d, 1, generator=g) + 0.3 * torch.randn(n, 1, generator=g)
    y_noisy = x @ torch.randn(d, 1, generator=g) + 1.5 * torch.randn(n, 1, generator=g)
    shared, head_clean, head_noisy = nn.Linear(d, 8), nn.Linear(8, 1), nn.Linear(8, 1)
    params = [*shared.parameters(), *head_clean.parameters(), *head_noisy.parameters()]
    with torch.no_grad():
        for p in params:
            p.copy_(0.3 * torch.randn(p.shape, generator=g))
    uw = UW(form="kendall")
    uw.bind(BoundModel(["clean", "noisy"], list(shared.parameters()), params[2:]))
    opt = torch.optim.SGD([{"params": params}, *uw.param_groups()], lr=0.05)
    for _ in range(120):
        z = shared(x)
        losses = torch.stack([
            (head_clean(z) - y_clean).pow(2).mean(), (head_noisy(z) - y_noisy).pow(2).mean()
        ])
        opt.zero_grad()
        uw.backward(losses)
        opt.step()
    s_clean, s_noisy = uw.log_vars.detach().tolist()
    assert s_noisy > 0.5 and s_clean < -1.5  # started at 0: moved up / down
    # Stationary point of exp(-s) L + s is s = log L (noise variances 2.25 and 0.09).
    assert abs(s_noisy - math.log(losses[1].item())) < 0.05


def test_checkpoint_round_trip():
    uw = _uw(form="halved")
    with torch.no_grad():
        uw.log_vars.copy_(torch.tensor([0.3, -1.2]))
    restored = _uw(form="halved")
    restored.load_checkpoint_state(uw.checkpoint_state())
    assert torch.equal(restored.log_vars, uw.log_vars)
    losses = torch.tensor([1.0, 2.0])
    assert torch.equal(restored.objective(losses)[0], uw.objective(losses)[0])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"form": "gaussian"}, "form"), ({"init": float("nan")}, "init"), ({"init": "0"}, "init")],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        UW(**kwargs)
