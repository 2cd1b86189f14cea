"""OTW (okd/weighting/otw.py) against docs/okd.md#online-task-weighting-otw with hand-computed weights."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from okd.app import build
from okd.weighting.base import BoundModel
from okd.weighting.otw import OTW
from okd.config import compose as compose_cfg

CONF = Path(__file__).resolve().parents[2] / "conf" / "weighting"


def _otw(k: int = 3, **kwargs) -> OTW:
    otw = OTW(**kwargs)
    otw.bind(BoundModel([f"t{i}" for i in range(k)], list(nn.Linear(2, 2).parameters())))
    return otw


def _now(otw: OTW) -> list[float]:
    return otw.weights(torch.zeros(otw.num_tasks, dtype=torch.float64)).tolist()


def _expected(values: list[float]) -> list[float]:
    """K v_k / sum_j v_j for already-clamped v."""
    return [len(values) * v / sum(values) for v in values]


def test_released_formula_first_second_and_later_epochs():
    otw = _otw(temperature=0.1, clamp=10.0)
    assert _now(otw) == [1.0, 1.0, 1.0]                                   # first epoch
    # second epoch: r = min(L/T, 1) = (0.1, 1, 0.5) -> exp(r/0.1) = (e, e^10 -> 10, e^5 -> 10)
    otw.on_epoch_end(0, torch.tensor([0.2, 3.0, 1.0]), torch.tensor([2.0, 1.0, 2.0]))
    assert _now(otw) == pytest.approx(_expected([math.e, 10.0, 10.0]), rel=1e-6)
    # later: r = L/T unclipped = (2, 0.05, 0.2) -> (10, e^0.5, e^2)
    otw.on_epoch_end(1, torch.tensor([2.0, 0.05, 0.4]), torch.tensor([1.0, 1.0, 2.0]))
    assert _now(otw) == pytest.approx(_expected([10.0, math.exp(0.5), math.exp(2.0)]), rel=1e-6)
    assert otw.ratios.tolist() == pytest.approx([2.0, 0.05, 0.2])


def test_clamp_regime_is_equal_weighting():
    """With clamp 10 and T = 0.1, every r above 0.1 ln 10 ~ 0.23 gives exactly lambda = 1."""
    otw = _otw()
    otw.on_epoch_end(0, torch.tensor([0.5, 0.9, 3.0]), torch.tensor([1.0, 1.0, 1.0]))
    assert _now(otw) == [1.0, 1.0, 1.0]
    otw.on_epoch_end(1, torch.tensor([0.24, 7.0, 1.0]), torch.tensor([1.0, 1.0, 1.0]))
    assert _now(otw) == [1.0, 1.0, 1.0]


def test_nan_and_infinite_ratios_are_guarded_by_the_clamp():
    otw = _otw()
    otw.on_epoch_end(0, torch.tensor([1.0, 1.0, 1.0]), torch.tensor([1.0, 1.0, 1.0]))
    # r = (0/0 = NaN, 1/0 = inf, 0.1): g(NaN) = clamp, g(exp(inf)) = clamp, g(e) = e
    otw.on_epoch_end(1, torch.tensor([0.0, 1.0, 0.1]), torch.tensor([0.0, 0.0, 1.0]))
    assert _now(otw) == pytest.approx(_expected([10.0, 10.0, math.e]), rel=1e-6)
    assert all(math.isfinite(w) for w in _now(otw))


def test_unclamped_is_k_softmax_without_overflow_and_refuses_nan():
    otw = _otw(clamp=None)
    otw.on_epoch_end(0, torch.tensor([0.2, 3.0, 1.0]), torch.tensor([2.0, 1.0, 2.0]))
    # second epoch: r = min(L/T, 1) = (0.1, 1, 0.5): the min matters here (3.0 -> 1)
    assert _now(otw) == pytest.approx(_expected([math.exp(1.0), math.exp(10.0), math.exp(5.0)]), rel=1e-6)
    otw.on_epoch_end(1, torch.tensor([100.0, 99.0, 0.5]), torch.tensor([1.0, 1.0, 1.0]))  # exp(1000) overflows
    z = [1000.0, 990.0, 5.0]
    m = max(z)
    expected = _expected([math.exp(v - m) for v in z])
    assert _now(otw) == pytest.approx(expected, rel=1e-6, abs=1e-12)
    with pytest.raises(FloatingPointError, match="non-finite loss ratio"):
        otw.on_epoch_end(2, torch.tensor([0.0, 1.0, 1.0]), torch.tensor([0.0, 1.0, 1.0]))


def test_v1_adds_the_loss_descent_rate_with_temperature_one():
    otw = _otw(temperature=1.0, clamp=None, variant="v1")
    otw.on_epoch_end(0, torch.tensor([2.0, 0.5, 1.0]), torch.tensor([1.0, 1.0, 4.0]))
    r = [1.0, 0.5, 0.25]                                  # min(L/T, 1)
    assert _now(otw) == pytest.approx(_expected([math.exp(v) for v in r]), rel=1e-6)
    otw.on_epoch_end(1, torch.tensor([1.0, 0.4, 0.5]), torch.tensor([2.0, 0.2, 1.0]))
    r = [0.5 + 1.0 / 2.0, 1.0 + 0.4 / 0.5, 0.5 + 0.5 / 1.0]  # min(L/T, 1) + L(e-1)/L(e-2)
    assert _now(otw) == pytest.approx(_expected([math.exp(v) for v in r]), rel=1e-6)


def test_missing_teacher_losses_and_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="use kd=okd"):
        _otw().on_epoch_end(0, torch.ones(3), None)
    for kwargs, message in (({"temperature": 0.0}, "temperature"), ({"clamp": -1.0}, "clamp"),
                            ({"variant": "v3"}, "variant")):
        with pytest.raises(ValueError, match=message):
            OTW(**kwargs)


def test_weights_survive_a_checkpoint():
    otw = _otw()
    otw.on_epoch_end(0, torch.tensor([0.1, 1.0, 1.0]), torch.tensor([1.0, 1.0, 1.0]))
    otw.on_epoch_end(1, torch.tensor([0.1, 1.0, 1.0]), torch.tensor([1.0, 1.0, 1.0]))
    fresh = _otw()
    fresh.load_checkpoint_state(otw.checkpoint_state())
    assert _now(fresh) == _now(otw) and int(fresh.epochs_seen) == 2


def test_yaml_presets_hold_the_released_values():
    otw = instantiate(OmegaConf.load(CONF / "otw.yaml"), _convert_="all")
    assert (otw.temperature, otw.clamp, otw.variant) == (0.1, 10.0, "v2")
    v1 = instantiate(OmegaConf.load(CONF / "otw_v1.yaml"), _convert_="all")
    assert (v1.temperature, v1.clamp, v1.variant) == (1.0, None, "v1")


def test_otw_without_teachers_fails_at_start_up(tmp_path):
    cfg = compose_cfg(["dataset.train_size=4", "dataset.val_size=2", "dataset.test_size=2", "dataset.height=32",
                       "dataset.width=32", "logger=none", "trainer.progress=false", "weighting=otw", "kd=none"])
    trainer, ctx = build(cfg, tmp_path)
    with pytest.raises(ValueError, match="needs teacher losses.*kd=okd"):
        trainer.fit(ctx)
    assert not (tmp_path / "metrics.jsonl").exists()
