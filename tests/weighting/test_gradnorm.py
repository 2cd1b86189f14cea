"""GradNorm (okd/weighting/gradnorm.py) against Chen et al. 2018, Eqs. (1)-(2) and Algorithm 1."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from okd.weighting.base import BoundModel
from okd.weighting.gradnorm import GradNorm


class Toy(nn.Module):
    """encoder -> last shared layer W -> two heads; head "a" scaled up so its gradient at W is larger."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.enc, self.last = nn.Linear(3, 4), nn.Linear(4, 4)
        self.heads = nn.ModuleList([nn.Linear(4, 1), nn.Linear(4, 1)])
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
            self.heads[0].weight.mul_(10.0)
        self.x = torch.randn(6, 3, generator=g)
        self.y = torch.randn(6, 2, generator=g)

    def losses(self) -> tuple[torch.Tensor, torch.Tensor]:
        z = torch.relu(self.last(torch.tanh(self.enc(self.x))))
        losses = torch.stack([(h(z)[:, 0] - self.y[:, k]).pow(2).mean() for k, h in enumerate(self.heads)])
        return losses, z.pow(2).mean()  # (task losses, an extra loss on the shared features)

    def bound(self) -> BoundModel:
        return BoundModel(
            ["a", "b"],
            [*self.enc.parameters(), *self.last.parameters()],
            list(self.heads.parameters()),
            list(self.last.parameters()),
        )


def _norms_at_w(toy: Toy) -> torch.Tensor:
    """||grad_W L_k|| computed independently of the method."""
    losses, _ = toy.losses()
    out = []
    for k in range(2):
        grads = torch.autograd.grad(losses[k], list(toy.last.parameters()), retain_graph=True)
        out.append(torch.sqrt(sum(g.pow(2).sum() for g in grads)))
    return torch.stack(out)


def test_gradnorm_loss_matches_eq2_by_hand():
    gn = GradNorm(alpha=1.5)
    gn.bind(Toy().bound())
    with torch.no_grad():
        gn.task_weights.copy_(torch.tensor([0.8, 1.2]))
        gn.initial_losses.copy_(torch.tensor([2.0, 4.0]))
    # loss ratios (0.5, 0.75) -> r = (0.8, 1.2); G = w * norms = (2.4, 1.2), Gbar = 1.8;
    # targets 1.8 r^1.5 = (1.287975, 2.366161); L_grad = 1.112025 + 1.166161.
    l_grad = gn.gradnorm_loss(torch.tensor([3.0, 1.0]), torch.tensor([1.0, 3.0]))
    torch.testing.assert_close(l_grad.detach(), torch.tensor(2.278186293382438))
    (grad_w,) = torch.autograd.grad(l_grad, gn.task_weights)
    # The target is a constant: grad = sign(G_k - target_k) * norm_k, no term through Gbar.
    torch.testing.assert_close(grad_w, torch.tensor([3.0, -1.0]))


def test_first_step_lowers_the_weight_of_the_larger_gradient_norm():
    toy = Toy()
    norms = _norms_at_w(toy)
    assert norms[0] > norms[1]
    gn = GradNorm(alpha=1.5, lr=0.01)
    gn.bind(toy.bound())
    opt = torch.optim.SGD(gn.param_groups(), lr=1.0)  # the group's own lr (0.01) must win
    losses, _ = toy.losses()
    used = gn.backward(losses)
    # Step 0: r = 1, target = mean(G) = mean(norms); grad_w = (+n_a, -n_b).
    torch.testing.assert_close(gn.task_weights.grad, torch.stack([norms[0], -norms[1]]))
    opt.step()
    gn.after_step(losses.detach())
    stepped = torch.stack([1 - 0.01 * norms[0], 1 + 0.01 * norms[1]])
    expected = 2 * stepped / stepped.sum()
    torch.testing.assert_close(gn.task_weights.detach(), expected)
    assert gn.task_weights[0] < 1 < gn.task_weights[1]
    torch.testing.assert_close(gn.task_weights.sum().detach(), torch.tensor(2.0))
    torch.testing.assert_close(used, torch.ones(2))  # the weights used, unchanged by the step


