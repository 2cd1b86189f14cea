"""Cross-stitch units: Misra et al.'s initialisation and linear combination; columns are the single-task
networks; identity units separate the tasks, the initial units connect them."""
from __future__ import annotations

import pytest
import torch

from okd.models.cross_stitch import CrossStitchResNet, CrossStitchSegNet, CrossStitchUnit
from okd.models.resnet import ResNetASPP
from okd.models.segnet import SegNet
from okd.tasks import build_tasks

TINY_RESNET = dict(depth=18, width=0.125, layers=[1, 1, 1, 1], aspp_channels=8)


def test_unit_initialisation_follows_misra_et_al():
    assert CrossStitchUnit(1, 4).alpha.tolist() == [[1.0]]
    torch.testing.assert_close(CrossStitchUnit(2, 4).alpha.data, torch.tensor([[0.9, 0.1], [0.1, 0.9]]))
    three = CrossStitchUnit(3, 4).alpha.data
    torch.testing.assert_close(three, torch.tensor([[0.9, 0.05, 0.05], [0.05, 0.9, 0.05], [0.05, 0.05, 0.9]]))
    per_channel = CrossStitchUnit(3, 4, per_channel=True, alpha_same=0.8).alpha.data
    assert per_channel.shape == (3, 3, 4)
    torch.testing.assert_close(per_channel[..., 2], torch.tensor([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]]))


@pytest.mark.parametrize("per_channel", [False, True])
def test_unit_output_is_the_linear_combination_of_the_columns(per_channel):
    torch.manual_seed(0)
    unit = CrossStitchUnit(3, 4, per_channel=per_channel)
    with torch.no_grad():
        unit.alpha.normal_()
    xs = [torch.randn(2, 4, 3, 5) for _ in range(3)]
    out = unit(xs)
    a = unit.alpha.detach()
    for i in range(3):
        if per_channel:
            expected = sum(a[i, j].view(1, 4, 1, 1) * xs[j] for j in range(3))
        else:
            expected = sum(a[i, j] * xs[j] for j in range(3))
        torch.testing.assert_close(out[i], expected)


def test_one_task_resnet_is_the_hard_sharing_network():
    torch.manual_seed(0)
    tasks = build_tasks(["depth"])
    cs, plain = CrossStitchResNet(tasks, **TINY_RESNET).eval(), ResNetASPP(tasks, **TINY_RESNET).eval()
    plain.encoder.load_state_dict(cs.columns[0].state_dict())
    plain.heads.load_state_dict(cs.heads.state_dict())
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(cs(x).predictions["depth"], plain(x).predictions["depth"])


def test_one_task_segnet_is_the_segnet():
    torch.manual_seed(0)
    tasks = build_tasks(["segmentation"], 7)
    cs, plain = CrossStitchSegNet(tasks, width=0.125).eval(), SegNet(tasks, width=0.125).eval()
    plain.encoder.load_state_dict(cs.columns[0].encoder.state_dict())
    plain.decoder.load_state_dict(cs.columns[0].decoder.state_dict())
    plain.heads.load_state_dict(cs.heads.state_dict())
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        out = cs(x)
        torch.testing.assert_close(out.predictions["segmentation"], plain(x).predictions["segmentation"])
    assert set(out.features) == {f"segmentation/{s}" for s in plain.feature_names}


@pytest.mark.parametrize("cls, kwargs", [(CrossStitchResNet, TINY_RESNET), (CrossStitchSegNet, dict(width=0.125))])
def test_units_decide_whether_tasks_exchange_features(cls, kwargs):
    torch.manual_seed(0)
    model = cls(build_tasks(["segmentation", "depth"], 7), **kwargs).train()
    x, labels = torch.rand(2, 3, 32, 32), torch.randint(0, 7, (2, 32, 32))

    def segmentation_grad_on_depth_column() -> float:
        model.zero_grad()
        loss = model.tasks[0].loss(model(x).predictions["segmentation"], labels)
        loss.backward()
        return sum(float(p.grad.abs().sum()) for p in model.columns[1].parameters() if p.grad is not None)

    assert segmentation_grad_on_depth_column() > 0  # Misra's initial units mix the columns
    with torch.no_grad():
        for unit in model.units:
            unit.alpha.copy_(torch.eye(2))
    assert segmentation_grad_on_depth_column() == 0.0  # identity units: separate single-task networks
    assert model.last_shared_layer() is model.units[-1]
