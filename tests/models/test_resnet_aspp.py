"""The dilated ResNet is torchvision's network, the ASPP head is DeepLabV3's, and pretrained weights
load from torch.hub's cache or fail at start-up with the path to put them."""
from __future__ import annotations

from urllib.error import URLError

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.segmentation.deeplabv3 import DeepLabHead

from okd.app import ConfigError, build
from okd.models.common import PretrainedWeightsUnavailable
from okd.models.heads import ASPPHead
from okd.models.resnet import DilatedResNet, ResNetASPP, weights_cache_path
from okd.tasks import build_tasks
from okd.config import compose as compose_cfg

RESNET18_FILE = "resnet18-f37072fd.pth"  # torchvision's IMAGENET1K_V1 file name


def _copy(src: nn.Module, dst: nn.Module) -> None:
    """Copy parameters and buffers in registration order (names differ, shapes must not)."""
    a, b = list(src.state_dict().values()), list(dst.state_dict().values())
    assert [t.shape for t in a] == [t.shape for t in b]
    dst.load_state_dict(dict(zip(dst.state_dict().keys(), a)))


def test_dilated_resnet50_is_torchvisions_network():
    torch.manual_seed(0)
    ours = DilatedResNet(depth=50).eval()
    theirs = torchvision.models.resnet50(replace_stride_with_dilation=[False, True, True]).eval()
    expected = {k: v.shape for k, v in theirs.state_dict().items() if not k.startswith("fc.")}
    assert {k: v.shape for k, v in ours.state_dict().items()} == expected
    ours.load_state_dict({k: v for k, v in theirs.state_dict().items() if not k.startswith("fc.")})
    x = torch.rand(1, 3, 64, 48)
    with torch.no_grad():
        features = ours(x)
        t = theirs.maxpool(theirs.relu(theirs.bn1(theirs.conv1(x))))
        torch.testing.assert_close(features["stem"], t)
        for name in ("layer1", "layer2", "layer3", "layer4"):
            t = getattr(theirs, name)(t)
            torch.testing.assert_close(features[name], t)
    assert features["layer4"].shape == (1, 2048, 8, 6)  # output stride 8
    assert ours.channels == (64, 256, 512, 1024, 2048)


def test_output_stride_and_dilations_of_a_basic_block_resnet():
    net = DilatedResNet(depth=18)
    assert net.channels == (64, 64, 128, 256, 512)  # BasicBlock nets end with 512 channels
    # layer3: first block keeps dilation 1, the second uses 2; layer4: 2 then 4; no stride left.
    assert [(b.conv1.dilation[0], b.conv2.dilation[0]) for b in net.layer3] == [(1, 1), (2, 2)]
    assert [(b.conv1.dilation[0], b.conv2.dilation[0]) for b in net.layer4] == [(2, 2), (4, 4)]
    assert all(m.stride == (1, 1) for m in net.layer4.modules() if isinstance(m, nn.Conv2d))
    assert net(torch.rand(1, 3, 64, 64))["layer4"].shape[-2:] == (8, 8)
    assert DilatedResNet(depth=18, output_stride=16)(torch.rand(1, 3, 64, 64))["layer4"].shape[-2:] == (4, 4)
    # undilated (output stride 32) it is torchvision's resnet18
    theirs = torchvision.models.resnet18()
    ours = DilatedResNet(depth=18, output_stride=32)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in theirs.state_dict().items() if not k.startswith("fc.")}


@pytest.mark.parametrize("depth, last", [(34, 512), (101, 2048), (152, 2048)])
def test_every_depth_has_its_channels_and_blocks(depth, last):
    with torch.device("meta"):  # shapes only: no memory, no time
        net = DilatedResNet(depth=depth)
    assert net.channels[-1] == last
    assert [len(s) for s in net.stages()] == {34: [3, 4, 6, 3], 101: [3, 4, 23, 3], 152: [3, 8, 36, 3]}[depth]


def test_aspp_head_is_deeplabv3s():
    torch.manual_seed(0)
    ours, theirs = ASPPHead(64, 13, channels=16).eval(), DeepLabHead(64, 13).eval()
    theirs = nn.Sequential(*theirs)  # torchvision's head at 256 channels: compare at the same width
    theirs[0] = torchvision.models.segmentation.deeplabv3.ASPP(64, [12, 24, 36], out_channels=16)
    theirs[1], theirs[2] = nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
    theirs[4] = nn.Conv2d(16, 13, 1)
    theirs.eval()
    _copy(theirs, ours)
    x = torch.randn(2, 64, 9, 7)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x))
    full = ASPPHead(2048, 13)
    assert sum(p.numel() for p in full.parameters()) == sum(p.numel() for p in DeepLabHead(2048, 13).parameters())
    projection = full[0].project[0][0]
    assert (projection.in_channels, projection.out_channels) == (1280, 256)  # docs/okd.md#networks
    assert [b[0].dilation[0] for b in full[0].branches[1:4]] == [12, 24, 36]


