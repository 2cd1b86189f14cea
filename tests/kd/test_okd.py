"""kd=okd (okd/kd/online.py) through the real trainer: one pass per network, teachers train on their own
loss only, gates learn, every weighting composes, teacher metrics are logged and resume is exact."""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch

from okd.app import build, run
from okd.kd.online import OnlineDistillation, export_teachers
from okd.config import compose as compose_cfg

TINY = ["dataset.train_size=4", "dataset.val_size=2", "dataset.test_size=2", "dataset.height=32",
        "dataset.width=32", "trainer.batch_size=2", "trainer.progress=false", "logger=none", "kd=okd",
        "kd.warmup_epochs=1"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _ready(tmp_path, *overrides):
    """A trainer set up for kd=okd and one batch on its device."""
    trainer, ctx = build(compose_cfg([*TINY, *overrides]), tmp_path)
    trainer.setup(ctx)
    images, targets = trainer.to_device(next(iter(trainer.train_loader)))
    ctx.model.train()
    ctx.distiller.train()
    return trainer, ctx, images, targets


def test_kd_okd_alone_selects_otw_and_another_weighting_overrides_it():
    assert compose_cfg(["kd=okd"]).weighting._target_ == "okd.weighting.otw.OTW"
    assert compose_cfg(["kd=okd", "weighting=ew"]).weighting._target_ == "okd.weighting.ew.EW"
    assert compose_cfg(["weighting=dwa", "kd=okd"]).weighting._target_ == "okd.weighting.dwa.DWA"
    assert compose_cfg([]).weighting._target_ == "okd.weighting.ew.EW"  # kd=none keeps the default


@pytest.mark.parametrize("method", ["ew", "pcgrad"])
def test_one_forward_pass_per_network_per_step(tmp_path, method):
    trainer, ctx, images, targets = _ready(tmp_path, f"weighting={method}")
    calls = {"student": 0, **{name: 0 for name in ctx.distiller.teachers}}
    ctx.model.register_forward_pre_hook(lambda *_: calls.__setitem__("student", calls["student"] + 1))
    for name, teacher in ctx.distiller.teachers.items():
        teacher.register_forward_pre_hook(lambda *_, n=name: calls.__setitem__(n, calls[n] + 1))
    trainer.training_step(images, targets)
    assert calls == {"student": 1, "segmentation": 1, "depth": 1, "normal": 1}


def test_teachers_learn_from_their_own_loss_only(tmp_path):
    """A teacher after one OKD step equals a copy trained by a plain single-task step on the same batch,
    and backpropagating the AFD loss leaves every teacher gradient untouched."""
    trainer, ctx, images, targets = _ready(tmp_path)
    kd = ctx.distiller
    bare, bare_losses = {}, []
    for t in ctx.tasks:
        model = copy.deepcopy(kd.teachers[t.name])
        configured = kd.teacher_optimizers[t.name].param_groups[0]  # the student's lr by default
        opt = torch.optim.Adam(model.parameters(), lr=configured["lr"], weight_decay=configured["weight_decay"])
        opt.zero_grad()
        loss = t.loss(model(images).predictions[t.name], targets[t.name])
        loss.backward()
        opt.step()
        bare[t.name], bare_losses = model, bare_losses + [loss.item()]

    out = ctx.model(images)
    extra = kd.training_step(images, targets, out)
    before = {n: [p.grad.clone() for p in m.parameters()] for n, m in kd.teachers.items()}
    extra.backward()
    for n, m in kd.teachers.items():
        assert all(torch.equal(g, p.grad) for g, p in zip(before[n], m.parameters())), n
    kd.after_step()
    assert kd.reference_losses().tolist() == pytest.approx(bare_losses, rel=1e-6)  # what OTW divides by
    for name, model in bare.items():
        for (key, p), q in zip(kd.teachers[name].named_parameters(), model.parameters()):
            assert torch.allclose(p, q, atol=1e-7, rtol=1e-6), (name, key)


def test_gates_train_with_the_student_optimizer_and_change(tmp_path):
    trainer, ctx, images, targets = _ready(tmp_path)
    gates = ctx.distiller.afd.gates
    assert any(p is gates for g in trainer.optimizer.param_groups for p in g["params"])
    start = gates.detach().clone()
    adaptor = ctx.distiller.afd  # adaptors appear at the first step
    for _ in range(3):
        trainer.training_step(images, targets)
    assert not torch.equal(start, gates.detach())
    assert all(p.grad is not None for p in adaptor.adaptor_parameters())
    assert ctx.distiller.adaptor_optimizer.param_groups[0]["weight_decay"] == 5e-4


@pytest.mark.parametrize("method", ["ew", "dwa", "pcgrad", "mgda_ub", "famo", "otw"])
def test_every_weighting_family_runs_a_step_with_okd(tmp_path, method):
    trainer, ctx, images, targets = _ready(tmp_path, f"weighting={method}")
    losses, weights = trainer.training_step(images, targets)
    assert torch.isfinite(losses).all() and torch.isfinite(weights).all()
    assert ctx.distiller.afd.gates.grad is not None and ctx.distiller.afd.gates.grad.abs().sum() > 0


@pytest.mark.parametrize("overrides, gates, adaptors, afd", [
    (["kd.gates=false"], False, True, True),
    (["kd.adaptors=false"], True, False, True),
    (["kd.adaptive=false"], False, False, True),
    (["kd.afd=false"], None, None, False),
])
def test_ablation_switches(tmp_path, overrides, gates, adaptors, afd):
    trainer, ctx, images, targets = _ready(tmp_path, *overrides)
    trainer.training_step(images, targets)
    kd = ctx.distiller
    if not afd:
        assert kd.afd is None and kd.student_param_groups() == []
        assert kd.reference_losses() is not None  # teachers still train: OTW keeps working
        return
    assert (kd.afd.gates is not None) == gates and kd.afd.has_adaptors == adaptors
    assert (kd.adaptor_optimizer is not None) == adaptors
    assert bool(kd.student_param_groups()) == gates


def test_teachers_of_another_width_are_distilled_through_adaptors(tmp_path):
    wider = "kd.teacher_backbone={_target_:okd.models.segnet.SegNet,_partial_:true,width:0.25}"
    trainer, ctx, images, targets = _ready(tmp_path, wider)
    trainer.training_step(images, targets)
    kd = ctx.distiller
    assert kd.teachers["depth"].filters[0] == 2 * ctx.model.filters[0]
    assert kd.afd.adaptors["depth"]["enc1"].weight.shape[:2] == (16, 8)  # C_s = 8 -> C_t = 16


BACKBONES = {
    "resnet50": ["backbone.depth=18", "backbone.width=0.125", "backbone.layers=[1,1,1,1]", "backbone.aspp_channels=8"],
    "vit_tiny": ["backbone.img_size=32", "backbone.patch_size=8", "backbone.embed_dim=32", "backbone.depth=2",
                 "backbone.num_heads=2"],
    "cross_stitch_segnet": ["backbone.width=0.125"],
}


@pytest.mark.parametrize("backbone, stages, variant", [
    ("resnet50", ["stem", "layer1", "layer2", "layer3", "layer4"], "per_task"),
    ("vit_tiny", ["block1", "block2"], "summed"),
    ("cross_stitch_segnet", [f"{{task}}/{s}" for s in ("enc1", "enc2", "enc3", "enc4", "enc5", "decoder")], "per_task"),
])
def test_okd_on_other_backbones(tmp_path, backbone, stages, variant):
    if not (Path(__file__).resolve().parents[2] / "conf" / "backbone" / f"{backbone}.yaml").is_file():
        pytest.skip(f"backbone={backbone} is not available")
    trainer, ctx, images, targets = _ready(tmp_path, f"backbone={backbone}", *BACKBONES[backbone])
    losses, _ = trainer.training_step(images, targets)
    afd = ctx.distiller.afd
    assert afd.stages == stages and afd.variant == variant and torch.isfinite(losses).all()
    assert afd.has_adaptors == (variant == "per_task")
    logs = ctx.distiller.on_epoch_end(0)
    assert all(math.isfinite(v) for v in logs.values())


def test_contradicting_switches_fail_clearly():
    with pytest.raises(ValueError, match="plain feature distillation"):
        OnlineDistillation(adaptive=False, gates=True)


def test_unknown_stage_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="kd.stages.*enc9.*not among the features"):
        _ready(tmp_path, "kd.stages=[enc1,enc9]")


