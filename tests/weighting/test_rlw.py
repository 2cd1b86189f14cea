"""RLW (okd/weighting/rlw.py) against Lin et al. 2022: samplers, normalisation, seeding, state."""
from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from okd.config import compose
from okd.weighting.base import BoundModel
from okd.weighting.rlw import RLW, SAMPLERS

DRAWS = 3000


def _bound(rlw: RLW, num_tasks: int = 3) -> RLW:
    rlw.bind(BoundModel([f"t{k}" for k in range(num_tasks)], list(nn.Linear(2, 2).parameters())))
    return rlw


def _rlw(num_tasks: int = 3, **kwargs) -> RLW:
    return _bound(RLW(**kwargs), num_tasks)


def _draws(rlw: RLW, n: int = DRAWS) -> torch.Tensor:
    losses = torch.ones(rlw.num_tasks)
    return torch.stack([rlw.weights(losses) for _ in range(n)])


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_weights_are_on_the_simplex_with_mean_one_over_k(sampler):
    lam = _draws(_rlw(3, sampler=sampler, seed=1))
    assert lam.shape == (DRAWS, 3)
    assert bool((lam >= 0).all())
    torch.testing.assert_close(lam.sum(dim=1), torch.ones(DRAWS))
    # Exchangeable samplers: E[lambda_k] = 1/K.
    torch.testing.assert_close(lam.mean(dim=0), torch.full((3,), 1 / 3), rtol=0, atol=0.02)


def test_normal_is_softmax_of_standard_normal_draws_from_the_seeded_generator():
    lam = _draws(_rlw(4, sampler="normal", seed=7), n=3)
    gen = torch.Generator().manual_seed(7)
    expected = torch.stack([torch.softmax(torch.randn(4, generator=gen), dim=0) for _ in range(3)])
    torch.testing.assert_close(lam, expected)


def test_dirichlet_one_has_the_dirichlet_variance():
    lam = _draws(_rlw(3, sampler="dirichlet", seed=2))
    # Dirichlet(1, 1, 1): Var[lambda_k] = (K - 1) / (K^2 (K + 1)) = 2 / 36.
    torch.testing.assert_close(lam.var(dim=0), torch.full((3,), 2 / 36), rtol=0, atol=0.006)


def test_uniform_is_normalised_uniform():
    lam = _draws(_rlw(2, sampler="uniform", seed=3), n=2)
    gen = torch.Generator().manual_seed(3)
    expected = []
    for _ in range(2):
        u = torch.rand(2, generator=gen)
        expected.append(u / u.sum())
    torch.testing.assert_close(lam, torch.stack(expected))


def test_bernoulli_masks_are_uniform_over_nonempty_subsets():
    lam = _draws(_rlw(3, sampler="bernoulli", seed=4), n=7000)
    on = lam > 0
    m = on.sum(dim=1)
    assert bool((m >= 1).all())
    torch.testing.assert_close(lam, on.float() / m[:, None].float())  # values 0 or 1/m
    codes = (on.long() * torch.tensor([1, 2, 4])).sum(dim=1)
    freq = torch.bincount(codes, minlength=8).float() / len(codes)
    assert freq[0] == 0
    torch.testing.assert_close(freq[1:], torch.full((7,), 1 / 7), rtol=0, atol=0.015)
    # Bernoulli(1/2) conditioned on at least one task on: P(task on) = 2^(K-1) / (2^K - 1) = 4/7.
    torch.testing.assert_close(on.float().mean(dim=0), torch.full((3,), 4 / 7), rtol=0, atol=0.02)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_scale_num_tasks_sums_to_k(sampler):
    lam = _draws(_rlw(3, sampler=sampler, scale="num_tasks"), n=20)
    torch.testing.assert_close(lam.sum(dim=1), torch.full((20,), 3.0))


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_seed_reproduces_and_state_round_trip_continues_the_stream(sampler):
    a, b = _rlw(3, sampler=sampler, seed=5), _rlw(3, sampler=sampler, seed=5)
    assert torch.equal(_draws(a, 10), _draws(b, 10))
    other_seed = _draws(_rlw(3, sampler=sampler, seed=6), 10)
    assert not torch.equal(other_seed, _draws(_rlw(3, sampler=sampler, seed=5), 10))

    state = a.checkpoint_state()
    expected = _draws(a, 10)
    restored = _rlw(3, sampler=sampler, seed=5)
    _draws(restored, 3)  # a restored run must not depend on what it drew before loading
    restored.load_checkpoint_state(state)
    assert torch.equal(_draws(restored, 10), expected)


