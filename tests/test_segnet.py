"""SegNet as in mtan: structure, outputs, features and the shared/task parameter split."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from okd.models.segnet import SegNet
from okd.tasks import build_tasks


def convs(module: nn.Module) -> list[nn.Conv2d]:
    return [m for m in module.modules() if isinstance(m, nn.Conv2d)]


def test_full_width_structure_matches_mtan():
    model = SegNet(build_tasks(["segmentation", "depth", "normal"], 13), width=1.0)
    assert [len(convs(stage)) for stage in model.encoder] == [2, 2, 3, 3, 3]
    assert [convs(stage)[-1].out_channels for stage in model.encoder] == [64, 128, 256, 512, 512]
    assert [len(convs(stage)) for stage in model.decoder] == [2, 2, 3, 3, 3]
    assert [convs(stage)[-1].out_channels for stage in model.decoder] == [64, 64, 128, 256, 512]
    head = model.heads["segmentation"]
    assert [(c.kernel_size, c.in_channels, c.out_channels) for c in convs(head)] == [((3, 3), 64, 64), ((1, 1), 64, 13)]
    assert 24e6 < model.num_parameters() < 26e6


@pytest.mark.parametrize("tasks", [["depth"], ["segmentation", "normal"], ["segmentation", "depth", "normal"]])
def test_outputs_features_and_parameter_split(tasks):
    model = SegNet(build_tasks(tasks, 7), width=0.0625)
    out = model(torch.rand(2, 3, 40, 56))  # not a multiple of 32: unpooling restores every size
    expected = {"segmentation": 7, "depth": 1, "normal": 3}
    assert {k: tuple(v.shape) for k, v in out.predictions.items()} == {t: (2, expected[t], 40, 56) for t in tasks}
    assert list(out.features) == list(SegNet.feature_names)
    assert out.features["decoder"].shape == (2, 4, 40, 56)
    if "normal" in tasks:
        assert torch.allclose(out.predictions["normal"].norm(dim=1), torch.ones(2, 40, 56), atol=1e-5)
    shared, task = model.shared_parameters(), model.task_parameters()
    ids = [id(p) for p in shared] + [id(p) for p in task]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert all(any(p is q for q in shared) for p in model.last_shared_parameters())
    total = sum(out.predictions[t].float().mean() for t in tasks)
    total.backward()
    assert all(p.grad is not None for p in model.parameters())
