"""What only a GPU can show: every code path of a training step on CUDA (fp32, bf16, fp16 with loss
scaling), OKD and KD-MTL, checkpoints moving between GPU and CPU, ``mode=eval`` against the numbers
recorded during training, and DDP over a real NCCL process group (one process: one GPU is enough).

Every test here is marked ``cuda`` and skipped without a CUDA device. ``python -m okd.gpu_check``
runs them on a GPU machine (``pytest -m cuda tests/test_cuda.py``). ``OKD_CUDA_TESTS_ON_CPU=1`` runs
the same bodies on the CPU (gloo instead of NCCL): it checks the tests themselves on a machine
without a GPU, and proves nothing about CUDA.
"""
from __future__ import annotations

import math
import os
import shutil
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from okd import distributed
from okd.app import build, run
from okd.engine.checkpoint import load_checkpoint
from okd.weighting.base import LossWeighting
from okd.config import compose as compose_cfg
from tests.helpers import options

pytestmark = pytest.mark.cuda

TINY = ["dataset.train_size=8", "dataset.val_size=4", "dataset.test_size=4", "dataset.height=32",
        "dataset.width=32", "trainer.batch_size=4", "trainer.progress=false", "logger=none",
        "trainer.log_images=0", "backbone.width=0.0625"]
PRECISIONS = ["32", "bf16", "16"]
#: weightings whose weights come from the teachers' losses: they need kd=okd
NEEDS_TEACHERS = {"otw", "otw_v1"}
OKD = ["kd=okd", "kd.warmup_epochs=0"]


@pytest.fixture(scope="module")
def device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if os.environ.get("OKD_CUDA_TESTS_ON_CPU") == "1":
        return torch.device("cpu")
    pytest.skip("needs a CUDA device (torch.cuda.is_available() is False); python -m okd.gpu_check runs these "
                "on a GPU machine, OKD_CUDA_TESTS_ON_CPU=1 runs their bodies on the CPU")


