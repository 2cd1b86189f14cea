"""Reliability: mid-epoch and signal-driven resume, NaN guard, failed writes never lose a checkpoint."""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from okd.app import build, run
from okd.engine import checkpoint as ckpt_module
from okd.engine.checkpoint import load_checkpoint
from okd.engine.trainer import Trainer
from okd.config import compose as compose_cfg

ROOT = Path(__file__).resolve().parents[1]
TINY = ["dataset.train_size=24", "dataset.val_size=4", "dataset.test_size=4", "dataset.height=32",
        "dataset.width=32", "trainer.batch_size=4", "trainer.progress=false", "logger=none",
        "trainer.log_every_n_steps=2"]


class Killed(Exception):
    pass


def test_mid_epoch_resume_is_exact(tmp_path, monkeypatch):
    full = run(compose_cfg([*TINY, "trainer.epochs=2", "weighting=dwa"]), tmp_path / "full")
    cut = [*TINY, "trainer.epochs=2", "weighting=dwa", "trainer.checkpoint_every_n_steps=2"]
    real_step, calls = Trainer.training_step, {"n": 0}

    def dying_step(self, images, targets):
        calls["n"] += 1
        if calls["n"] == 10:  # epoch 1, step 3: after the mid-epoch checkpoint of step 2
            raise Killed()
        return real_step(self, images, targets)

    monkeypatch.setattr(Trainer, "training_step", dying_step)
    with pytest.raises(Killed):
        run(compose_cfg(cut), tmp_path / "cut")
    monkeypatch.setattr(Trainer, "training_step", real_step)
    state = load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")
    assert state["in_epoch"]["epoch"] == 1 and state["in_epoch"]["step"] == 2
    resumed = run(compose_cfg([*cut, "trainer.resume=auto"]), tmp_path / "cut")
    assert resumed["final"] == full["final"]


