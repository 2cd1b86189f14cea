"""AFD (okd/kd/afd.py) against docs/okd.md#adaptive-feature-distillation-afd on hand-built tensors."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from okd.kd.afd import AdaptiveFeatureDistillation, channel_normalize, default_stages


def _pixel_loss(a: list[float], t: list[float], sigma: float, eps: float = 1e-6) -> float:
    """sum_c (n(a) - sigma n(t))^2 at one pixel, written out with math (independent of the module)."""
    na = math.sqrt(sum(x * x for x in a) + eps)
    nt = math.sqrt(sum(x * x for x in t) + eps)
    return sum((x / na - sigma * y / nt) ** 2 for x, y in zip(a, t))


def _reference(s, teachers, weights, sigma, task_weights):
    """L_AFD by explicit loops over tasks, stages, batch and pixels."""
    total, terms = 0.0, {}
    for i, task in enumerate(teachers):
        per_stage = []
        for j, stage in enumerate(s):
            x, t = s[stage], teachers[task][stage]
            b, c, h, w = x.shape
            acc = 0.0
            for bb in range(b):
                for yy in range(h):
                    for xx in range(w):
                        sv = x[bb, :, yy, xx].tolist()
                        a = [sum(weights[task][stage][o][k] * sv[k] for k in range(c)) for o in range(len(weights[task][stage]))]
                        acc += _pixel_loss(a, t[bb, :, yy, xx].tolist(), sigma[i][j])
            per_stage.append(acc / (b * h * w))
            terms[(task, stage)] = per_stage[-1]
        total += task_weights[task] * sum(per_stage) / len(per_stage)
    return total, terms


def test_channel_normalize_is_x_over_sqrt_sum_of_squares_plus_eps():
    x = torch.tensor([[[[3.0]], [[4.0]]]])  # B=1, C=2, 1x1
    assert torch.allclose(channel_normalize(x, 1), x / math.sqrt(25 + 1e-6))
    zero = torch.zeros(1, 3, 2, 2)
    assert torch.equal(channel_normalize(zero, 1), zero)  # eps keeps 0/0 finite


def test_map_loss_matches_the_formula_with_adaptors_gates_and_task_weights():
    torch.manual_seed(0)
    tasks, stages = ["segmentation", "normal"], ["a", "b"]
    student = {"a": torch.randn(2, 3, 2, 3), "b": torch.randn(2, 2, 1, 2)}
    teachers = {t: {"a": torch.randn(2, 3, 2, 3), "b": torch.randn(2, 4, 1, 2)} for t in tasks}  # b: 2 -> 4 ch
    afd = AdaptiveFeatureDistillation(tasks, stages)
    out = afd(student, teachers)
    sigma = afd.gates.detach().tolist()
    weights = {t: {s: afd.adaptors[t][s].weight.detach()[:, :, 0, 0].tolist() for s in stages} for t in tasks}
    expected, terms = _reference(student, teachers, weights, sigma, {"segmentation": 1.0, "normal": 2.0})
    assert out.total.item() == pytest.approx(expected, rel=1e-5)
    assert out.terms.shape == (2, 2)
    for i, t in enumerate(tasks):
        for j, s in enumerate(stages):
            assert out.terms[i, j].item() == pytest.approx(terms[(t, s)], rel=1e-5)
    assert afd.term_names() == ["afd/segmentation/a", "afd/segmentation/b", "afd/normal/a", "afd/normal/b"]


def test_unit_vectors_give_one_minus_two_sigma_cos_plus_sigma_squared():
    """The "adaptive" reading of docs/okd.md#adaptive-feature-distillation-afd: per pixel 1 - 2 sigma cos(theta) + sigma^2."""
    theta, sigma = 0.7, 0.3
    s = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1)
    t = torch.tensor([math.cos(theta), math.sin(theta)]).view(1, 2, 1, 1) * 5.0  # scale is normalised away
    afd = AdaptiveFeatureDistillation(["depth"], ["x"], adaptors=False)
    with torch.no_grad():
        afd.gates.fill_(sigma)
    out = afd({"x": s}, {"depth": {"x": t}})
    assert out.total.item() == pytest.approx(1 - 2 * sigma * math.cos(theta) + sigma ** 2, abs=1e-5)