@pytest.fixture
def no_tf32():
    """CPU/GPU comparisons in true float32: cuDNN convolutions default to TF32 on Ampere and later."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _cfg(device: torch.device, *extra: str):
    return compose_cfg([*TINY, f"trainer.device={device.type}", *extra])


def _ready(tmp_path: Path, device: torch.device, *extra: str):
    """A set-up trainer, its context and one training batch on the device."""
    trainer, ctx = build(_cfg(device, *extra), tmp_path)
    trainer.setup(ctx)
    ctx.model.train()
    ctx.distiller.train()
    images, targets = trainer.to_device(next(iter(trainer.train_loader)))
    return trainer, ctx, images, targets


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def _changed(module: torch.nn.Module, before: dict[str, torch.Tensor]) -> bool:
    return any(not torch.equal(v, before[k]) for k, v in module.named_parameters())


def _step_until_it_updates(trainer, ctx, images, targets, tries: int = 5) -> None:
    """Training steps until the student changes: with fp16 GradScaler may skip the first steps
    (overflow at its initial scale) and must then have lowered the scale."""
    before, scale = _snapshot(ctx.model), trainer.amp.scaler.get_scale() if trainer.amp.scaler else None
    for _ in range(tries):
        losses, weights = trainer.training_step(images, targets)
        assert losses.device.type == trainer.device.type
        assert torch.isfinite(losses).all() and torch.isfinite(weights).all(), (losses, weights)
        if _changed(ctx.model, before):
            break
        assert trainer.amp.scaler is not None, "an fp32/bf16 step left the student unchanged"
        assert trainer.amp.scaler.get_scale() < scale, "a skipped fp16 step did not lower the scale"
    assert _changed(ctx.model, before), f"no update in {tries} steps"
    assert all(torch.isfinite(p).all() for p in ctx.model.parameters())


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("method", options("weighting"))
def test_every_weighting_steps_in_every_precision(tmp_path, device, method, precision):
    kd = OKD if method in NEEDS_TEACHERS else []
    trainer, ctx, images, targets = _ready(tmp_path, device, f"weighting={method}", f"trainer.precision={precision}",
                                           *kd)
    assert next(ctx.model.parameters()).device.type == device.type
    _step_until_it_updates(trainer, ctx, images, targets)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_okd_step_trains_student_teachers_and_adaptors(tmp_path, device, precision):
    trainer, ctx, images, targets = _ready(tmp_path, device, *OKD, f"trainer.precision={precision}",
                                           "trainer.channels_last=true")
    kd = ctx.distiller
    teachers = _snapshot(kd.teachers)
    _step_until_it_updates(trainer, ctx, images, targets)
    assert _changed(kd.teachers, teachers)
    adaptors = list(kd.afd.adaptor_parameters())
    assert adaptors and all(p.device.type == device.type for p in adaptors)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in adaptors)


@pytest.fixture(scope="module")
def stl_teachers(tmp_path_factory, device):
    """Single-task runs on the device, the frozen teachers of KD-MTL (saved from GPU memory)."""
    root = tmp_path_factory.mktemp("stl")
    for task in ("segmentation", "depth"):
        run(_cfg(device, f"dataset.tasks=[{task}]", "trainer.epochs=1"), root / task)
    return root


@pytest.mark.parametrize("precision", PRECISIONS)
def test_kdmtl_step_with_frozen_teachers(tmp_path, device, stl_teachers, precision):
    paths = [f"kd.teachers.{t}={stl_teachers / t}" for t in ("segmentation", "depth")]
    trainer, ctx, images, targets = _ready(tmp_path, device, "dataset.tasks=[segmentation,depth]", "kd=kdmtl",
                                           *paths, f"trainer.precision={precision}")
    kd = ctx.distiller
    frozen = {n: _snapshot(m) for n, m in kd.frozen_teachers.items()}
    assert all(p.device.type == device.type for m in kd.frozen_teachers.values() for p in m.parameters())
    _step_until_it_updates(trainer, ctx, images, targets)
    assert not any(_changed(m, frozen[n]) for n, m in kd.frozen_teachers.items())
    assert all(p.grad is not None for p in kd.afd.adaptor_parameters())


def _devices_of(value) -> set[str]:
    """Device types of every tensor in a (nested) checkpoint."""
    if isinstance(value, torch.Tensor):
        return {value.device.type}
    if isinstance(value, dict):
        return set().union(*map(_devices_of, value.values())) if value else set()
    if isinstance(value, (list, tuple)):
        return set().union(*map(_devices_of, value)) if value else set()
    return set()


def _metrics(row: dict) -> dict[str, float]:
    return {k: v for k, v in row.items() if isinstance(v, float) and not k.endswith("time_s")}


def _assert_close(now: dict, then: dict, rel: float, abs_: float) -> None:
    """``now``'s numbers equal ``then``'s (which may hold more: a training row has the teachers' too)."""
    assert now and set(now) <= set(then), sorted(set(now) - set(then))
    for key, value in now.items():
        if math.isnan(then[key]):
            assert math.isnan(value), key
        else:
            assert value == pytest.approx(then[key], rel=rel, abs=abs_), key


def test_checkpoint_from_gpu_evaluates_on_cpu(tmp_path, device, no_tf32):
    summary = run(_cfg(device, "trainer.epochs=1"), tmp_path / "gpu")
    last = tmp_path / "gpu" / "checkpoints" / "last.pt"
    assert _devices_of(load_checkpoint(last, map_location="cpu")) == {"cpu"}
    evaluated = run(_cfg(torch.device("cpu"), "mode=eval", f"ckpt={last}"), tmp_path / "eval-cpu",
                    overrides=[f"ckpt={last}"])
    for split, row in evaluated["metrics"].items():
        # float32 on both sides, different kernels: a wrongly loaded tensor (weights, batch-norm
        # statistics) moves these by far more; a handful of near-tie pixels may change class
        _assert_close(_metrics(row), _metrics(summary["final"][split]), rel=2e-3, abs_=1e-3)


def test_checkpoint_resumes_from_gpu_on_cpu_and_back(tmp_path, device):
    """Optimizer, GradScaler, OKD teachers and adaptors, and RNG states cross devices both ways."""
    fp16_okd = [*OKD, "trainer.precision=16"]
    gpu, cpu, back = tmp_path / "gpu", tmp_path / "cpu", tmp_path / "back"
    run(_cfg(device, "trainer.epochs=1", *fp16_okd), gpu)
    shutil.copytree(gpu, cpu)
    on_cpu = run(_cfg(torch.device("cpu"), "trainer.epochs=2", "trainer.resume=true", *fp16_okd), cpu)
    shutil.copytree(cpu, back)
    on_gpu = run(_cfg(device, "trainer.epochs=3", "trainer.resume=true", *fp16_okd), back)
    for summary in (on_cpu, on_gpu):
        assert all(math.isfinite(v) for v in _metrics(summary["final"]["train"]).values())
    state = load_checkpoint(back / "checkpoints" / "last.pt")
    assert state["epoch"] == 2 and state["grad_scaler"]["scale"] > 0


def test_eval_mode_equals_training_time_metrics(tmp_path, device):
    summary = run(_cfg(device, "trainer.epochs=1", "trainer.precision=bf16", "trainer.channels_last=true"),
                  tmp_path / "train")
    last = tmp_path / "train" / "checkpoints" / "last.pt"
    evaluated = run(_cfg(device, "mode=eval", f"ckpt={last}", "trainer.precision=bf16", "trainer.channels_last=true"),
                    tmp_path / "eval", overrides=[f"ckpt={last}"])
    assert set(evaluated["metrics"]) == {"val", "test"}
    for split, row in evaluated["metrics"].items():
        # same process, same kernels: only the order of atomic additions may differ
        _assert_close(_metrics(row), _metrics(summary["final"][split]), rel=1e-5, abs_=1e-6)


# -- DDP over NCCL, one process --------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def restore_determinism():
    """trainer.deterministic=true switches torch's deterministic algorithms on for the process."""
    saved = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    yield
    torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])