def test_network_gets_grad_of_weighted_sum_and_w_only_l_grad():
    toy = Toy()
    gn = GradNorm(alpha=1.5)
    gn.bind(toy.bound())
    w = torch.tensor([0.5, 1.5])
    with torch.no_grad():
        gn.task_weights.copy_(w)
    params = list(toy.parameters())
    losses, extra = toy.losses()
    expected = torch.autograd.grad((w * losses).sum() + extra, params)
    norms = _norms_at_w(toy)

    losses, extra = toy.losses()
    used = gn.backward(losses, extra_loss=extra)
    for p, g in zip(params, expected):
        torch.testing.assert_close(p.grad, g)
    grad_norms = w * norms
    torch.testing.assert_close(gn.task_weights.grad, torch.sign(grad_norms - grad_norms.mean()) * norms)
    torch.testing.assert_close(used, w)
    assert used.shape == (2,) and not used.requires_grad


def test_per_task_gradients_stop_at_the_last_shared_layer():
    toy = Toy()
    gn = GradNorm()
    gn.bind(toy.bound())
    calls = {"enc": 0, "last": 0}
    toy.enc.weight.register_hook(lambda g: calls.__setitem__("enc", calls["enc"] + 1))
    toy.last.weight.register_hook(lambda g: calls.__setitem__("last", calls["last"] + 1))
    losses, _ = toy.losses()
    gn.backward(losses)
    assert calls == {"enc": 1, "last": 3}  # encoder: the network backward only; W: K + 1


def test_initial_losses_are_from_the_first_step_only():
    toy = Toy()
    gn = GradNorm()
    gn.bind(toy.bound())
    first, _ = toy.losses()
    gn.backward(first)
    torch.testing.assert_close(gn.initial_losses, first.detach())
    second, _ = toy.losses()
    gn.backward(second * 0.5)
    torch.testing.assert_close(gn.initial_losses, first.detach())


@pytest.mark.parametrize(
    ("before", "after"),
    [([0.5, 2.5], [1 / 3, 5 / 3]), ([1.0, 2.0, 3.0], [0.5, 1.0, 1.5])],
)
def test_after_step_renormalises_to_sum_k(before, after):
    bound = BoundModel([str(k) for k in range(len(before))], [], [], list(nn.Linear(2, 2).parameters()))
    gn = GradNorm()
    gn.bind(bound)
    with torch.no_grad():
        gn.task_weights.copy_(torch.tensor(before))
    gn.after_step(torch.ones(len(before)))
    torch.testing.assert_close(gn.task_weights.detach(), torch.tensor(after))


def test_checkpoint_round_trip():
    toy = Toy()
    gn = GradNorm(lr=0.01)
    gn.bind(toy.bound())
    opt = torch.optim.SGD(gn.param_groups())
    losses, _ = toy.losses()
    gn.backward(losses * 2.0)
    opt.step()
    gn.after_step(losses.detach())
    state = gn.checkpoint_state()

    restored = GradNorm(lr=0.01)
    restored.bind(toy.bound())
    restored.load_checkpoint_state(state)
    assert torch.equal(restored.task_weights, gn.task_weights)
    assert torch.equal(restored.initial_losses, gn.initial_losses)
    for method in (gn, restored):
        method.task_weights.grad = None
        losses, _ = toy.losses()
        method.backward(losses)  # must not take these losses as L(0)
    assert torch.equal(restored.initial_losses, gn.initial_losses)
    assert torch.equal(restored.task_weights.grad, gn.task_weights.grad)


def test_param_groups():
    gn = GradNorm(lr=0.025)
    gn.bind(Toy().bound())
    (group,) = gn.param_groups()
    assert group["params"] == [gn.task_weights] and group["lr"] == 0.025 and group["weight_decay"] == 0.0
    gn_default = GradNorm(lr=None)
    gn_default.bind(Toy().bound())
    assert "lr" not in gn_default.param_groups()[0]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"alpha": -0.5}, "alpha"),
        ({"alpha": float("nan")}, "alpha"),
        ({"alpha": "1.5"}, "alpha"),
        ({"lr": 0.0}, "lr"),
        ({"lr": -1e-3}, "lr"),
        ({"lr": float("inf")}, "lr"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GradNorm(**kwargs)


def test_bind_needs_the_last_shared_layer():
    bound = Toy().bound()
    bound.last_shared_parameters = []
    with pytest.raises(ValueError, match="last_shared_parameters"):
        GradNorm().bind(bound)