def test_a_closed_gate_switches_the_stage_off_for_the_student():
    torch.manual_seed(1)
    s = torch.randn(2, 4, 3, 3, requires_grad=True)
    t = torch.randn(2, 4, 3, 3)
    afd = AdaptiveFeatureDistillation(["depth"], ["x"])
    grads = {}
    for sigma in (0.0, 0.8):
        with torch.no_grad():
            afd.gates.fill_(sigma)
        s.grad = None
        afd({"x": s}, {"depth": {"x": t}}).total.backward()
        grads[sigma] = s.grad.norm().item()
    assert grads[0.0] < 1e-3 * grads[0.8]  # |n(A s)|^2 ~ 1: nothing left to learn when sigma = 0


def test_teacher_features_receive_no_gradient_and_gates_and_adaptors_do():
    torch.manual_seed(2)
    s = torch.randn(2, 3, 2, 2, requires_grad=True)
    t = torch.randn(2, 3, 2, 2, requires_grad=True)  # even a teacher tensor with a graph is detached
    afd = AdaptiveFeatureDistillation(["segmentation", "depth"], ["x"])
    afd({"x": s}, {"segmentation": {"x": t}, "depth": {"x": t}}).total.backward()
    assert t.grad is None
    assert s.grad is not None and afd.gates.grad.abs().sum() > 0
    assert all(p.grad is not None for p in afd.adaptor_parameters())


@pytest.mark.parametrize("variant", ["per_task", "summed"])
def test_float16_features_with_zero_pixels_give_finite_gradients(variant):
    """Under fp16 autocast the features are float16 and ReLU leaves pixels at zero, where the terms of
    the normalisation's gradient reach 1/eps = 1e6: computed in float16 they were inf at every loss
    scale, so GradScaler skipped every step. In float32 they cancel (times a = 0) and what reaches the
    float16 features is finite (here at scale 1; GradScaler lowers its scale until that holds)."""
    torch.manual_seed(8)
    s = torch.relu(torch.randn(2, 8, 4, 4)).half().requires_grad_()
    s.data[:, :, 0, 0] = 0  # one all-zero pixel per image
    t = {task: torch.relu(torch.randn(2, 8, 4, 4)).half() for task in ("segmentation", "depth")}
    afd = AdaptiveFeatureDistillation(["segmentation", "depth"], ["x"], variant=variant)
    with torch.autocast("cpu", dtype=torch.float16):
        out = afd({"x": s}, {k: {"x": v} for k, v in t.items()})
    out.total.backward()
    assert out.total.dtype == torch.float32 and torch.isfinite(out.total)
    grads = [s.grad, afd.gates.grad, *(p.grad for p in afd.adaptor_parameters())]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_switches_gates_off_adaptors_off_and_plain_fd():
    torch.manual_seed(3)
    s, t = torch.randn(1, 3, 2, 2), torch.randn(1, 3, 2, 2)
    plain = AdaptiveFeatureDistillation(["depth"], ["x"], gates=False, adaptors=False)
    out = plain({"x": s}, {"depth": {"x": t}})
    assert plain.gates is None and not plain.has_adaptors
    expected = (channel_normalize(s, 1) - channel_normalize(t, 1)).pow(2).sum(1).mean()
    assert out.total.item() == pytest.approx(expected.item(), rel=1e-6)  # weight 1 for depth
    no_gates = AdaptiveFeatureDistillation(["depth"], ["x"], gates=False)
    no_gates({"x": s}, {"depth": {"x": t}})
    assert no_gates.gates is None and no_gates.has_adaptors
    assert torch.equal(no_gates.sigma(), torch.ones(1, 1))


def test_init_gates_uniform_in_unit_interval_adaptors_xavier_normal_no_bias():
    torch.manual_seed(4)
    afd = AdaptiveFeatureDistillation(["segmentation", "depth", "normal"], [f"s{j}" for j in range(20)])
    g = afd.gates.detach()
    assert g.shape == (3, 20) and g.min() >= 0 and g.max() < 1 and g.std() > 0.2  # U[0,1): std 0.289
    c = 256
    feats = {"s0": torch.zeros(1, c, 1, 1)}
    single = AdaptiveFeatureDistillation(["depth"], ["s0"])
    single({"s0": feats["s0"]}, {"depth": {"s0": feats["s0"]}})
    conv = single.adaptors["depth"]["s0"]
    assert isinstance(conv, nn.Conv2d) and conv.bias is None and conv.kernel_size == (1, 1)
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2.0 / (c + c)), rel=0.05)