@pytest.fixture
def process_group(device, monkeypatch):
    """A real process group of one (NCCL for CUDA tensors, gloo for CPU ones, as torchrun jobs get).

    okd.distributed treats a group of one as "not distributed" (torchrun with one process trains
    without DDP), so the collectives are switched on by hand: with one rank they reduce to the
    identity, and the results must equal those of a plain run.
    """
    backend = "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    monkeypatch.setattr(distributed, "is_distributed", lambda: True)
    try:
        yield
    finally:
        dist.destroy_process_group()


def _ddp_trainer(trainer) -> None:
    """What Trainer.setup does under torchrun with N > 1 processes (it skips DDP for one): DDP around
    the student, no_sync for gradient-combining methods, hand-averaged gradients outside the student."""
    strategy, ctx = trainer.strategy, trainer.ctx
    strategy.world_size = 2  # the multi-process code paths; the collectives see the real group of 1
    trainer.train_model = strategy.wrap(ctx.model, ctx.weighting, ctx.distiller, trainer.device)
    strategy.track_parameters(trainer.optimizer, ctx.model)


@pytest.mark.parametrize("config", [["weighting=ew"], ["weighting=mgda"], OKD],
                         ids=["ew", "mgda", "okd"])
def test_ddp_with_one_nccl_process_trains_like_one_process(tmp_path, device, no_tf32, restore_determinism,
                                                           process_group, config):
    # SGD: updates proportional to the gradients, so kernel summation-order noise stays its own size
    # (Adam's normalisation magnifies it for tiny gradients)
    sgd = ["trainer.optimizer._target_=torch.optim.SGD"]
    if config == OKD:
        sgd += ["kd.teacher_optimizer._target_=torch.optim.SGD", "kd.adaptor_optimizer._target_=torch.optim.SGD"]
    extra = [*config, *sgd, "trainer.deterministic=true"]
    # one after the other: each set-up seeds the RNGs, and OKD draws its AFD gates at the first step
    plain, plain_ctx, images, targets = _ready(tmp_path / "plain", device, *extra)
    for _ in range(2):
        plain.training_step(images, targets)
    ddp, ddp_ctx, _, _ = _ready(tmp_path / "ddp", device, *extra)
    _ddp_trainer(ddp)
    assert isinstance(ddp.train_model, torch.nn.parallel.DistributedDataParallel)
    assert ddp.strategy.manual_sync == (not isinstance(ddp_ctx.weighting, LossWeighting))
    for _ in range(2):
        ddp.training_step(images, targets)
    expected = dict(plain_ctx.model.named_parameters())
    for name, p in ddp_ctx.model.named_parameters():
        torch.testing.assert_close(p, expected[name], rtol=1e-5, atol=1e-6, msg=name)
    loader = [{"image": images, **targets}]
    _assert_close(ddp.evaluate(loader), plain.evaluate(loader), rel=1e-5, abs_=1e-6)