def test_sigterm_saves_and_exits_for_requeue_then_resume_matches(tmp_path):
    args = [*TINY, "dataset.train_size=160", "trainer.epochs=3"]
    env = {**os.environ, "WANDB_MODE": "offline"}
    env.pop("SLURM_JOB_ID", None)
    subprocess.run([sys.executable, str(ROOT / "run.py"), *args, f"hydra.run.dir={tmp_path / 'full'}"],
                   check=True, env=env, capture_output=True, timeout=300)
    proc = subprocess.Popen([sys.executable, str(ROOT / "run.py"), *args, f"hydra.run.dir={tmp_path / 'cut'}"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not list((tmp_path / "cut").glob("metrics.jsonl")) and time.time() < deadline:
        time.sleep(0.05)  # wait until epoch 0 is written: the signal lands in epoch 1 (of 3)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "SIGTERM received: saved" in out
    state = load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")
    assert state.get("in_epoch") is not None or state["epoch"] >= 0
    subprocess.run([sys.executable, str(ROOT / "run.py"), *args, f"hydra.run.dir={tmp_path / 'cut'}",
                    "trainer.resume=true"], check=True, env=env, capture_output=True, timeout=300)
    full = json.loads((tmp_path / "full" / "summary.json").read_text())
    cut = json.loads((tmp_path / "cut" / "summary.json").read_text())
    assert cut["final"] == full["final"]


def test_non_finite_loss_stops_with_task_epoch_and_step(tmp_path, monkeypatch):
    from okd.tasks import Depth

    real_loss, calls = Depth.loss, {"n": 0}

    def bad_loss(self, pred, target):
        calls["n"] += pred.requires_grad  # count training steps only (evaluation runs without grad)
        value = real_loss(self, pred, target)
        return value * float("nan") if pred.requires_grad and calls["n"] == 8 else value  # epoch 1, step 1

    trainer, ctx = build(compose_cfg([*TINY, "trainer.epochs=3"]), tmp_path)
    monkeypatch.setattr(Depth, "loss", bad_loss)
    calls["n"] = 0
    with pytest.raises(FloatingPointError, match=r"epoch 1: task 'depth' at step 1; stopping"):
        trainer.fit(ctx)
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["epoch"] == 0  # the last good one


def test_nan_policy_skip_drops_the_step_and_finishes(tmp_path, monkeypatch):
    from okd.tasks import Depth

    real_loss, calls = Depth.loss, {"n": 0}

    def bad_loss(self, pred, target):
        calls["n"] += pred.requires_grad
        return real_loss(self, pred, target) * (float("inf") if pred.requires_grad and calls["n"] == 2 else 1.0)

    trainer, ctx = build(compose_cfg([*TINY, "trainer.epochs=1", "trainer.nan_policy=skip"]), tmp_path)
    monkeypatch.setattr(Depth, "loss", bad_loss)
    before = [p.detach().clone() for p in ctx.model.parameters()]
    summary = trainer.fit(ctx)
    assert trainer.skipped_steps == 1
    assert all(torch.isfinite(p).all() for p in ctx.model.parameters())
    assert summary["final"]["train"]["loss/depth"] < float("inf")
    assert any(not torch.equal(a, b) for a, b in zip(before, ctx.model.parameters()))


def test_failed_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    run(compose_cfg([*TINY, "trainer.epochs=1"]), tmp_path)
    good = (tmp_path / "checkpoints" / "last.pt").read_bytes()

    def full_disk(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt_module.torch, "save", full_disk)
    with pytest.raises(OSError, match=r"could not write checkpoint .*last.pt \(No space left on device\); "
                                      r"the previous checkpoint there is intact"):
        run(compose_cfg([*TINY, "trainer.epochs=2", "trainer.resume=true"]), tmp_path)
    assert (tmp_path / "checkpoints" / "last.pt").read_bytes() == good
    assert not list((tmp_path / "checkpoints").glob(".*.tmp"))


def test_unwritable_run_dir_fails_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(OSError, match="is not writable"):
        run(compose_cfg([*TINY, "trainer.epochs=1"]), blocker / "run")


def test_truncated_checkpoint_is_named(tmp_path):
    run(compose_cfg([*TINY, "trainer.epochs=1"]), tmp_path)
    last = tmp_path / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    with pytest.raises(RuntimeError, match=r"could not load checkpoint .*last.pt"):
        run(compose_cfg([*TINY, "trainer.epochs=2", "trainer.resume=true"]), tmp_path)


@pytest.mark.parametrize("override, message", [
    ("trainer.resume=maybe", "trainer.resume must be true, false or auto"),
    ("trainer.checkpoint_every_n_steps=-1", "checkpoint_every_n_steps must be an integer >= 0"),
    ("trainer.nan_policy=ignore", "nan_policy must be 'stop' or 'skip'"),
])
def test_bad_reliability_options(tmp_path, override, message):
    with pytest.raises(ValueError, match=message):
        build(compose_cfg([*TINY, override]), tmp_path)


def test_sigkill_at_a_random_step_then_resume_matches(tmp_path):
    """A real kill -9 at a random moment of training: resume ends with the uninterrupted run's numbers."""
    import random

    args = [*TINY, "dataset.train_size=160", "trainer.epochs=3", "trainer.checkpoint_every_n_steps=3"]
    env = {**os.environ, "WANDB_MODE": "offline"}
    cmd = [sys.executable, str(ROOT / "run.py"), *args]
    subprocess.run([*cmd, f"hydra.run.dir={tmp_path / 'full'}"], check=True, env=env, capture_output=True, timeout=300)
    proc = subprocess.Popen([*cmd, f"hydra.run.dir={tmp_path / 'cut'}"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = tmp_path / "cut" / "checkpoints" / "last.pt"
    deadline = time.time() + 120
    while not last.exists() and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(random.uniform(0.0, 1.0))  # somewhere in the first two epochs (about 2 s each here)
    proc.kill()
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run finished before the kill: make it longer"
    subprocess.run([*cmd, f"hydra.run.dir={tmp_path / 'cut'}", "trainer.resume=true"], check=True, env=env,
                   capture_output=True, timeout=300)
    full = json.loads((tmp_path / "full" / "summary.json").read_text())
    cut = json.loads((tmp_path / "cut" / "summary.json").read_text())
    assert cut["final"] == full["final"]


def test_kill_during_a_checkpoint_write_leaves_the_previous_checkpoint(tmp_path):
    """SIGKILL while a (large) checkpoint is being written: last.pt stays the old, loadable one."""
    target = tmp_path / "last.pt"
    ckpt_module.save_checkpoint(target, {"epoch": 1, "w": torch.zeros(4)})
    script = (
        "import sys, torch; from okd.engine.checkpoint import save_checkpoint; "
        "save_checkpoint(sys.argv[1], {'epoch': 2, 'w': torch.randn(64, 1024, 1024)})"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, str(target)], cwd=ROOT)
    tmp = tmp_path / ".last.pt.tmp"
    deadline = time.time() + 60
    while not (tmp.exists() and tmp.stat().st_size > 0) and time.time() < deadline:
        time.sleep(0.005)
    proc.kill()
    proc.wait(timeout=60)
    state = load_checkpoint(target)
    assert state["epoch"] in (1, 2)  # never a torn file: the old one, or (if the rename won) the new one
    if proc.returncode == -signal.SIGKILL and tmp.exists():
        assert state["epoch"] == 1


# -- exact resume at every step boundary (issue 14, item 3) -------------------------------------
FOUR_STEPS = ["dataset.train_size=16", "dataset.val_size=4", "dataset.test_size=4", "dataset.height=32",
              "dataset.width=32", "trainer.batch_size=4", "trainer.progress=false", "logger=none",
              "trainer.log_images=0", "trainer.epochs=3"]  # 4 steps per epoch


def _signal_after(monkeypatch, calls: set[int], nan_calls: frozenset[int] = frozenset()) -> dict:
    """Patch the training step: SIGUSR1 to this process after the given calls (1-based, counted
    across runs until the counter is reset), an infinite depth loss in the ``nan_calls``."""
    from okd.tasks import Depth

    real_step, real_loss, counter = Trainer.training_step, Depth.loss, {"n": 0, "poison": False}

    def step(self, images, targets):
        counter["n"] += 1
        counter["poison"] = counter["n"] in nan_calls
        out = real_step(self, images, targets)
        if counter["n"] in calls:
            os.kill(os.getpid(), signal.SIGUSR1)  # the trainer's handler: save after this step, exit
        return out

    def loss(self, pred, target):
        value = real_loss(self, pred, target)
        return value * float("inf") if counter["poison"] and pred.requires_grad else value

    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.setattr(Trainer, "training_step", step)
    monkeypatch.setattr(Depth, "loss", loss)
    return counter


def _results(run_dir: Path) -> tuple[list[dict], dict]:
    """metrics.jsonl rows without wall times, and the summary's numbers."""
    rows = [{k: v for k, v in json.loads(line).items() if k not in ("time_s", "epoch_time_s")}
            for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((run_dir / "summary.json").read_text())
    return rows, {k: summary.get(k) for k in ("final", "best", "selection", "delta", "skipped_steps")}


def _cut_and_resume(tmp_path: Path, monkeypatch, args: list[str], name: str, signal_call: int,
                    nan_calls: frozenset[int] = frozenset()) -> dict:
    counter = _signal_after(monkeypatch, {signal_call}, nan_calls)
    with pytest.raises(SystemExit) as stop:
        run(compose_cfg(args), tmp_path / name)
    assert stop.value.code == 128 + signal.SIGUSR1
    state = load_checkpoint(tmp_path / name / "checkpoints" / "last.pt")
    assert counter["n"] == signal_call  # the run stopped right after the signalled step
    run(compose_cfg([*args, "trainer.resume=true"]), tmp_path / name)
    return state


@pytest.mark.parametrize("weighting", ["ew", "dwa"])
def test_signal_at_every_step_boundary_resumes_exactly(tmp_path, monkeypatch, weighting):
    """SIGUSR1 after step 1, 2, 3 and 4 (the last) of epoch 1: every resume ends as the uninterrupted
    run, row by row. DWA: epoch 2's weights depend on epoch 1's mean losses; EW: epoch 1 is the last."""
    epochs = 3 if weighting == "dwa" else 2
    args = [*FOUR_STEPS, f"weighting={weighting}", f"trainer.epochs={epochs}"]
    counter = _signal_after(monkeypatch, set())
    run(compose_cfg(args), tmp_path / "full")
    assert counter["n"] == 4 * epochs
    full = _results(tmp_path / "full")
    for step in (1, 2, 3, 4):
        state = _cut_and_resume(tmp_path, monkeypatch, args, f"cut{step}", 4 + step)
        assert state["in_epoch"]["epoch"] == 1 and state["in_epoch"]["step"] == step
        assert _results(tmp_path / f"cut{step}") == full, f"signal after step {step} of epoch 1"
    if weighting == "ew":
        assert all(r["weight/depth"] == 1.0 for r in full[0] if r["split"] == "train")


def test_nan_skip_counts_survive_a_mid_epoch_resume(tmp_path, monkeypatch):
    """Steps skipped before the signal (this epoch and earlier ones) still count after the resume:
    the epoch means divide by the steps actually taken."""
    args = [*FOUR_STEPS, "trainer.nan_policy=skip"]
    nan = frozenset({2, 6})  # epoch 0 step 1, epoch 1 step 1
    _signal_after(monkeypatch, set(), nan)
    run(compose_cfg(args), tmp_path / "full")
    full = _results(tmp_path / "full")
    train = [r for r in full[0] if r["split"] == "train"]
    assert [r["weight/depth"] for r in train] == [1.0, 1.0, 1.0]  # EW: the mean of ones
    assert [r["skipped_steps"] for r in train] == [1, 1, 0] and full[1]["skipped_steps"] == 2
    _cut_and_resume(tmp_path, monkeypatch, args, "cut", 7, nan)  # epoch 1 after step 3
    assert _results(tmp_path / "cut") == full


def test_okd_resumes_exactly_from_the_middle_of_the_first_epoch(tmp_path, monkeypatch):
    """The teachers' warm-up is not repeated, and the epoch's teacher losses (OTW's reference, hence
    the student's weights of the next epoch) and AFD terms include the steps before the signal."""
    args = [*FOUR_STEPS, "trainer.epochs=2", "kd=okd", "kd.warmup_epochs=1", "weighting=otw", "backbone.width=0.0625"]
    _signal_after(monkeypatch, set())
    run(compose_cfg(args), tmp_path / "full")
    state = _cut_and_resume(tmp_path, monkeypatch, args, "cut", 2)
    assert state["in_epoch"] == {**state["in_epoch"], "epoch": 0, "step": 2}
    assert _results(tmp_path / "cut") == _results(tmp_path / "full")