def test_default_task_weights_are_1_1_2_and_a_missing_weight_is_an_error():
    afd = AdaptiveFeatureDistillation(["segmentation", "depth", "normal"], ["x"])
    assert afd.task_weights.tolist() == [1.0, 1.0, 2.0]
    with pytest.raises(ValueError, match="no weight for task"):
        AdaptiveFeatureDistillation(["depth"], ["x"], task_weights={"segmentation": 1.0})


def test_token_variant_targets_the_gated_sum_of_teachers_and_drops_leading_tokens():
    torch.manual_seed(5)
    s = torch.randn(2, 6, 4)                       # 2 leading task tokens + 4 patch tokens
    t = {"segmentation": torch.randn(2, 4, 4), "depth": torch.randn(2, 5, 4)}  # depth: 1 class token
    afd = AdaptiveFeatureDistillation(["segmentation", "depth"], ["block1"])
    with torch.no_grad():
        afd.gates.copy_(torch.tensor([[0.25], [0.5]]))
    out = afd({"block1": s}, {k: {"block1": v} for k, v in t.items()})
    assert afd.variant == "summed" and not afd.has_adaptors    # the paper's transformer variant
    n = lambda x: x / (x.pow(2).sum(-1, keepdim=True) + 1e-6).sqrt()
    target = 0.25 * n(t["segmentation"]) + 0.5 * n(t["depth"][:, 1:])
    expected = (n(s[:, 2:]) - target).pow(2).sum(-1).mean()
    assert out.total.item() == pytest.approx(expected.item(), rel=1e-6)
    assert afd.term_names() == ["afd/block1"]


def test_vit_blocks_as_maps_use_the_summed_variant_and_per_task_on_request():
    """okd/models/vit.py returns blocks as (B, C, h, w) maps of patch tokens: same normalisation over C."""
    torch.manual_seed(7)
    s = torch.randn(2, 4, 2, 2)
    t = {"segmentation": torch.randn(2, 4, 2, 2), "depth": torch.randn(2, 4, 2, 2)}
    afd = AdaptiveFeatureDistillation(["segmentation", "depth"], ["block1"])
    with torch.no_grad():
        afd.gates.copy_(torch.tensor([[0.25], [0.5]]))
    out = afd({"block1": s}, {k: {"block1": v} for k, v in t.items()})
    n = lambda x: channel_normalize(x, 1)
    expected = (n(s) - 0.25 * n(t["segmentation"]) - 0.5 * n(t["depth"])).pow(2).sum(1).mean()
    assert afd.variant == "summed" and out.total.item() == pytest.approx(expected.item(), rel=1e-6)
    per_task = AdaptiveFeatureDistillation(["segmentation", "depth"], ["block1"], variant="per_task")
    per_task({"block1": s}, {k: {"block1": v} for k, v in t.items()})
    assert per_task.variant == "per_task" and per_task.has_adaptors


def test_per_column_stages_distil_each_tasks_column_from_its_teacher():
    """Cross-stitch features are per task column: ``{task}/x`` reads column i for teacher i."""
    torch.manual_seed(8)
    cols = {"depth/x": torch.randn(2, 3, 2, 2), "normal/x": torch.randn(2, 3, 2, 2)}
    t = {"depth": {"depth/x": torch.randn(2, 3, 2, 2)}, "normal": {"normal/x": torch.randn(2, 3, 2, 2)}}
    afd = AdaptiveFeatureDistillation(["depth", "normal"], ["{task}/x"], gates=False, adaptors=False)
    out = afd(cols, t)
    n = lambda x: channel_normalize(x, 1)
    d = [(n(cols[f"{k}/x"]) - n(t[k][f"{k}/x"])).pow(2).sum(1).mean().item() for k in ("depth", "normal")]
    assert out.terms[:, 0].tolist() == pytest.approx(d, rel=1e-6)
    assert out.total.item() == pytest.approx(d[0] + 2 * d[1], rel=1e-6)
    assert afd.term_names() == ["afd/depth/x", "afd/normal/x"]
    adapted = AdaptiveFeatureDistillation(["depth", "normal"], ["{task}/x"])
    adapted(cols, t)
    assert set(adapted.adaptors) == {"depth", "normal"}


