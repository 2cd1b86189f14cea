"""Trainer side of trainer.precision=16 (one GradScaler for student, weighting and distiller) and
trainer.compile. The weighting side (every method scales what it backpropagates and unscales what
it reasons about) is tested in tests/weighting/test_loss_scaling.py."""
from __future__ import annotations

import math

import pytest
import torch

from okd.app import build, run
from okd.engine.checkpoint import load_checkpoint
from okd.config import compose as compose_cfg

TINY = ["dataset.train_size=8", "dataset.val_size=4", "dataset.test_size=4", "dataset.height=32",
        "dataset.width=32", "trainer.batch_size=4", "trainer.progress=false", "logger=none",
        "trainer.log_images=0", "backbone.width=0.0625", "trainer.device=cpu"]


@pytest.mark.parametrize("options", [
    ["weighting=ew"], ["weighting=uw"], ["weighting=gradnorm"], ["weighting=pcgrad"], ["weighting=mgda_ub"],
    ["kd=okd", "kd.warmup_epochs=0", "weighting=otw"],
], ids=lambda o: "+".join(x.split("=")[1] for x in o if x.startswith(("weighting", "kd="))))
def test_fp16_trains_and_checkpoints_the_scaler(tmp_path, options):
    summary = run(compose_cfg([*TINY, "trainer.epochs=1", "trainer.precision=16", *options]), tmp_path)
    assert math.isfinite(summary["final"]["test"]["loss"])
    assert all(math.isfinite(v) for k, v in summary["final"]["train"].items() if k.startswith("loss/"))
    state = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert state["grad_scaler"]["scale"] > 0  # resumed runs continue with the same loss scale


def _setup(tmp_path, *options):
    trainer, ctx = build(compose_cfg([*TINY, "trainer.precision=16", *options]), tmp_path)
    trainer.setup(ctx)
    batch = next(iter(trainer.train_loader))
    return trainer, ctx, trainer.to_device(batch)


@pytest.mark.parametrize("method", ["ew", "uw", "pcgrad", "gradnorm"])
def test_fp16_overflow_skips_the_step_and_lowers_the_scale(tmp_path, method):
    trainer, ctx, (images, targets) = _setup(tmp_path, f"weighting={method}")
    trainer.amp.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 120)  # fp16 gradients overflow
    params = lambda: dict([*ctx.model.named_parameters(), *ctx.weighting.named_parameters()])  # noqa: E731
    before = {k: v.detach().clone() for k, v in params().items()}
    trainer.training_step(images, targets)
    changed = [k for k, v in params().items() if not torch.equal(v, before[k])]
    assert changed == []  # parameters and learnable weights (UW's s, GradNorm's w) untouched by the skipped step
    assert trainer.amp.scaler.get_scale() == 2.0 ** 119
    # a sane scale then trains: the next step changes the parameters
    trainer.amp.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8)
    trainer.training_step(images, targets)
    assert any(not torch.equal(v, before[k]) for k, v in params().items())


def test_weighting_receives_the_loss_scale_as_a_device_tensor(tmp_path, monkeypatch):
    trainer, ctx, (images, targets) = _setup(tmp_path, "weighting=ew")
    seen = {}
    original = type(ctx.weighting).backward

    def spy(self, losses, extra_loss=None, representation=None, loss_scale=None):
        seen["scale"] = loss_scale
        return original(self, losses, extra_loss, representation, loss_scale=loss_scale)

    monkeypatch.setattr(type(ctx.weighting), "backward", spy)
    trainer.training_step(images, targets)
    assert isinstance(seen["scale"], torch.Tensor) and seen["scale"].dim() == 0
    assert float(seen["scale"]) == trainer.amp.scaler.get_scale() or float(seen["scale"]) == 2 * trainer.amp.scaler.get_scale()


def test_compile_gives_the_eager_numbers(tmp_path):
    common = [*TINY, "trainer.epochs=1", "weighting=pcgrad"]
    eager = run(compose_cfg(common), tmp_path / "eager")
    compiled = run(compose_cfg([*common, "trainer.compile={backend: aot_eager}"]), tmp_path / "compiled")
    for split in ("val", "test"):
        for key, value in eager["final"][split].items():
            if isinstance(value, float) and not key.endswith("time_s"):
                assert compiled["final"][split][key] == pytest.approx(value, rel=1e-4, abs=1e-5), (split, key)


def test_compile_refuses_representation_methods_and_bad_values(tmp_path):
    with pytest.raises(ValueError, match="trainer.compile=true with weighting"):
        run(compose_cfg([*TINY, "weighting=mgda_ub", "trainer.compile=true"]), tmp_path / "a")
    with pytest.raises(ValueError, match="trainer.compile must be true, false or a dict"):
        build(compose_cfg([*TINY, "trainer.compile=fast"]), tmp_path / "b")
