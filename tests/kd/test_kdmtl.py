"""kd=kdmtl (okd/kd/offline.py): frozen teachers from single-task runs trained inside the test."""
from __future__ import annotations

import json

import pytest
import torch

from okd.app import build, run
from okd.kd.offline import OfflineDistillation
from okd.config import compose as compose_cfg

BASE = ["dataset.train_size=8", "dataset.val_size=4", "dataset.test_size=4", "dataset.height=32",
        "dataset.width=32", "trainer.batch_size=4", "trainer.progress=false", "logger=none", "trainer.epochs=1"]
TASKS = ("segmentation", "depth")


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """One single-task run per task (the KD-MTL protocol: STL networks trained beforehand)."""
    root = tmp_path_factory.mktemp("stl")
    for task in TASKS:
        run(compose_cfg([*BASE, f"dataset.tasks=[{task}]"]), root / task)
    return root


def _kdmtl(teachers, *extra):
    paths = [f"kd.teachers.{t}={teachers / t}" for t in TASKS]
    return compose_cfg([*BASE, "dataset.tasks=[segmentation,depth]", "kd=kdmtl", *paths, *extra])


def test_kdmtl_trains_with_frozen_teachers_one_pass_each(tmp_path, teachers):
    trainer, ctx = build(_kdmtl(teachers), tmp_path)
    trainer.setup(ctx)
    kd = ctx.distiller
    assert kd.afd.stages == ["bottleneck", "decoder"] and kd.afd.gates is None  # docs/okd.md#kd-mtl for SegNet
    saved = torch.load(teachers / "depth" / "checkpoints" / "best.pt", weights_only=False)["model"]
    assert all(torch.equal(v, kd.frozen_teachers["depth"].state_dict()[k]) for k, v in saved.items())
    calls = {"student": 0, **{t: 0 for t in TASKS}}
    ctx.model.register_forward_pre_hook(lambda *_: calls.__setitem__("student", calls["student"] + 1))
    for name, teacher in kd.frozen_teachers.items():
        teacher.register_forward_pre_hook(lambda *_, n=name: calls.__setitem__(n, calls[n] + 1))
    images, targets = trainer.to_device(next(iter(trainer.train_loader)))
    ctx.model.train()
    trainer.training_step(images, targets)
    assert calls == {"student": 1, "segmentation": 1, "depth": 1}
    assert all(p.grad is None and not p.requires_grad for m in kd.frozen_teachers.values() for p in m.parameters())
    assert all(p.grad is not None for p in kd.afd.adaptor_parameters())
    assert all(torch.equal(v, kd.frozen_teachers["depth"].state_dict()[k]) for k, v in saved.items())  # BN too

    summary = trainer.fit(ctx)
    train = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert {"afd/segmentation/bottleneck", "afd/depth/decoder", "afd/total"} <= train.keys()
    assert summary["choices"] is not None and "teachers" in torch.load(
        tmp_path / "checkpoints" / "last.pt", weights_only=False)["distiller"]


def test_teacher_checkpoints_are_checked_with_clear_messages(tmp_path, teachers):
    swapped = compose_cfg([*BASE, "dataset.tasks=[segmentation,depth]", "kd=kdmtl",
                           f"kd.teachers.segmentation={teachers / 'depth'}", f"kd.teachers.depth={teachers / 'depth'}"])
    trainer, ctx = build(swapped, tmp_path / "a")
    with pytest.raises(ValueError, match=r"kd.teachers.segmentation: .* trained on tasks \['depth'\]"):
        trainer.setup(ctx)
    trainer, ctx = build(_kdmtl(teachers, "backbone.width=0.25"), tmp_path / "b")
    with pytest.raises(ValueError, match=r"(?s)kd.teachers.segmentation: .*does not match the model.*shape differs"):
        trainer.setup(ctx)
    missing = compose_cfg([*BASE, "dataset.tasks=[segmentation,depth]", "kd=kdmtl",
                           f"kd.teachers.depth={teachers / 'depth'}"])
    trainer, ctx = build(missing, tmp_path / "c")
    with pytest.raises(ValueError, match=r"one single-task teacher checkpoint per task.*missing \['segmentation'\]"):
        trainer.setup(ctx)
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        trainer, ctx = build(_kdmtl(tmp_path / "nowhere"), tmp_path / "d")
        trainer.setup(ctx)


def test_constructs_without_teachers_for_config_checks():
    assert OfflineDistillation().teacher_paths == {}