def test_frozen_teachers_do_not_change(tmp_path):
    trainer, ctx, images, targets = _ready(tmp_path, "kd.teacher_update_until=0")
    kd = ctx.distiller
    before = copy.deepcopy(kd.teachers.state_dict())
    trainer.training_step(images, targets)
    assert not kd.teachers.training
    assert all(torch.equal(v, kd.teachers.state_dict()[k]) for k, v in before.items())  # BN stats too
    assert kd.reference_losses() is not None


def test_okd_run_end_to_end_logs_everything_and_resumes_exactly(tmp_path):
    """Two epochs on synthetic scenes (unclamped OTW so that the weights move), then the same run cut
    after one epoch and resumed: bitwise the same student, teachers, gates, AFD terms and weights."""
    cfg = [*TINY, "weighting.clamp=null"]
    summary = run(compose_cfg([*cfg, "trainer.epochs=2"]), tmp_path / "full")
    run(compose_cfg([*cfg, "trainer.epochs=1"]), tmp_path / "cut")
    resumed = run(compose_cfg([*cfg, "trainer.epochs=2", "trainer.resume=true"]), tmp_path / "cut")
    assert resumed["final"] == summary["final"]
    strip = lambda rs: [{k: v for k, v in r.items() if "time_s" not in k} for r in rs]
    assert strip(rows(tmp_path / "cut")) == strip(rows(tmp_path / "full"))

    lines = rows(tmp_path / "full")
    train0, train1 = lines[0], lines[3]
    tasks = ("segmentation", "depth", "normal")
    for row in (train0, train1):
        assert {f"teacher/loss/{t}" for t in tasks} <= row.keys()
        assert {f"gate/{t}/{s}" for t in tasks for s in ("enc1", "enc5", "decoder")} <= row.keys()
        assert {f"afd/{t}/enc3" for t in tasks} | {"afd/total"} <= row.keys()
    assert "teacher/warmup_loss/depth" in train0
    for row in lines:
        if row["split"] != "train":
            assert {"teacher/segmentation/miou", "teacher/depth/abs_err", "teacher/normal/mean"} <= row.keys()
    # OTW wiring: epoch 0 weights 1; epoch 1 = K softmax(min(L/T, 1) / 0.1) from epoch 0's row (unclamped)
    assert [train0[f"weight/{t}"] for t in tasks] == [1.0, 1.0, 1.0]
    r = [min(train0[f"loss/{t}"] / train0[f"teacher/loss/{t}"], 1.0) / 0.1 for t in tasks]
    assert [train0[f"otw/ratio/{t}"] for t in tasks] == pytest.approx([v * 0.1 for v in r], rel=1e-6)
    assert [train1[f"otw/ratio/{t}"] for t in tasks] == pytest.approx(
        [train1[f"loss/{t}"] / train1[f"teacher/loss/{t}"] for t in tasks], rel=1e-5)  # from epoch 1: unclipped
    m = max(r)
    expected = [3 * math.exp(v - m) / sum(math.exp(u - m) for u in r) for v in r]
    assert [train1[f"weight/{t}"] for t in tasks] == pytest.approx(expected, rel=1e-5)
    assert summary["delta"]["base"]["kind"] == "teachers"
    state = torch.load(tmp_path / "full" / "checkpoints" / "last.pt", weights_only=False)["distiller"]
    assert any(k.startswith("teachers.normal.") for k in state["module"])
    assert any(k.startswith("afd.adaptors.depth.") for k in state["module"]) and "afd.gates" in state["module"]
    assert set(state["teacher_optimizers"]) == set(tasks) and state["adaptor_optimizer"] is not None
    # teachers export as single-task checkpoints that load into a fresh single-task network
    files = export_teachers(tmp_path / "full", tmp_path / "teachers")
    exported = torch.load(files[1], weights_only=False)
    assert exported["tasks"] == ["depth"]
    stl = [o for o in TINY if not o.startswith("kd")] + ["dataset.tasks=[depth]"]
    trainer, ctx = build(compose_cfg(stl), tmp_path / "stl")
    ctx.model.load_state_dict(exported["model"])