def test_aspp_refuses_a_single_image_batch_in_training_with_a_clear_message():
    head = ASPPHead(8, 2, channels=4)
    with pytest.raises(ValueError, match="drop_last"):
        head(torch.randn(1, 8, 4, 4))
    head.eval()
    assert head(torch.randn(1, 8, 4, 4)).shape == (1, 2, 4, 4)


def test_resnet_parameter_count_of_the_paper_network():
    with torch.device("meta"):
        model = ResNetASPP(build_tasks(["segmentation", "depth", "normal"], 13))
    trunk = sum(p.numel() for p in model.encoder.parameters())
    assert trunk == 25_557_032 - (2048 * 1000 + 1000)  # torchvision resnet50 without its classifier
    assert model.num_parameters() == trunk + sum(p.numel() for p in model.heads.parameters())


# ---------------------------------------------------------------------------------------------
# Pretrained weights (never from the network in tests)
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty torch.hub cache under tmp_path; any download attempt fails as it would offline."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def no_network(url, *args, **kwargs):
        raise URLError(f"offline: {url}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return tmp_path / "hub" / "checkpoints"


def test_pretrained_offline_without_file_names_the_cache_path(offline_hub):
    tasks = build_tasks(["depth"])
    with pytest.raises(PretrainedWeightsUnavailable) as info:
        ResNetASPP(tasks, depth=18, pretrained=True)
    message = str(info.value)
    assert str(offline_hub / RESNET18_FILE) in message
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in message
    assert "backbone.pretrained=false" in message


def test_pretrained_error_reaches_the_user_through_the_app(offline_hub, tmp_path):
    cfg = compose_cfg(["backbone=resnet50", "backbone.depth=18", "backbone.pretrained=true", "logger=none",
                       "dataset.train_size=2", "dataset.val_size=2", "dataset.test_size=2"])
    with pytest.raises(ConfigError, match=rf"^backbone\.pretrained=true: .*{RESNET18_FILE}"):
        build(cfg, tmp_path / "run")


def test_pretrained_loads_from_the_cache_without_network(offline_hub):
    torch.manual_seed(0)
    reference = torchvision.models.resnet18().state_dict()
    offline_hub.mkdir(parents=True)
    torch.save(reference, offline_hub / RESNET18_FILE)
    assert weights_cache_path("https://x/y/" + RESNET18_FILE) == offline_hub / RESNET18_FILE
    model = ResNetASPP(build_tasks(["depth"]), depth=18, pretrained=True)
    for k, v in model.encoder.state_dict().items():
        torch.testing.assert_close(v, reference[k], msg=k)


def test_corrupt_cached_file_is_reported_as_such(offline_hub):
    offline_hub.mkdir(parents=True)
    (offline_hub / RESNET18_FILE).write_bytes(b"not a checkpoint")
    with pytest.raises(PretrainedWeightsUnavailable, match="could not be read"):
        ResNetASPP(build_tasks(["depth"]), depth=18, pretrained=True)


@pytest.mark.parametrize("kwargs, message", [
    (dict(depth=20), "depth must be one of"),
    (dict(output_stride=4), "output_stride must be one of"),
    (dict(width=0), "width must be > 0"),
    (dict(layers=[1, 1, 1]), "four block counts"),
    (dict(depth=18, width=0.5, pretrained=True), "needs the standard resnet18"),
    (dict(depth=18, pretrained=True, weights="NOPE"), "not a torchvision weight set"),
])
def test_bad_options_fail_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ResNetASPP(build_tasks(["depth"]), **kwargs)


def test_input_normalisation_uses_imagenet_statistics():
    torch.manual_seed(0)
    tiny = dict(depth=18, width=0.125, layers=[1, 1, 1, 1], aspp_channels=8)
    normalized = ResNetASPP(build_tasks(["depth"]), normalize_input=True, **tiny).eval()
    raw = ResNetASPP(build_tasks(["depth"]), **tiny).eval()
    raw.load_state_dict(normalized.state_dict())  # the statistics are not part of the checkpoint
    x = torch.rand(2, 3, 32, 32)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(normalized(x).predictions["depth"], raw((x - mean) / std).predictions["depth"])
