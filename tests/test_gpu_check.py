"""python -m okd.gpu_check: the prepared GPU check, rehearsed on the CPU (--dry-run), its refusal without
CUDA, its budgets (a step stopped at its time keeps what it did and names what it did not), and the
classification of host synchronisations."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from okd import gpu_check

ROOT = Path(__file__).resolve().parents[1]
STEPS = ["tests", "train", "syncs", "bench", "loader"]
#: what the device tool brings back from $OUT: plain names of letters, digits, '.', '_' and '-'
PORTABLE_NAME = re.compile(r"^[A-Za-z0-9._-]+$")


def _run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    env.pop("OUT", None)
    return subprocess.run([sys.executable, "-m", "okd.gpu_check", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.slow
def test_dry_run_runs_every_step_and_writes_json_and_markdown(tmp_path):
    out = tmp_path / "out"
    result = _run("--dry-run", "--out", str(out))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == f"okd.gpu_check: PASS: {out / 'gpu_check.md'}"
    files = sorted(p.name for p in out.iterdir())
    assert files == ["bench_32.json", "bench_bf16-cl.json", "gpu_check.json", "gpu_check.log", "gpu_check.md"]
    assert all(PORTABLE_NAME.match(f) for f in files)

    report = json.loads((out / "gpu_check.json").read_text())
    env = report["environment"]
    assert env["dry_run"] is True and env["torch"] and env["date"] and env["device"].startswith("CPU")
    assert report["ok"] is True and report["elapsed_s"] < report["budget_s"]
    steps = {s["name"]: s for s in report["steps"]}
    assert list(steps) == STEPS
    assert all(s["status"] == "pass" and s["elapsed_s"] > 0 and s["budget_s"] > 0 for s in steps.values())

    tests = steps["tests"]["detail"]
    assert tests["tests"] == tests["skipped"] > 0 and tests["failed"] == tests["errors"] == 0  # no CUDA here
    train = steps["train"]["detail"]["units"]
    assert [u["name"] for u in train] == gpu_check.TRAIN_UNITS
    assert all(u["ok"] and u["non_finite"] == [] and u["command"].startswith("python run.py experiment=")
               for u in train)
    syncs = steps["syncs"]["detail"]
    assert syncs["cuda"] is False and [u["name"] for u in syncs["units"]] == gpu_check.SYNC_UNITS
    assert all(u["steps"] == gpu_check.DRY.sync_steps for u in syncs["units"])
    variants = steps["bench"]["detail"]["variants"]
    assert list(variants) == ["32", "bf16+cl"]
    rows = {(r["part"], r["config"]) for r in variants["32"]["variants"][0]["rows"]}
    assert {("train", "ew"), ("train", "mgda"), ("okd", "okd"), ("eval", "evaluate")} <= rows
    loader = steps["loader"]["detail"]
    assert loader["units"][0]["samples_per_s"] > 0 and set(loader["consumption"]) == {
        "ew 32", "okd 32", "ew bf16+cl", "okd bf16+cl"}

    targets = {t["target"]: t for t in report["targets"]}
    speedup = targets["bf16+channels_last speed-up of the EW step over fp32"]
    assert speedup["value"] > 0 and speedup["limit"] == ">= 1.8x"
    assert targets["okd (32) vs the sum of its bare components"]["limit"] == "<= 1.1x"
    assert targets["ew (bf16+cl) vs the bare loop"]["limit"] == "<= 1.05x"
    memory = next(t for t in report["targets"] if t["target"].startswith("OKD peak GPU memory"))
    assert memory["value"] is None and memory["ok"] is None  # no allocator statistics on the CPU

    md = (out / "gpu_check.md").read_text()
    assert md.startswith("# okd GPU check: PASS") and "**Dry run**" in md
    for heading in ("## Targets", "## CUDA tests", "## Training: 2 epochs", "## Host synchronisations",
                    "## okd.bench", "## Loader"):
        assert heading in md
    assert all(f"| {name}: " in md for name in STEPS)
    assert "okd.bench --backbone resnet50" in (out / "gpu_check.log").read_text()


def test_without_cuda_it_says_so_in_one_line_and_exits_nonzero(tmp_path):
    if gpu_check.torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = _run("--out", str(tmp_path / "out"))
    assert result.returncode == 2 and result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("okd.gpu_check: no CUDA device") and "--dry-run" in line
    assert not (tmp_path / "out").exists()


def test_unknown_step_is_refused(capsys):
    assert gpu_check.main(["--dry-run", "--only", "train,gpu"]) == 2
    assert "['gpu']: not steps of" in capsys.readouterr().err


def test_without_time_left_nothing_starts_and_everything_is_reported(tmp_path):
    out = tmp_path / "out"
    assert gpu_check.main(["--dry-run", "--budget", "5", "--only", "train,bench", "--out", str(out)]) == 1
    report = json.loads((out / "gpu_check.json").read_text())
    assert [(s["name"], s["status"]) for s in report["steps"]] == [("train", "not run"), ("bench", "not run")]
    assert report["not_selected"] == ["tests", "syncs", "loader"] and report["ok"] is False
    md = (out / "gpu_check.md").read_text()
    assert "## Not run" in md and "- train: out of time" in md


def test_a_step_past_its_time_is_stopped_and_keeps_its_finished_units(tmp_path, monkeypatch):
    """An internal step saves after every unit; stopped at its timeout, it reports those units and
    names the planned ones it did not reach."""
    script = ("import json, sys, time; part = sys.argv[1]; "
              "json.dump({'planned': ['a', 'b'], 'units': [{'name': 'a', 'ok': True}]}, open(part, 'w')); "
              "time.sleep(60)")
    monkeypatch.setattr(gpu_check, "internal_command",
                        lambda ctx, name, part, timeout: [sys.executable, "-c", script, str(part)])
    ctx = gpu_check.Context(True, tmp_path, tmp_path, tmp_path / "log", deadline=time.monotonic() + 60)
    start = time.monotonic()
    result = gpu_check.internal_step(ctx, "train", timeout=3)
    assert time.monotonic() - start < 15
    assert result["status"] == "timeout" and result["not_run"] == ["b"]
    assert [u["name"] for u in result["detail"]["units"]] == ["a"]
    assert "exit timeout" in (tmp_path / "log").read_text()


def test_units_that_no_longer_fit_are_left_out(tmp_path):
    part = gpu_check.Part(tmp_path / "part.json", ["fast", "slow", "never"], deadline=time.time() + 1.0)
    part.run_units(part.data["planned"], lambda name: time.sleep(0.6) or {"ok": name != "slow"})
    saved = json.loads((tmp_path / "part.json").read_text())
    assert [u["name"] for u in saved["units"]] == ["fast"]  # after 0.6 s, another 0.6 s does not fit in 1 s
    broken = gpu_check.Part(tmp_path / "broken.json", ["x"], deadline=time.time() + 60)
    broken.run_units(["x"], lambda name: 1 / 0)
    (unit,) = broken.data["units"]
    assert unit["ok"] is False and unit["error"].startswith("ZeroDivisionError")


def test_savings_of_earlier_steps_go_to_later_ones():
    step = gpu_check.Step("bench", "", 160, lambda ctx, t: {})
    assert gpu_check.step_timeout(step, left=400, later=25) == 375   # earlier steps finished early
    assert gpu_check.step_timeout(step, left=200, later=100) == 160  # its own budget first
    assert gpu_check.step_timeout(step, left=90, later=25) == 90     # never past the end of the check


def test_designed_synchronisations_are_told_apart_from_others():
    trainer = str(ROOT / "okd" / "engine" / "trainer.py")
    scaler = "/usr/lib/python3/site-packages/torch/amp/grad_scaler.py"
    kind = gpu_check.designed_kind
    assert kind([(trainer, "_train_epoch"), (trainer, "_check_finite")]).startswith("NaN check")
    precision = str(ROOT / "okd" / "engine" / "precision.py")
    assert kind([(trainer, "training_step"), (precision, "step"), (precision, "found_inf"), (precision, "<genexpr>"),
                 ("/x/torch/_tensor.py", "__bool__")]).startswith("fp16: overflow flags")
    assert kind([(trainer, "training_step"), (scaler, "step"), (scaler, "_maybe_opt_step"),
                 (scaler, "<genexpr>")]).startswith("fp16: GradScaler.step")
    # inside a designed one's callees (the optimizer step GradScaler.step runs), or elsewhere: not designed
    assert kind([(trainer, "training_step"), (scaler, "_maybe_opt_step"), ("/x/torch/optim/adam.py", "step")]) is None
    mgda = str(ROOT / "okd" / "weighting" / "mgda.py")
    assert kind([(trainer, "_check_finite"), (mgda, "backward")]) is None
    frames = [(trainer, 400, "training_step"), (mgda, 77, "solve"), ("/x/torch/_tensor.py", 1, "item")]
    assert gpu_check.caller(frames) == "okd/weighting/mgda.py:77 in solve"
    assert gpu_check.caller([("/x/torch/_tensor.py", 1, "item")]) == "/x/torch/_tensor.py:1 in item"


def test_sync_recorder_counts_sync_warnings_with_their_caller():
    def solve():
        warnings.warn("called a synchronizing CUDA operation")
        warnings.warn("something else")

    with gpu_check.SyncRecorder(cuda=False) as rec:
        solve()
        solve()
    ((where, count),) = rec.undesigned.items()
    assert count == 2 and where.startswith("tests/test_gpu_check.py:") and where.endswith("in solve")
    assert rec.other == 2 and not rec.designed


def test_junit_counts(tmp_path):
    xml = tmp_path / "r.xml"
    xml.write_text('<testsuites><testsuite name="pytest" tests="4">'
                   '<testcase name="a"/><testcase name="b"><failure message="assert 1 == 2">x</failure></testcase>'
                   '<testcase name="c"><skipped message="needs a CUDA device"/></testcase>'
                   '<testcase name="d"><error message="fixture broke"/></testcase></testsuite></testsuites>')
    counts = gpu_check.junit_counts(xml)
    assert {k: counts[k] for k in ("tests", "passed", "failed", "errors", "skipped")} == \
        {"tests": 4, "passed": 1, "failed": 1, "errors": 1, "skipped": 1}
    assert [p["test"] for p in counts["problems"]] == ["b", "d"] and counts["skip_reasons"] == ["needs a CUDA device"]
    assert gpu_check.junit_counts(tmp_path / "missing.xml")["tests"] == 0
