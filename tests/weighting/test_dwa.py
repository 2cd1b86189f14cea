"""DWA (okd/weighting/dwa.py) against Liu et al. 2019, Eq. (7), with hand-computed weights."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from okd.weighting.base import BoundModel
from okd.weighting.dwa import DWA


def _bound(num_tasks: int) -> BoundModel:
    shared = nn.Linear(2, 2)
    return BoundModel([f"t{k}" for k in range(num_tasks)], list(shared.parameters()))


def _dwa(num_tasks: int, temperature: float = 2.0) -> DWA:
    dwa = DWA(temperature=temperature)
    dwa.bind(_bound(num_tasks))
    return dwa


def _current(dwa: DWA) -> torch.Tensor:
    return dwa.weights(torch.zeros(dwa.num_tasks))


def test_weights_are_one_in_epochs_0_and_1_then_eq7():
    dwa = _dwa(2, temperature=2.0)
    assert torch.equal(_current(dwa), torch.ones(2))  # epoch 0
    dwa.on_epoch_end(0, torch.tensor([2.0, 1.0]))
    assert torch.equal(_current(dwa), torch.ones(2))  # epoch 1: only one past epoch
    dwa.on_epoch_end(1, torch.tensor([1.0, 1.0]))
    # w = (1/2, 1/1); lambda = 2 softmax(w / 2) = 2 (e^0.25, e^0.5) / (e^0.25 + e^0.5)
    expected = torch.tensor([0.8756469982284038, 1.1243530017715964])
    torch.testing.assert_close(_current(dwa), expected, rtol=0, atol=1e-6)


def test_three_tasks_temperature_one_uses_last_two_epochs():
    dwa = _dwa(3, temperature=1.0)
    history = [(1.0, 2.0, 4.0), (0.5, 1.5, 4.0), (0.4, 1.2, 2.0)]
    expected = [
        None,
        [0.7628256377713969, 0.97948750739951, 1.257686854829093],  # w = (0.5, 0.75, 1)
        [1.094563651599564, 1.0945636515995636, 0.8108726968008726],  # w = (0.8, 0.8, 0.5)
    ]
    for epoch, (losses, want) in enumerate(zip(history, expected)):
        dwa.on_epoch_end(epoch, torch.tensor(losses))
        got = _current(dwa)
        if want is None:
            assert torch.equal(got, torch.ones(3))
        else:
            torch.testing.assert_close(got, torch.tensor(want), rtol=0, atol=1e-6)
            torch.testing.assert_close(got.sum(), torch.tensor(3.0))


def test_backward_weights_losses_adds_extra_and_returns_detached_copy():
    shared = nn.Linear(3, 2)
    heads = [nn.Linear(2, 1), nn.Linear(2, 1)]
    dwa = DWA(temperature=2.0)
    dwa.bind(BoundModel(["a", "b"], list(shared.parameters())))
    dwa.on_epoch_end(0, torch.tensor([2.0, 1.0]))
    dwa.on_epoch_end(1, torch.tensor([1.0, 1.0]))
    lam = torch.tensor([0.8756469982284038, 1.1243530017715964])

    x = torch.linspace(-1, 1, 12).reshape(4, 3)

    def losses_and_extra():
        z = shared(x)
        losses = torch.stack([heads[0](z).pow(2).mean(), heads[1](z).abs().mean()])
        return losses, z.pow(2).mean()

    losses, extra = losses_and_extra()
    expected = torch.autograd.grad((lam * losses).sum() + extra, list(shared.parameters()))
    losses, extra = losses_and_extra()
    used = dwa.backward(losses, extra_loss=extra)
    for p, g in zip(shared.parameters(), expected):
        torch.testing.assert_close(p.grad, g, rtol=1e-6, atol=1e-6)
    assert used.shape == (2,) and not used.requires_grad
    torch.testing.assert_close(used, lam, rtol=0, atol=1e-6)
    dwa.on_epoch_end(2, torch.tensor([0.1, 1.0]))  # new weights must not alter the returned ones
    torch.testing.assert_close(used, lam, rtol=0, atol=1e-6)


def test_checkpoint_round_trip_keeps_history():
    dwa = _dwa(3, temperature=1.0)
    dwa.on_epoch_end(0, torch.tensor([1.0, 2.0, 4.0]))
    dwa.on_epoch_end(1, torch.tensor([0.5, 1.5, 4.0]))
    state = dwa.checkpoint_state()

    restored = _dwa(3, temperature=1.0)
    restored.load_checkpoint_state(state)
    assert torch.equal(_current(restored), _current(dwa))
    for d in (dwa, restored):
        d.on_epoch_end(2, torch.tensor([0.4, 1.2, 2.0]))
    assert torch.equal(_current(restored), _current(dwa))
    torch.testing.assert_close(
        _current(restored), torch.tensor([1.094563651599564, 1.0945636515995636, 0.8108726968008726]),
        rtol=0, atol=1e-6,
    )


def test_restore_after_one_epoch_still_waits_for_the_second():
    dwa = _dwa(2)
    dwa.on_epoch_end(0, torch.tensor([2.0, 1.0]))
    restored = _dwa(2)
    restored.load_checkpoint_state(dwa.checkpoint_state())
    restored.on_epoch_end(1, torch.tensor([1.0, 1.0]))
    torch.testing.assert_close(
        _current(restored), torch.tensor([0.8756469982284038, 1.1243530017715964]), rtol=0, atol=1e-6
    )


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan"), float("inf"), "2", True])
def test_bad_temperature_raises(temperature):
    with pytest.raises(ValueError, match="temperature"):
        DWA(temperature=temperature)


def test_bad_epoch_losses_raise():
    dwa = _dwa(2)
    with pytest.raises(ValueError, match="2 entries"):
        dwa.on_epoch_end(0, torch.tensor([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="> 0"):
        dwa.on_epoch_end(0, torch.tensor([0.0, 1.0]))
