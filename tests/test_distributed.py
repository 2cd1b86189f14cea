"""Multi-process training of one run (torchrun + DDP, gloo on the CPU).

The end-to-end tests start real ``torchrun --nproc_per_node=2`` jobs: one training run (logged
once, evaluated exactly like one process evaluates its checkpoint), a resumed run (same numbers as
an uninterrupted one), and one training step of every DDP-capable weighting/KD configuration, whose
gradients must equal those of one process on the whole batch (tests/ddp_gradients.py).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import run as run_module
from okd.distributed import ShardSampler
from okd.engine.sampler import ResumableRandomSampler

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
TINY = ["dataset.train_size=16", "dataset.val_size=6", "dataset.test_size=7", "dataset.height=32",
        "dataset.width=32", "trainer.batch_size=4", "trainer.eval_batch_size=3", "trainer.progress=false",
        "trainer.log_images=0", "trainer.device=cpu"]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true",
            "PYTHONPATH": str(ROOT)}


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# -- samplers -------------------------------------------------------------------------------------
def test_training_shards_partition_the_epoch_with_padding():
    n, world = 10, 3
    shards = [list(ResumableRandomSampler(n, seed=5, rank=r, world_size=world)) for r in range(world)]
    assert [len(s) for s in shards] == [4, 4, 4]  # ceil(10/3): every process runs the same steps
    flat = sorted(i for s in shards for i in s)
    assert set(flat) == set(range(n)) and len(flat) == 12  # every sample, two repeated as padding
    # the interleaved shards are the one-process order (plus padding)
    order = list(ResumableRandomSampler(n, seed=5))
    assert [shards[i % world][i // world] for i in range(n)] == order
    resumed = ResumableRandomSampler(n, seed=5, rank=1, world_size=world)
    resumed.set_epoch(0, start=2)
    assert list(resumed) == shards[1][2:] and len(resumed) == 2


def test_evaluation_shards_count_every_sample_once():
    shards = [list(ShardSampler(7, r, 2)) for r in range(2)]
    assert shards == [[0, 2, 4, 6], [1, 3, 5]]
    with pytest.raises(ValueError, match="rank 2"):
        ResumableRandomSampler(4, 0, rank=2, world_size=2)


def test_torchrun_refuses_a_sweep(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setattr(sys, "argv", ["run.py", "-m", "seed=0,1"])
    with pytest.raises(SystemExit) as exit_info:
        run_module.join_torchrun_job()
    assert exit_info.value.code == 2
    assert "torchrun trains ONE run" in capsys.readouterr().err


# -- gradients: 2 processes x 2 samples == 1 process x 4 samples ---------------------------------
def test_every_ddp_capable_method_gives_the_whole_batch_gradients(tmp_path):
    script = str(ROOT / "tests" / "ddp_gradients.py")
    _run([sys.executable, script, str(tmp_path / "one.pt")], tmp_path)
    _run([*TORCHRUN, script, str(tmp_path / "two.pt")], tmp_path)
    one = torch.load(tmp_path / "one.pt", weights_only=False)
    two = torch.load(tmp_path / "two.pt", weights_only=False)
    assert (one["world_size"], two["world_size"]) == (1, 2)
    for name, grads in one.items():
        if name == "world_size" or isinstance(grads, str):
            continue
        assert set(two[name]) == set(grads), name
        assert any(k.startswith("model.") for k in grads)
        if name.startswith("okd_"):  # the teachers trained in the same job, on the same global batch
            assert any(k.startswith("distiller.teachers.") for k in grads)
        for key, value in grads.items():
            torch.testing.assert_close(two[name][key], value, rtol=2e-4, atol=1e-6, msg=f"{name}: {key}")
    refused = {name for name, value in one.items() if isinstance(value, str)}
    assert {"mgda_ub", "alignedmtl_ub", "graddrop"} <= refused  # the representation-level options
    for name in refused:
        assert one[name] == "accepted"
        assert two[name].startswith("refused:") and "shared representation" in two[name]
    # every option of conf/weighting/ is run or refused (the lists are derived from it)
    options = {p.stem for p in (ROOT / "conf" / "weighting").glob("*.yaml")}
    assert options <= set(one) | {name.removeprefix("okd_") for name in one}


# -- a whole run ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory):
    """A 2-epoch torchrun OKD run (teachers warm up, then train with the student), and the same run
    stopped after epoch 0 then resumed."""
    base = tmp_path_factory.mktemp("ddp")
    straight, cut = base / "straight", base / "cut"
    cmd = [*TORCHRUN, str(ROOT / "run.py"), *TINY, "kd=okd", "weighting=otw", "kd.warmup_epochs=1"]
    log = _run([*cmd, "trainer.epochs=2", "logger=wandb", f"hydra.run.dir={straight}"], base)
    _run([*cmd, "trainer.epochs=1", "logger=none", f"hydra.run.dir={cut}"], base)
    _run([*cmd, "trainer.epochs=2", "logger=none", "trainer.resume=true", f"hydra.run.dir={cut}"], base)
    return straight, cut, log


def test_torchrun_run_logs_once(ddp_runs):
    straight, _, log = ddp_runs
    rows = _rows(straight)
    keys = [(r["epoch"], r["split"]) for r in rows]
    assert sorted(keys) == sorted({(e, s) for e in (0, 1) for s in ("train", "val", "test")})  # no duplicates
    assert len(list((straight / "wandb").glob("offline-run-*"))) == 1
    # rank 0 alone speaks: on the console (stdout) and in run.log
    assert log.stdout.count("results: ") == 1 and "x 2 processes (DDP)" in log.stdout
    assert log.stdout.count("okd warm-up epoch 1/1") == 1
    assert (straight / "run.log").read_text().count("results: ") == 1
    assert all(f"teacher/{t}/{m}" in rows[-1] for t, m in (("segmentation", "miou"), ("depth", "abs_err")))
    assert len(list(straight.glob("**/.hydra"))) == 1 and (straight / "summary.json").is_file()


def test_torchrun_metrics_equal_one_process_evaluation_of_its_checkpoint(ddp_runs, tmp_path):
    straight, _, _ = ddp_runs
    _run([sys.executable, str(ROOT / "run.py"), "mode=eval", f"ckpt={straight / 'checkpoints' / 'last.pt'}",
          "trainer.eval_batch_size=3", "trainer.device=cpu", f"hydra.run.dir={tmp_path / 'eval'}"], tmp_path)
    evaluated = json.loads((tmp_path / "eval" / "eval.json").read_text())["metrics"]
    trained = {r["split"]: r for r in _rows(straight) if r["epoch"] == 1}
    for split in ("val", "test"):  # 6 and 7 samples: shards of 3+3 and 4+3, batches of 3
        for key, value in evaluated[split].items():
            if "/" in key and not key.startswith("loss"):  # split-level metrics: exact accumulators
                assert trained[split][key] == pytest.approx(value, rel=1e-9, abs=1e-9), (split, key)
            else:  # losses: means of per-batch means, whose batches differ with sharding
                assert trained[split][key] == pytest.approx(value, rel=1e-3), (split, key)


def test_torchrun_resume_continues_the_run(ddp_runs):
    straight, cut, _ = ddp_runs
    final = {r["split"]: r for r in _rows(straight) if r["epoch"] == 1}
    resumed = {r["split"]: r for r in _rows(cut) if r["epoch"] == 1}
    assert [r["epoch"] for r in _rows(cut) if r["split"] == "test"] == [0, 1]
    for split in ("train", "val", "test"):
        for key, value in final[split].items():
            if isinstance(value, float) and not key.endswith("time_s"):
                assert resumed[split][key] == pytest.approx(value, rel=1e-5, abs=1e-7), (split, key)


def test_sigterm_to_torchrun_saves_within_a_step_and_the_run_resumes_exactly(tmp_path):
    """torchrun forwards SIGTERM to its workers and kills them 30 s later: they agree on the signal at
    the next step (not at the next log interval, here never reached), save, and stop; the run resumes
    under torchrun with the numbers of an uninterrupted one."""
    from okd.engine.checkpoint import load_checkpoint

    steps = 50  # per epoch: 400 samples, 2 processes x 4
    cmd = [*TORCHRUN, str(ROOT / "run.py"), *TINY, "dataset.train_size=400", "trainer.epochs=2", "logger=none",
           "trainer.log_every_n_steps=1000"]
    _run([*cmd, f"hydra.run.dir={tmp_path / 'straight'}"], tmp_path)
    cut = tmp_path / "cut"
    proc = subprocess.Popen([*cmd, f"hydra.run.dir={cut}"], cwd=tmp_path, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while not (cut / "checkpoints" / "last.pt").is_file() and time.monotonic() < deadline:
        time.sleep(0.05)  # epoch 0 saved: the signal lands in epoch 1 (about 2 s of steps)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0, out
    assert out.count("SIGTERM received: saved") == 1, out
    state = load_checkpoint(cut / "checkpoints" / "last.pt")
    assert state["in_epoch"] is not None and state["in_epoch"]["epoch"] == 1, out
    assert 0 < state["in_epoch"]["step"] < steps, "saved within the epoch, a step after the signal"
    _run([*cmd, f"hydra.run.dir={cut}", "trainer.resume=true"], tmp_path)
    drop = ("time_s", "epoch_time_s")
    assert [{k: v for k, v in r.items() if k not in drop} for r in _rows(cut)] == \
        [{k: v for k, v in r.items() if k not in drop} for r in _rows(tmp_path / "straight")]
