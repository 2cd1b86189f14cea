"""Losses and metrics of docs/metrics.md against values computed by hand."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from okd.tasks import Depth, Normal, Segmentation, build_tasks, metric_directions


def test_segmentation_metric_by_hand():
    # 3 classes; -1 is ignored, 5 is out of range and ignored too.
    target = torch.tensor([[0, 0, 1, 1, 2, -1, 5]])
    pred = torch.tensor([[0, 1, 1, 1, 0, 2, 2]])
    m = Segmentation(3).metric()
    m.update(pred, target)
    # valid pixels: (t,p) = (0,0) (0,1) (1,1) (1,1) (2,0)
    # class 0: tp 1, union = |t=0| 2 + |p=0| 2 - 1 = 3 -> 1/3
    # class 1: tp 2, union = 2 + 3 - 2 = 3 -> 2/3 ; class 2: tp 0, union = 1 + 0 - 0 = 1 -> 0
    out = m.compute()
    assert out["miou"] == pytest.approx(100 * (1 / 3 + 2 / 3 + 0) / 3)
    assert out["pix_acc"] == pytest.approx(100 * 3 / 5)


def test_segmentation_miou_skips_classes_absent_from_target_and_prediction():
    m = Segmentation(4).metric()
    m.update(torch.tensor([[0, 1]]), torch.tensor([[0, 1]]))  # classes 2 and 3 never appear
    assert m.compute()["miou"] == pytest.approx(100.0)


def test_segmentation_loss_ignores_minus_one():
    logits = torch.randn(1, 3, 1, 4)
    target = torch.tensor([[[0, 2, -1, 1]]])
    expected = F.cross_entropy(logits[..., [0, 1, 3]], target[..., [0, 1, 3]])
    assert Segmentation(3).loss(logits, target) == pytest.approx(float(expected))


def test_depth_metric_and_loss_by_hand():
    pred = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 1, 1, 4)
    target = torch.tensor([2.0, 0.0, 3.0, 8.0]).view(1, 1, 1, 4)  # 0 = invalid
    m = Depth().metric()
    m.update(pred, target)
    out = m.compute()
    assert out["abs_err"] == pytest.approx((1 + 0 + 4) / 3)
    assert out["rel_err"] == pytest.approx((0.5 + 0 + 0.5) / 3)
    assert float(Depth().loss(pred, target)) == pytest.approx(5 / 3)


def _unit(deg: float) -> list[float]:
    r = math.radians(deg)
    return [math.sin(r), 0.0, math.cos(r)]


def test_normal_metric_by_hand():
    gt = torch.tensor([[0.0, 0.0, 1.0]] * 4 + [[0.0, 0.0, 0.0]])          # last pixel invalid
    pred = torch.tensor([_unit(0), _unit(90), _unit(45), _unit(20), _unit(170)])
    pred = pred.T.reshape(1, 3, 1, 5)
    gt = gt.T.reshape(1, 3, 1, 5)
    m = Normal().metric()
    m.update(pred, gt)
    out = m.compute()
    assert out["mean"] == pytest.approx((0 + 90 + 45 + 20) / 4, abs=1e-6)
    # median of {0, 20, 45, 90} = (20 + 45) / 2, exact to half a 0.01-degree bin
    assert out["median"] == pytest.approx(32.5, abs=0.01)
    assert out["within_11.25"] == pytest.approx(25.0)
    assert out["within_22.5"] == pytest.approx(50.0)
    assert out["within_30"] == pytest.approx(50.0)
    # loss: 1 - mean cosine over valid pixels
    cos = [1.0, 0.0, math.cos(math.radians(45)), math.cos(math.radians(20))]
    assert float(Normal().loss(pred, gt)) == pytest.approx(1 - sum(cos) / 4, abs=1e-6)


def test_normal_valid_mask_keeps_vectors_whose_components_sum_to_zero():
    s = math.sqrt(0.5)
    gt = torch.tensor([s, -s, 0.0]).view(1, 3, 1, 1)
    m = Normal().metric()
    m.update(gt.clone(), gt)
    assert m.compute()["mean"] == pytest.approx(0.0, abs=1e-3)


def test_normal_median_matches_numpy_on_odd_and_even_counts():
    g = torch.Generator().manual_seed(1)
    for n in (7, 8):
        gt = F.normalize(torch.randn(1, 3, 1, n, generator=g), dim=1)
        pred = F.normalize(torch.randn(1, 3, 1, n, generator=g), dim=1)
        m = Normal().metric()
        m.update(pred, gt)
        err = torch.rad2deg(torch.acos(F.cosine_similarity(pred.double(), gt.double(), dim=1).clamp(-1, 1)))
        assert m.compute()["median"] == pytest.approx(float(err.median() if n % 2 else err.flatten().sort().values[n // 2 - 1: n // 2 + 1].mean()), abs=0.01)


def test_normal_head_output_is_normalised():
    raw = torch.randn(2, 3, 4, 5) * 7
    assert torch.allclose(Normal().activate(raw).norm(dim=1), torch.ones(2, 4, 5), atol=1e-5)


@pytest.mark.parametrize("task_factory", [lambda: Segmentation(5), Depth, Normal])
def test_metrics_do_not_depend_on_batch_size(task_factory):
    task = task_factory()
    g = torch.Generator().manual_seed(0)
    n, h, w = 8, 6, 7
    if isinstance(task, Segmentation):
        target = torch.randint(-1, 5, (n, h, w), generator=g)
        pred = torch.randn(n, 5, h, w, generator=g)
    elif isinstance(task, Depth):
        target = torch.rand(n, 1, h, w, generator=g) * (torch.rand(n, 1, h, w, generator=g) > 0.2)
        pred = torch.rand(n, 1, h, w, generator=g)
    else:
        target = F.normalize(torch.randn(n, 3, h, w, generator=g), dim=1)
        target = target * (torch.rand(n, 1, h, w, generator=g) > 0.2)
        pred = F.normalize(torch.randn(n, 3, h, w, generator=g), dim=1)
    results = []
    for bs in (1, 4):
        m = task.metric()
        for i in range(0, n, bs):
            m.update(pred[i:i + bs], target[i:i + bs])
        results.append(m.compute())
    assert results[0].keys() == results[1].keys()
    for k in results[0]:
        assert results[0][k] == pytest.approx(results[1][k], rel=1e-12, abs=1e-12), k


def test_build_tasks_and_directions():
    tasks = build_tasks(["depth", "segmentation"], num_classes=13)
    assert [t.name for t in tasks] == ["depth", "segmentation"]
    assert tasks[1].channels == 13
    d = metric_directions(tasks)
    assert d["segmentation/miou"] is True and d["depth/abs_err"] is False
    with pytest.raises(ValueError, match="unknown task"):
        build_tasks(["depth", "edges"])
    with pytest.raises(ValueError, match="num_classes"):
        build_tasks(["segmentation"])
    with pytest.raises(ValueError, match="empty"):
        build_tasks([])