def test_round_trip_before_any_draw_starts_from_the_seed():
    fresh = _rlw(seed=9)
    restored = _rlw(seed=9)
    restored.load_checkpoint_state(_rlw(seed=9).checkpoint_state())
    assert torch.equal(_draws(restored, 5), _draws(fresh, 5))


def test_backward_uses_the_drawn_weights_and_adds_extra_loss():
    shared = nn.Linear(3, 2)
    rlw = RLW(seed=11)
    rlw.bind(BoundModel(["a", "b"], list(shared.parameters())))
    lam = _draws(_rlw(2, seed=11), n=1)[0]  # the same first draw
    x = torch.linspace(-1, 1, 9).reshape(3, 3)

    def losses_and_extra():
        z = shared(x)
        return torch.stack([z[:, 0].pow(2).mean(), z[:, 1].abs().mean()]), z.sum()

    losses, extra = losses_and_extra()
    expected = torch.autograd.grad((lam * losses).sum() + extra, list(shared.parameters()))
    losses, extra = losses_and_extra()
    used = rlw.backward(losses, extra_loss=extra)
    torch.testing.assert_close(used, lam)
    assert used.shape == (2,) and not used.requires_grad
    for p, g in zip(shared.parameters(), expected):
        torch.testing.assert_close(p.grad, g)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_weights_are_drawn_on_the_losses_device():
    rlw = _rlw(3, seed=0)
    lam = rlw.weights(torch.ones(3, device="cuda"))
    assert lam.device.type == "cuda"
    restored = _rlw(3, seed=0)
    restored.load_checkpoint_state(rlw.checkpoint_state())
    ones = torch.ones(3, device="cuda")
    assert torch.equal(restored.weights(ones), rlw.weights(ones))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sampler": "gaussian"}, "sampler"),
        ({"scale": "k"}, "scale"),
        ({"seed": -1}, "seed"),
        ({"seed": 1.5}, "seed"),
        ({"seed": True}, "seed"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RLW(**kwargs)


def test_bernoulli_task_limit():
    with pytest.raises(ValueError, match="at most 62 tasks"):
        _rlw(63, sampler="bernoulli")


def test_checkpoints_of_the_earlier_generator_format_still_load():
    # before RLW used gradtools.OwnedGenerator: {"device_type", "state"}, or None before any draw
    a = _rlw(3, seed=4)
    _draws(a, 2)
    gen = a.generator.get("cpu")
    old = {"module": a.state_dict(), "extra": {"generator": {"device_type": "cpu", "state": gen.get_state()}}}
    expected = _draws(a, 5)
    restored = _rlw(3, seed=4)
    restored.load_checkpoint_state(old)
    assert torch.equal(_draws(restored, 5), expected)
    fresh = _rlw(3, seed=4)
    fresh.load_checkpoint_state({"module": fresh.state_dict(), "extra": {"generator": None}})
    assert torch.equal(_draws(fresh, 5), _draws(_rlw(3, seed=4), 5))


def _yaml_draws(cfg) -> torch.Tensor:
    """Draws of the RLW that ``python run.py`` builds from the composed run config ``cfg``."""
    return _draws(_bound(instantiate(cfg.weighting, _convert_="all")), 5)


def test_yaml_seed_follows_the_run_seed_unless_set():
    cfg = compose(["weighting=rlw", "seed=1"], as_run=False)
    one = _yaml_draws(cfg)
    assert torch.equal(one, _yaml_draws(cfg))  # same run seed, same draws
    assert torch.equal(one, _draws(_rlw(seed=1), 5))
    cfg.seed = 2  # the run's seed, which ${seed} reads when the weighting is built
    assert torch.equal(_yaml_draws(cfg), _draws(_rlw(seed=2), 5))
    assert not torch.equal(_yaml_draws(cfg), one)
    cfg.weighting.seed = 1  # what the override weighting.seed=1 sets
    assert torch.equal(_yaml_draws(cfg), one)
