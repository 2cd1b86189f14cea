"""The command line as a user types it, run from a fresh working directory."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN = str(ROOT / "run.py")
TINY = ["dataset.train_size=8", "dataset.val_size=4", "dataset.test_size=4", "dataset.height=32",
        "dataset.width=32", "trainer.batch_size=4", "trainer.progress=false"]


def okd(cwd: Path, *args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", **(env or {})}
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.run([sys.executable, RUN, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"run.py {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_single_run_lands_in_dated_outputs_dir_with_wandb(tmp_path):
    proc = okd(tmp_path, "weighting=ew", "dataset=synthetic", "trainer.epochs=1", *TINY)
    run_dirs = list((tmp_path / "outputs").glob("*/*/summary.json"))
    assert len(run_dirs) == 1, "a run lands in outputs/<date>/<time>/ under the working directory"
    run_dir = run_dirs[0].parent
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert (run_dir / "metrics.jsonl").is_file()
    assert (run_dir / "checkpoints" / "last.pt").is_file()
    assert list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["choices"]["weighting"] == "ew" and summary["epochs"] == 1
    assert "results:" in proc.stdout and "W&B offline run" in proc.stdout  # tells where things are
    # the console goes to stdout (`> log` keeps it) and, with times, to the run's run.log
    log = (run_dir / "run.log").read_text()
    assert "epoch 1/1" in log and "results:" in log and "\r" not in log
    assert "best: epoch 1/1, chosen by val loss" in proc.stdout  # the run ends with its result


def test_multirun_lands_in_numbered_dirs(tmp_path):
    okd(tmp_path, "-m", "seed=0,1", "logger=none", "trainer.epochs=1", *TINY)
    jobs = sorted(p.parent.name for p in (tmp_path / "outputs" / "multirun").glob("*/*/*/summary.json"))
    assert jobs == ["0", "1"]


def test_unknown_option_lists_the_available_ones(tmp_path):
    proc = okd(tmp_path, "weighting=nope", check=False)
    assert proc.returncode != 0
    assert "Could not find 'weighting/nope'" in proc.stderr
    assert "Available options" in proc.stderr and "ew" in proc.stderr and "dwa" in proc.stderr
    assert not (tmp_path / "outputs").exists() or not list((tmp_path / "outputs").glob("*/*/metrics.jsonl"))


def test_bad_value_is_one_clear_line_before_training(tmp_path):
    proc = okd(tmp_path, "trainer.batch_size=0", "logger=none", check=False)
    assert proc.returncode == 2
    assert "okd: error: trainer.batch_size must be a positive integer, got 0" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_help_lists_every_group_with_its_options(tmp_path):
    out = okd(tmp_path, "--help").stdout
    for group in ("dataset", "backbone", "weighting", "kd", "trainer", "logger", "protocol", "reference",
                  "experiment"):
        assert f"\n  {group} " in out, group  # one explanatory line per group
    conf = ROOT / "conf"
    for group in ("dataset", "backbone", "weighting", "kd", "logger", "protocol", "reference"):
        options = sorted(p.stem for p in (conf / group).glob("*.yaml"))
        assert f"{group}: {', '.join(options)}" in out


def test_predict_needs_only_the_checkpoint_and_the_input(tmp_path):
    okd(tmp_path, "trainer.epochs=1", "logger=none", "backbone.width=0.0625", "dataset.tasks=[depth,normal]",
        *TINY, f"hydra.run.dir={tmp_path / 'train'}")
    ckpt = tmp_path / "train" / "checkpoints" / "best.pt"
    okd(tmp_path, "mode=predict", f"ckpt={ckpt}", "input=split:test:2", f"hydra.run.dir={tmp_path / 'pred'}")
    files = sorted(p.name for p in (tmp_path / "pred" / "predictions").iterdir())
    assert files == ["test_0.npz", "test_0.png", "test_1.npz", "test_1.png"]
    import numpy as np
    with np.load(tmp_path / "pred" / "predictions" / "test_0.npz") as npz:
        assert sorted(npz.files) == ["depth", "image", "normal"]
        assert npz["depth"].shape == (32, 32)
    proc = okd(tmp_path, "mode=eval", f"ckpt={ckpt}", f"hydra.run.dir={tmp_path / 'eval'}")
    assert "training-time metrics of this checkpoint: identical" in proc.stdout


# -- README "Bad input": every row ends as `okd: error: ...`, exit status 2, no traceback ---------
TRAIN = [*TINY, "logger=none", "trainer.epochs=1", "backbone.width=0.0625"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """One finished tiny run (trained in-process: faster); its checkpoints feed the cases below."""
    from okd.app import run
    from okd.config import compose as compose_cfg

    out = tmp_path_factory.mktemp("trained")
    run(compose_cfg(TRAIN), out)
    return out


def _truncated(trained: Path, tmp: Path, name: str) -> Path:
    """A copy of the trained run whose checkpoint ``name`` lost its end (a kill during a copy)."""
    copy = tmp / "copy"
    shutil.copytree(trained, copy)
    ckpt = copy / "checkpoints" / name
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    return copy


def _image(tmp: Path, name: str, data: bytes) -> Path:
    (tmp / name).write_bytes(data)
    return tmp / name


BAD_INPUT_CLI = {  # case: (arguments given the trained run dir and a scratch dir, expected message)
    "truncated last.pt on resume": (
        lambda t, tmp: [*TRAIN, "trainer.resume=true", f"hydra.run.dir={_truncated(t, tmp, 'last.pt')}"],
        r"could not load checkpoint \S+last\.pt: .*expected a checkpoint written by okd"),
    "truncated checkpoint, mode=eval": (
        lambda t, tmp: ["mode=eval", f"ckpt={_truncated(t, tmp, 'best.pt') / 'checkpoints' / 'best.pt'}"],
        r"could not load checkpoint \S+best\.pt"),
    "truncated checkpoint, mode=predict": (
        lambda t, tmp: ["mode=predict", f"ckpt={_truncated(t, tmp, 'best.pt') / 'checkpoints' / 'best.pt'}",
                        "input=split:test:1"],
        r"could not load checkpoint \S+best\.pt"),
    "missing checkpoint, mode=eval": (
        lambda t, tmp: ["mode=eval", f"ckpt={tmp / 'nope.pt'}"], r"checkpoint not found: \S+nope\.pt"),
    "resume without a checkpoint": (
        lambda t, tmp: [*TRAIN, "trainer.resume=true", f"hydra.run.dir={tmp / 'empty'}"],
        r"no checkpoint at \S+last\.pt; point the run at the run directory"),
    "checkpoint of another model": (
        lambda t, tmp: ["mode=eval", f"ckpt={t / 'checkpoints' / 'best.pt'}", "backbone.width=0.125"],
        r"checkpoint \S+best\.pt does not match the model built from this config:"),
    "mode=eval without ckpt": (lambda t, tmp: ["mode=eval"], r"this mode needs a checkpoint: add ckpt="),
    "a config group set to null (Hydra would give a traceback)": (
        lambda t, tmp: ["experiment=okd", "protocol=null"],
        r"protocol=null: a config group takes the name of one of its options .*use protocol=none \(or '~protocol'"),
    "mode=nope": (lambda t, tmp: ["mode=nope"], r"mode='nope': expected one of \['train', 'eval', 'predict'\]"),
    "unreadable image in mode=predict": (
        lambda t, tmp: ["mode=predict", f"ckpt={t / 'checkpoints' / 'best.pt'}",
                        f"input={_image(tmp, 'broken.png', b'not a png')}"],
        r"cannot read image \S+broken\.png: .*expected a PNG/JPEG"),
    "batch size 0": (lambda t, tmp: [*TRAIN, "trainer.batch_size=0"],
                     r"trainer.batch_size must be a positive integer, got 0"),
    "epochs abc": (lambda t, tmp: [*TRAIN, "trainer.epochs=abc"], r"trainer.epochs must be a positive integer"),
    "negative learning rate": (lambda t, tmp: [*TRAIN, "trainer.optimizer.lr=-0.1"],
                               r"trainer.optimizer/scheduler: Invalid learning rate: -0.1"),
    "DWA temperature 0": (lambda t, tmp: [*TRAIN, "weighting=dwa", "weighting.temperature=0"],
                          r"temperature must be a finite number > 0, got 0"),
    "unknown task": (lambda t, tmp: [*TRAIN, "dataset.tasks=[depth,edges]"], r"unknown task\(s\) \['edges'\]"),
    "OTW without teachers": (lambda t, tmp: [*TRAIN, "weighting=otw"], r"needs teacher losses, but kd=none"),
    "monitor naming nothing": (lambda t, tmp: [*TRAIN, "selection.monitor=depth/nope"],
                               r"selection.monitor='depth/nope' is not a metric of these tasks; use 'loss' or one of"),
    "eval split naming nothing": (lambda t, tmp: [*TRAIN, "trainer.eval_splits=[nope]"],
                                  r"trainer.eval_splits: 'nope' is not a split of dataset 'synthetic' \(available"),
    "unknown device": (lambda t, tmp: [*TRAIN, "trainer.device=tpu0"], r"trainer.device='tpu0'"),
}


@pytest.mark.parametrize("case", list(BAD_INPUT_CLI))
def test_bad_input_is_one_line_and_status_2(tmp_path, trained, case):
    make_args, message = BAD_INPUT_CLI[case]
    proc = okd(tmp_path, *make_args(trained, tmp_path), check=False)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("okd: error: ")]
    assert len(errors) == 1 and re.search(message, errors[0]), proc.stderr


def test_a_bug_keeps_its_traceback(tmp_path):
    """Only bad input becomes one line: an exception from a bug (here a TypeError raised inside the
    trainer) still shows where it happened."""
    hook = tmp_path / "sitecustomize.py"
    hook.write_text("import okd.engine.trainer as t\n"
                    "def broken(self, ctx):\n    raise TypeError('a bug')\n"
                    "t.Trainer.setup = broken\n")
    env_path = f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    proc = subprocess.run([sys.executable, RUN, *TRAIN, f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": env_path, "WANDB_MODE": "offline"},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "TypeError: a bug" in proc.stderr and "okd: error" not in proc.stderr


def test_eval_reports_a_float_rounding_difference_as_equal_within_tolerance(tmp_path, trained):
    """Metrics recomputed on another machine (thread count, GPU) differ in the last float bits: that
    is 'equal within rel 1e-05', with the largest difference named, on the console and in eval.json."""
    import torch

    state = torch.load(trained / "checkpoints" / "best.pt", weights_only=True)
    state["metrics"]["test"]["depth/abs_err"] *= 1 + 1e-7  # as if recorded by another machine
    ckpt = tmp_path / "other_machine.pt"
    torch.save(state, ckpt)
    proc = okd(tmp_path, "mode=eval", f"ckpt={ckpt}", "eval_split=test", f"hydra.run.dir={tmp_path / 'eval'}")
    console = proc.stdout + proc.stderr
    line = next(l for l in console.splitlines() if "training-time metrics of this checkpoint" in l)
    assert "equal within rel 1e-05 / abs 1e-08 (largest difference: depth/abs_err" in line, console
    written = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert written["matches_training_time_metrics"]["test"].startswith("equal within rel 1e-05")
    assert written["comparison_tolerance"] == {"rel": 1e-5, "abs": 1e-8}


# -- resuming continues the run as it was started (issue 14, item 4) ------------------------------
def _rows_and_numbers(run_dir: Path) -> tuple[list[dict], dict]:
    rows = [{k: v for k, v in json.loads(line).items() if k not in ("time_s", "epoch_time_s")}
            for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((run_dir / "summary.json").read_text())
    return rows, {k: summary[k] for k in ("final", "best", "selection", "choices", "epochs")}


def test_readme_resume_command_continues_the_run_as_started(tmp_path):
    """A DWA run on 32 samples, preempted in epoch 1, resumed with the README's command and nothing
    else: it continues with DWA (whose state is in the checkpoint) on its 32 samples and ends as the
    uninterrupted run; .hydra/ describes the run again, not the resume command."""
    args = ["weighting=dwa", "dataset.train_size=32", "dataset.val_size=4", "dataset.test_size=4",
            "dataset.height=32", "dataset.width=32", "trainer.batch_size=8", "trainer.epochs=3",
            "trainer.progress=false", "logger=none", "trainer.log_images=0"]  # 4 steps per epoch
    okd(tmp_path, *args, f"hydra.run.dir={tmp_path / 'full'}")
    cut = okd(tmp_path, *args, f"hydra.run.dir={tmp_path / 'cut'}", check=False,
              env={"OKD_TEST_SIGTERM_AFTER_STEP": "6", "PYTHONPATH": str(ROOT / "tests" / "hooks")})
    assert cut.returncode == 143, cut.stderr
    resumed = okd(tmp_path, "trainer.resume=true", f"hydra.run.dir={tmp_path / 'cut'}")
    console = resumed.stdout + resumed.stderr
    assert "(32 train samples)" in console and "weighting DWA" in console
    assert _rows_and_numbers(tmp_path / "cut") == _rows_and_numbers(tmp_path / "full")
    import yaml
    assert yaml.safe_load((tmp_path / "cut" / ".hydra" / "overrides.yaml").read_text()) == [
        *args, "trainer.resume=true"]
    assert yaml.safe_load((tmp_path / "cut" / ".hydra" / "config.yaml").read_text())["weighting"]["_target_"] \
        == "okd.weighting.dwa.DWA"


def test_resume_refuses_what_changes_the_run_and_accepts_free_switches(tmp_path):
    args = [*TINY, "weighting=dwa", "trainer.epochs=1", "trainer.log_images=0"]  # W&B offline
    run_dir = f"hydra.run.dir={tmp_path / 'run'}"
    okd(tmp_path, *args, run_dir)
    refused = okd(tmp_path, *args, "trainer.resume=auto", "weighting=uw", "trainer.optimizer.lr=0.1",
                  "dataset.train_size=16", run_dir, check=False)  # a requeue with another config
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
    error = refused.stderr[refused.stderr.index("okd: error: "):].splitlines()
    assert error[0].startswith(f"okd: error: trainer.resume: this command changes what the run in {tmp_path / 'run'} "
                               f"computes, but a resumed run continues with the config it was started with")
    assert error[1:4] == ["  weighting=uw: the run has weighting=dwa, this command weighting=uw",
                          "  trainer.optimizer.lr=0.1: trainer.optimizer.lr is 0.001 in the run, 0.1 here",
                          "  dataset.train_size=16: dataset.train_size is 8 in the run, 16 here"]
    accepted = okd(tmp_path, "trainer.resume=true", "trainer.epochs=2", "logger.mode=offline",
                   "trainer.progress=false", "trainer.device=cpu", run_dir)
    console = accepted.stdout + accepted.stderr
    assert "weighting DWA" in console and "epochs 1..1" in console
    rows, numbers = _rows_and_numbers(tmp_path / "run")
    assert [r["epoch"] for r in rows] == [0, 0, 0, 1, 1, 1] and numbers["choices"]["weighting"] == "dwa"


@pytest.mark.parametrize("command", [["run.py", "--help"], ["-m", "okd.launch", "wandb", "hparams_okd_synthetic_segnet"]])
def test_help_and_config_tools_do_not_import_torch(command):
    """`--help` and the sweep-file tool answer without torch (1.6 s of the old 3.1 s of --help)."""
    args = [str(ROOT / command[0]), *command[1:]] if command[0] == "run.py" else command
    proc = subprocess.run([sys.executable, "-X", "importtime", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    imported = {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "torch" not in imported and "okd.config" in imported | {"okd.launch"}


def test_console_epoch_table_fits_100_columns_marks_the_best_and_ends_with_the_result():
    from okd.logging import WIDTH, format_epoch_table

    metrics = {"segmentation/miou": 31.62, "segmentation/pix_acc": 81.04, "depth/abs_err": 0.6123,
               "depth/rel_err": 0.2431, "normal/mean": 31.27, "normal/median": 26.51, "normal/within_11.25": 20.13,
               "normal/within_22.5": 43.77, "normal/within_30": 55.34}
    rows = {"train": {"loss/segmentation": 1.9, "loss/depth": 0.61, "weight/segmentation": 1.0}, "val": metrics}
    text = format_epoch_table(2, 10, rows, 1.83, best="val loss 2.346", depth_unit="metres")
    lines = text.splitlines()
    assert lines[0] == "epoch 3/10 (1.8 s)  * best so far (val loss 2.346)"
    assert all(len(line) <= WIDTH for line in lines) and len(lines) == 4  # the val line wraps once
    for cell in ("seg mIoU 31.62%", "depth abs 0.6123 m", "depth rel 0.2431", "nrm mean 31.27°", "nrm <30° 55.34%"):
        assert cell in text
    # disparity (Cityscapes) has no unit; no mark on an epoch that is not the best
    plain = format_epoch_table(0, 1, {"val": {"depth/abs_err": 3.1}}, 0.5, depth_unit="disparity")
    assert plain.splitlines() == ["epoch 1/1 (0.5 s)", "  val    depth abs 3.1"]


def test_data_roots_can_be_set_once_in_the_environment(tmp_path, monkeypatch):
    from okd.config import compose

    monkeypatch.setenv("OKD_NYUV2_ROOT", str(tmp_path / "nyuv2"))
    monkeypatch.setenv("OKD_CITYSCAPES_ROOT", str(tmp_path / "cityscapes"))
    assert compose(["dataset=nyuv2"]).dataset.root == str(tmp_path / "nyuv2")
    assert compose(["dataset=cityscapes"]).dataset.root == str(tmp_path / "cityscapes")
    assert compose(["dataset=nyuv2", "dataset.root=/elsewhere"]).dataset.root == "/elsewhere"  # the command wins
    env = {k: v for k, v in os.environ.items() if k not in ("OKD_NYUV2_ROOT", "OKD_CITYSCAPES_ROOT")}
    proc = subprocess.run([sys.executable, str(ROOT / "run.py"), "dataset=nyuv2", "logger=none",
                           f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "export OKD_NYUV2_ROOT=<folder>" in proc.stderr, proc.stderr