def test_bad_features_are_clear_errors():
    afd = AdaptiveFeatureDistillation(["depth"], ["x"], adaptors=False)
    with pytest.raises(ValueError, match="channels"):
        afd({"x": torch.randn(1, 3, 2, 2)}, {"depth": {"x": torch.randn(1, 4, 2, 2)}})
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        AdaptiveFeatureDistillation(["depth"], ["x"])({"x": torch.randn(2, 3)}, {"depth": {"x": torch.randn(2, 3)}})
    with pytest.raises(ValueError, match="spatial"):
        AdaptiveFeatureDistillation(["depth"], ["x"])({"x": torch.randn(1, 3, 2, 2)}, {"depth": {"x": torch.randn(1, 3, 4, 4)}})


def test_layout_rebuilds_the_same_adaptors_for_a_checkpoint():
    torch.manual_seed(6)
    feats = {"a": torch.randn(1, 3, 2, 2), "b.1": torch.randn(1, 5, 1, 1)}
    afd = AdaptiveFeatureDistillation(["depth", "normal"], ["a", "b.1"])
    afd(feats, {"depth": feats, "normal": feats})
    fresh = AdaptiveFeatureDistillation(["depth", "normal"], ["a", "b.1"])
    fresh.build_layout(afd.layout())
    fresh.load_state_dict(afd.state_dict())
    assert torch.equal(fresh(feats, {"depth": feats, "normal": feats}).total, afd(feats, {"depth": feats, "normal": feats}).total)


RESNET = ["stem", "layer1", "layer2", "layer3", "layer4"]
SEGNET = ["enc1", "enc2", "enc3", "enc4", "enc5", "decoder"]
TINY_RESNET = dict(depth=18, width=0.125, layers=[2, 2, 2, 2], aspp_channels=8)


@pytest.mark.parametrize("target, settings, expected, kdmtl", [
    ("resnet.ResNetASPP", TINY_RESNET, RESNET, ["layer4"]),           # the five stages of the release
    ("mtan.MTANResNet", TINY_RESNET, RESNET, ["layer4"]),             # MTAN: its shared ResNet's
    ("segnet.SegNet", dict(width=0.125), SEGNET, ["bottleneck", "decoder"]),  # encoder stages and decoder
    ("mtan.MTANSegNet", dict(width=0.125), SEGNET, ["bottleneck", "decoder"]),
    ("cross_stitch.CrossStitchResNet", TINY_RESNET, [f"{{task}}/{s}" for s in RESNET], ["{task}/layer4"]),  # per column
    ("cross_stitch.CrossStitchSegNet", dict(width=0.125), [f"{{task}}/{s}" for s in SEGNET],
     ["{task}/bottleneck", "{task}/decoder"]),
    ("vit.ViTSegmenter", dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2), ["block1", "block2"],
     ["encoder"]),                                                    # KD-MTL: the shared representation
])
def test_default_stages_are_what_the_backbone_declares(target, settings, expected, kdmtl):
    """kd=okd's (``distillation_stages``) and kd=kdmtl's (``kdmtl_stages``, docs/okd.md#kd-mtl) defaults."""
    from hydra.utils import get_class

    from okd.kd.offline import kdmtl_default_stages
    from okd.tasks import build_tasks
    model = get_class(f"okd.models.{target}")(build_tasks(["depth", "normal"], 7), **settings)
    assert list(model.distillation_stages) == expected
    assert default_stages(model) == expected
    assert kdmtl_default_stages(model) == kdmtl


def test_default_stages_of_a_model_that_declares_none_are_its_features():
    model = type("M", (nn.Module,), {"feature_names": ("x", "y")})()
    assert default_stages(model) == ["x", "y"]
    model.distillation_stages = ("y",)
    assert default_stages(model) == ["y"]
    with pytest.raises(ValueError, match="kd.stages"):
        default_stages(nn.Module())
