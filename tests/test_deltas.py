"""delta_m / delta_p (docs/metrics.md#delta_m-and-delta_p) on hand-computed examples, both sign directions."""
from __future__ import annotations

import pytest

from okd.metrics import delta_m, delta_p, deltas

HIB = {"segmentation/miou": True, "segmentation/pix_acc": True, "depth/abs_err": False}
BASE = {"segmentation/miou": 40.0, "segmentation/pix_acc": 60.0, "depth/abs_err": 0.4}


def test_hand_computed_example():
    values = {"segmentation/miou": 44.0, "segmentation/pix_acc": 60.0, "depth/abs_err": 0.5}
    # changes: miou +0.10, pix_acc 0, abs_err -(0.5-0.4)/0.4 = -0.25 (lower is better)
    assert delta_m(values, BASE, HIB) == pytest.approx(100 * (0.10 + 0 - 0.25) / 3)
    # per task: segmentation (0.10 + 0) / 2 = 0.05, depth -0.25 -> mean -0.10
    assert delta_p(values, BASE, HIB) == pytest.approx(-10.0)


def test_lower_error_is_positive_and_equal_results_are_zero():
    better = dict(BASE, **{"depth/abs_err": 0.3})
    assert delta_m(better, BASE, HIB) == pytest.approx(100 * 0.25 / 3)
    assert delta_p(better, BASE, HIB) == pytest.approx(100 * 0.25 / 2)
    assert deltas(BASE, BASE, HIB) == {"delta_m": 0.0, "delta_p": 0.0}


def test_metrics_missing_from_the_base_are_left_out_and_none_shared_is_an_error():
    values = dict(BASE, **{"normal/mean": 20.0})
    assert delta_m(values, BASE, {**HIB, "normal/mean": False}) == 0.0
    with pytest.raises(ValueError, match="no metric"):
        delta_m({"normal/mean": 1.0}, BASE, {"normal/mean": False})
    with pytest.raises(ValueError, match="undefined"):
        delta_m(BASE, dict(BASE, **{"depth/abs_err": 0.0}), HIB)
