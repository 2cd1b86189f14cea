"""MTAN: attention masks select features of the shared network (masks of one give back the hard-sharing
network, masks of zero cut the heads off), per-task attention modules are distinct, the shared network
is mtan's SegNet / the dilated ResNet, and methods needing one shared representation are refused."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from okd.app import build
from okd.models.common import NoSharedRepresentation, dense_predictions
from okd.models.mtan import MTANResNet, MTANSegNet
from okd.models.segnet import SegNet
from okd.tasks import build_tasks
from okd.config import compose as compose_cfg

ALL = ["segmentation", "depth", "normal"]
TINY_RESNET = dict(depth=18, width=0.125, layers=[2, 2, 2, 2], aspp_channels=8)


def attention_modules(model: nn.Module) -> list[nn.Sequential]:
    return [m for stream in ("encoder_att", "decoder_att") if hasattr(model, stream)
            for per_task in getattr(model, stream).values() for m in per_task]


def force_masks(model: nn.Module, value: float) -> None:
    """Make every attention mask sigmoid(+-100) (exactly 1 or 0 in float32) in eval mode."""
    for att in attention_modules(model):
        bn = att[4]
        nn.init.zeros_(bn.weight)
        nn.init.constant_(bn.bias, 100.0 if value == 1 else -100.0)


def models():
    torch.manual_seed(0)
    return [MTANSegNet(build_tasks(ALL, 7), width=0.125), MTANResNet(build_tasks(ALL, 7), **TINY_RESNET)]


@pytest.mark.parametrize("index", [0, 1])
def test_masks_of_one_give_the_hard_sharing_network(index):
    model = models()[index].eval()
    force_masks(model, 1.0)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        out = model(x)
        shared = out.features["decoder" if index == 0 else "layer4"]  # what the HPS heads would read
        raw = {t.name: model.heads[t.name](shared) for t in model.tasks}
        expected = dense_predictions(model.tasks, raw, x.shape[-2:])
    for name in ALL:
        torch.testing.assert_close(out.predictions[name], expected[name])


@pytest.mark.parametrize("index", [0, 1])
def test_masks_of_zero_cut_the_heads_off_the_shared_network(index):
    model = models()[index].eval()
    force_masks(model, 0.0)
    with torch.no_grad():
        depth = model(torch.rand(2, 3, 32, 32)).predictions["depth"]
    assert torch.allclose(depth, depth[..., :1, :1].expand_as(depth))  # a constant map: no image content


def test_every_task_has_its_own_attention_modules():
    seg, res = models()
    assert len(attention_modules(seg)) == 3 * 10 and len(attention_modules(res)) == 3 * 4
    for model in (seg, res):
        ids = [id(p) for m in attention_modules(model) for p in m.parameters()]
        assert len(ids) == len(set(ids)), "attention modules must not be shared between tasks"


def test_segnet_mtan_shares_mtans_segnet():
    with torch.device("meta"):
        model = MTANSegNet(build_tasks(ALL, 13))
        single = SegNet(build_tasks(["segmentation"], 13))
    shared_attention = {id(p) for n in ("encoder_block_att", "decoder_block_att") for p in getattr(model, n).parameters()}
    network = sum(p.numel() for p in model.shared_parameters() if id(p) not in shared_attention)
    head = sum(p.numel() for p in model.heads["segmentation"].parameters())
    assert network + head == single.num_parameters() == 24_981_069  # mtan's count of one SegNet
    assert model.num_parameters() == 44_229_073  # mtan prints 44,229,076: + its 3 uncertainty weights
    # the attention layers follow mtan's channel plan, e.g. decoder stage 1: [2 x 64 -> 64 -> 64]
    att = model.decoder_att["depth"][0]
    assert (att[0].in_channels, att[0].out_channels, att[3].out_channels) == (128, 64, 64)


def test_resnet_mtan_validates_its_stages():
    with pytest.raises(ValueError, match="at least 2 blocks per stage"):
        MTANResNet(build_tasks(["depth"]), **{**TINY_RESNET, "layers": [1, 2, 2, 2]})
    with pytest.raises(ValueError, match="divisible by 4"):
        MTANResNet(build_tasks(["depth"]), **{**TINY_RESNET, "width": 0.1})


def test_a_method_on_the_shared_representation_is_refused_with_a_clear_error(tmp_path):
    cfg = compose_cfg(["backbone=mtan_segnet", "backbone.width=0.125", "weighting=alignedmtl_ub", "logger=none",
                       "trainer.progress=false", "trainer.epochs=1", "dataset.train_size=4", "dataset.val_size=2",
                       "dataset.test_size=2", "dataset.height=32", "dataset.width=32"])
    trainer, ctx = build(cfg, tmp_path)
    with pytest.raises(NoSharedRepresentation, match="MTANSegNet has no single shared representation"):
        trainer.fit(ctx)
