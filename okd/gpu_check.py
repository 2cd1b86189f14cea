"""One prepared GPU check: everything a GPU machine must show, in one command, within 8 minutes.

    python -m okd.gpu_check                      # on a CUDA machine; results in $OUT (or outputs/gpu_check)
    python -m okd.gpu_check --dry-run            # the same steps on the CPU at toy sizes (CI runs this)
    python -m okd.gpu_check --only bench,loader --budget 200     # part of it again

Steps, one after the other, each with its own time budget (seconds); the whole check stops cleanly
before ``--budget`` (default 470 s) and records what did not run:

1. ``tests`` (80): ``pytest -m cuda tests/test_cuda.py``: every weighting one step in fp32, bf16 and
   fp16 with loss scaling, OKD and KD-MTL steps, checkpoints between GPU and CPU, ``mode=eval`` against
   the training-time metrics, DDP over one NCCL process.
2. ``train`` (120): synthetic scenes written in the NYUv2 layout (``python -m okd.data.synthetic
   --layout nyuv2``, 32 training files: 4 steps per epoch), then 2 epochs at the paper's size (dilated
   ResNet-50 + ASPP, 288x384, batch 8, ``trainer.num_workers=8``) for EW, MGDA and OKD, in fp32 and in
   bf16 + channels_last; every loss and metric must be finite. Peak GPU memory per run.
3. ``syncs`` (60): steady-state training epochs under ``torch.cuda.set_sync_debug_mode("warn")``;
   every host synchronisation is traced to its caller and compared with the designed ones (the NaN
   check every ``trainer.log_every_n_steps`` and at the epoch's end; with fp16, the read of GradScaler's
   overflow flags once per step, which GradScaler.step then reads again from an idle device).
4. ``bench`` (160): ``python -m okd.bench --preset gpu`` for EW, DWA, GradNorm, MGDA, OKD and
   evaluation, once per variant (fp32, bf16 + channels_last, bf16), so that a variant cut off by the
   budget leaves the others' figures.
5. ``loader`` (25): samples/s of the training DataLoader (pinned memory, ``trainer.num_workers=8``, the
   README's count) on 96 synthetic NYUv2 files, against the samples/s the training steps of ``bench``
   consume.

Targets (ratios from one run on one machine, reported, not asserted): bf16 + channels_last >= 1.8x the
fp32 EW step; framework EW <= 1.05x the bare PyTorch loop; OKD <= 1.10x the sum of its bare components
(okd.bench's own checks, with DWA and GradNorm's); the loader keeps up with the fastest EW step; OKD's
peak memory (student, 3 teachers, adaptors) fits an 80 GB card at batch 8.

Output (``--out``; default ``$OUT`` when set, else ``outputs/gpu_check``): ``gpu_check.json`` and ``gpu_check.md`` (device, torch
version, date, every figure, pass/fail and elapsed time per step), ``gpu_check.log`` (every command's
output) and ``bench_<variant>.json``. Exit status 0 when every step passed; 1 otherwise; 2 without CUDA
(one line, nothing run) or without Hydra.

A GPU machine without internet access whose Python has torch, torchvision, timm, numpy, matplotlib,
pillow, tqdm, PyYAML, packaging and pytest lacks three of okd's pure-Python dependencies: hydra-core,
omegaconf and antlr4-python3-runtime (wandb is not needed: the check runs with ``logger=none``; the
cityscapes and sweeps extras are not used). Bring them as wheels, fetched where pip has internet access,
into ``.whl/`` of the repository (never committed)::

    echo /.whl/ >> .git/info/exclude
    pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
        --platform manylinux2014_x86_64 -d .whl hydra-core==1.3.8 omegaconf==2.3.1
    pip wheel --no-deps -w .whl antlr4-python3-runtime==4.9.3   # on PyPI as a source archive only

(``unzip -p .whl/NAME-*.whl '*/METADATA' | grep ^Requires-Dist`` lists what each needs: hydra-core
omegaconf, antlr4 4.9 and packaging; omegaconf antlr4 4.9 and PyYAML.) Then on the GPU machine, in the
repository root::

    pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
    python -m okd.gpu_check --out results/
"""
from __future__ import annotations

import argparse
import datetime
import gc
import importlib.util
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

ROOT = Path(__file__).resolve().parents[1]
CUDA_TESTS = "tests/test_cuda.py"  # not all of tests/: the GPU image lacks the suite's extras (sweep plugins, ...)
DEFAULT_BUDGET_S = 470.0           # 8 minutes, less what writing the results and stopping a step may take
RESERVE_S = 8.0                    # kept back for stopping the last step and writing the results
MIN_STEP_S = 10.0                  # a step with less time left does not start
TRAIN_METHODS = {"ew": ["experiment=ew"], "mgda": ["experiment=ew", "weighting=mgda"],
                 "okd": ["experiment=okd", "kd.warmup_epochs=1"]}
SYNC_CONFIGS = (("ew", "32"), ("ew", "bf16+cl"), ("ew", "16"), ("dwa", "bf16+cl"), ("gradnorm", "bf16+cl"),
                ("mgda", "bf16+cl"), ("okd", "bf16+cl"))
SYNC_MESSAGE = "synchroniz"        # torch: "called a synchronizing CUDA operation"
#: (file suffix, function) of the host synchronisations the training loop is designed to make
DESIGNED_SYNCS = {
    ("okd/engine/trainer.py", "_check_finite"): "NaN check (every log_every_n_steps, epoch end)",
    ("okd/engine/precision.py", "found_inf"): "fp16: overflow flags, once per step",
    ("torch/amp/grad_scaler.py", "_maybe_opt_step"): "fp16: GradScaler.step re-reads the flags (device idle)",
}
SPEEDUP_TARGET, OKD_MEMORY_LIMIT_GB = 1.8, 80.0


# --------------------------------------------------------------------------------------------------
# sizes: the paper's on a GPU, toy ones for --dry-run
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Setting:
    """Sizes of one check."""

    device: str
    size: tuple[int, int]
    batch: int
    backbone: tuple[str, ...]    # overrides on top of backbone=resnet50
    train_files: int             # synthetic NYUv2 training files: steps per epoch = train_files / batch
    test_files: int
    train_workers: int           # trainer.num_workers of the training runs
    loader_files: int
    loader_workers: int
    bench: tuple[str, ...]       # okd.bench arguments besides --methods, --variants, --json
    sync_size: tuple[int, int]   # synchronisations do not depend on the image size
    sync_steps: int              # training steps per epoch in the synchronisation check
    variants: tuple[str, ...]    # okd.bench variants, one process each, in this order (the targets' first)


GPU = Setting(device="cuda", size=(288, 384), batch=8, backbone=(), train_files=32, test_files=8, train_workers=8,
              loader_files=96, loader_workers=8,
              bench=("--preset", "gpu", "--steps", "3", "--rounds", "3", "--warmup", "2"),
              sync_size=(96, 128), sync_steps=6, variants=("32", "bf16+cl", "bf16"))
TINY_RESNET = ("backbone.width=0.0625", "backbone.layers=[1,1,1,1]", "backbone.aspp_channels=8")
DRY = Setting(device="cpu", size=(32, 32), batch=2, backbone=TINY_RESNET, train_files=2, test_files=2,
              train_workers=0, loader_files=8, loader_workers=2,
              bench=("--backbone", "resnet50", "--width", "0.0625", "--size", "32x32", "--batch", "2",
                     "--steps", "1", "--rounds", "1", "--warmup", "0", "--device", "cpu", "--threads", "1",
                     *(f"--override={o}" for o in TINY_RESNET[1:])),
              sync_size=(32, 32), sync_steps=2, variants=("32", "bf16+cl"))
BENCH_METHODS = "ew,dwa,gradnorm,mgda"


def setting_of(dry_run: bool) -> Setting:
    return DRY if dry_run else GPU


# --------------------------------------------------------------------------------------------------
# running a step: budgets, subprocesses, partial results
# --------------------------------------------------------------------------------------------------
@dataclass
class Context:
    """What every step of one check shares."""

    dry_run: bool
    out: Path
    work: Path
    log: Path
    deadline: float
    results: dict[str, dict] = field(default_factory=dict)   # finished steps, by name

    @property
    def setting(self) -> Setting:
        return setting_of(self.dry_run)

    def left(self) -> float:
        return self.deadline - time.monotonic()


def child_env() -> dict[str, str]:
    """The repository on the path (okd is not installed on a fresh GPU machine), output unbuffered."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "1",
            "WANDB_MODE": "disabled"}


@dataclass
class Finished:
    rc: int | None         # None: killed at its timeout
    elapsed_s: float


def run_command(ctx: Context, cmd: Sequence[str], timeout: float) -> Finished:
    """Run ``cmd`` in the repository root, output appended to the log; at ``timeout`` its whole
    process group (DataLoader workers too) is stopped."""
    start = time.monotonic()
    with open(ctx.log, "a") as log:
        log.write(f"\n=== {' '.join(cmd)}  (timeout {timeout:.0f} s)\n")
        log.flush()
        proc = subprocess.Popen(list(cmd), cwd=ROOT, env=child_env(), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            rc: int | None = proc.wait(timeout=max(timeout, 1.0))
        except subprocess.TimeoutExpired:
            _stop_group(proc)
            rc = None
        elapsed = time.monotonic() - start
        log.write(f"=== exit {rc if rc is not None else 'timeout'} after {elapsed:.1f} s\n")
    return Finished(rc, elapsed)


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGINT first (pytest then stops as after Ctrl-C and still writes its JUnit report), then SIGTERM,
    then SIGKILL."""
    for sig, wait in ((signal.SIGINT, 4.0), (signal.SIGTERM, 2.0), (signal.SIGKILL, 2.0)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
        except ProcessLookupError:
            return


def internal_command(ctx: Context, name: str, part: Path, timeout: float) -> list[str]:
    """A step that runs in its own process: ``python -m okd.gpu_check --internal <name>``; it saves its
    results to ``part`` after every unit, so a step stopped by its budget still reports what it did."""
    return [sys.executable, "-m", "okd.gpu_check", "--internal", name, "--work", str(ctx.work), "--part", str(part),
            "--internal-deadline", str(time.time() + timeout - 2.0), *(["--dry-run"] if ctx.dry_run else [])]


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def internal_step(ctx: Context, name: str, timeout: float) -> dict:
    part = ctx.work / f"{name}.json"
    done = run_command(ctx, internal_command(ctx, name, part, timeout), timeout)
    detail = read_json(part) or {"units": []}
    units = detail.get("units", [])
    failed = [u["name"] for u in units if not u.get("ok")]
    not_run = [n for n in detail.get("planned", []) if n not in {u["name"] for u in units}]
    status = "timeout" if done.rc is None else "pass" if done.rc == 0 and not failed and not not_run else "fail"
    summary = f"{len(units) - len(failed)}/{len(detail.get('planned', units))} ok"
    if failed:
        summary += "; failed: " + ", ".join(failed)
    if done.rc not in (0, None) and not failed:
        summary += f"; exit status {done.rc} (see gpu_check.log)"
    return {"status": status, "summary": summary, "detail": detail, "not_run": not_run}


class Part:
    """Results of an internal step, saved after every unit."""

    def __init__(self, path: Path, planned: Sequence[str], deadline: float) -> None:
        self.path, self.deadline = path, deadline
        self.data: dict[str, Any] = {"planned": list(planned), "units": []}
        self.save()

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        tmp.replace(self.path)

    def add(self, unit: dict) -> None:
        self.data["units"].append(unit)
        self.save()

    def time_for(self, estimate: float) -> bool:
        """Whether a unit taking about ``estimate`` seconds still fits (else it is left out cleanly)."""
        return time.time() + estimate < self.deadline

    def run_units(self, names: Sequence[str], work: Callable[[str], dict]) -> None:
        """``work(name)`` for every unit that fits; an exception fails that unit only."""
        longest = 0.0
        for name in names:
            if not self.time_for(longest):
                continue  # stays in "planned": reported as not run
            start = time.monotonic()
            try:
                unit = {"name": name, **work(name)}
            except Exception as err:  # noqa: BLE001 -- one failing configuration must not hide the others
                unit = {"name": name, "ok": False, "error": f"{type(err).__name__}: {err}",
                        "traceback": traceback.format_exc(limit=-6)}
            unit["elapsed_s"] = round(time.monotonic() - start, 2)
            longest = max(longest, unit["elapsed_s"])
            self.add(unit)
            _free_device_memory()


def _free_device_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------------------------------
# step 1: the CUDA-marked tests
# --------------------------------------------------------------------------------------------------
def step_tests(ctx: Context, timeout: float) -> dict:
    xml = ctx.work / "cuda_tests.xml"
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", CUDA_TESTS, "-q", "-rfEs", "-p", "no:cacheprovider",
           f"--junitxml={xml}"]
    done = run_command(ctx, cmd, timeout)
    counts = junit_counts(xml)
    summary = f"{counts['passed']} passed, {counts['failed']} failed, {counts['errors']} errors, " \
              f"{counts['skipped']} skipped"
    if done.rc is None:
        return {"status": "timeout", "summary": f"stopped by its budget after {summary}", "detail": counts}
    bad = counts["failed"] + counts["errors"]
    # on a GPU a skipped CUDA test means the tests did not see the device: that is a failure
    skipped_on_gpu = counts["skipped"] and not ctx.dry_run
    ok = done.rc == 0 and not bad and not skipped_on_gpu and counts["tests"] > 0
    summary += " (no CUDA: dry run)" if ctx.dry_run and counts["skipped"] else ""
    return {"status": "pass" if ok else "fail", "summary": summary, "detail": counts}


def junit_counts(path: Path) -> dict:
    """Counts and failures from pytest's JUnit XML (zeros when it was not written)."""
    counts: dict[str, Any] = {"tests": 0, "passed": 0, "failed": 0, "errors": 0, "skipped": 0, "problems": []}
    try:
        suites = ET.parse(path).getroot().iter("testsuite")
    except (OSError, ET.ParseError):
        return counts
    for suite in suites:
        for case in suite.iter("testcase"):
            counts["tests"] += 1
            outcome = next((c for c in case if c.tag in ("failure", "error", "skipped")), None)
            key = {"failure": "failed", "error": "errors", "skipped": "skipped", None: "passed"}[
                None if outcome is None else outcome.tag]
            counts[key] += 1
            if key in ("failed", "errors"):
                message = (outcome.get("message") or outcome.text or "").strip()
                counts["problems"].append({"test": case.get("name"), "outcome": key, "message": message[:400]})
            elif key == "skipped" and len(counts.setdefault("skip_reasons", [])) < 3:
                counts["skip_reasons"].append((outcome.get("message") or "")[:200])
    return counts


# --------------------------------------------------------------------------------------------------
# step 2: two short epochs at the paper's size (internal)
# --------------------------------------------------------------------------------------------------
def write_nyuv2(root: Path, n_train: int, n_test: int, size: tuple[int, int]) -> Path:
    """Synthetic scenes in the NYUv2 layout, through the documented command line."""
    from okd.data.synthetic import main as synthetic

    if not (root / "train").is_dir():
        synthetic(["--layout", "nyuv2", "--out", str(root), "--n", str(n_train), "--val", str(n_test),
                   "--size", f"{size[0]}x{size[1]}"])
    return root


def train_overrides(setting: Setting, root: Path, method: str, variant: str) -> list[str]:
    from okd.bench import parse_variant

    return [*TRAIN_METHODS[method], "backbone.pretrained=false", *setting.backbone, f"dataset.root={root}",
            "dataset.val_fraction=0", "dataset.select_split=test", "trainer.epochs=2",
            f"trainer.batch_size={setting.batch}", f"trainer.eval_batch_size={setting.batch}",
            f"trainer.num_workers={setting.train_workers}", "trainer.drop_last=true", "logger=none",
            "trainer.progress=false", "trainer.log_images=0", f"trainer.device={setting.device}",
            *parse_variant(variant).overrides()]


def train_one(setting: Setting, root: Path, work: Path, name: str) -> dict:
    """``python run.py <overrides>`` in this process: 2 epochs, then every number must be finite."""
    from okd.app import run
    from okd.bench import compose
    from okd.results import as_summary

    method, variant = name.split("/")
    overrides = train_overrides(setting, root, method, variant)
    cfg = compose(overrides)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    summary = as_summary(run(cfg, work / "runs" / name.replace("/", "-"), dict(cfg.hydra.runtime.choices), overrides))
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    final = summary.final
    bad = sorted(f"{split}/{k}" for split, row in final.items() for k, v in row.items()
                 if isinstance(v, float) and not math.isfinite(v))
    return {"ok": not bad and set(final) >= {"train", "test"}, "non_finite": bad, "peak_gib": peak,
            "time_s": summary.time_s, "epoch_time_s_mean": summary.epoch_time_s_mean,
            "num_parameters": summary.num_parameters,
            "train_losses": {k: v for k, v in final["train"].items() if k.startswith("loss/")},
            "test_loss": final.get("test", {}).get("loss"), "command": "python run.py " + " ".join(overrides)}


def internal_train(setting: Setting, work: Path, part: Part) -> None:
    root = write_nyuv2(work / "nyuv2", setting.train_files, setting.test_files, setting.size)
    part.data["data"] = {"root": str(root), "train_files": setting.train_files, "test_files": setting.test_files,
                         "size": setting.size, "steps_per_epoch": setting.train_files // setting.batch}
    part.run_units(part.data["planned"], lambda name: train_one(setting, root, work, name))


TRAIN_UNITS = [f"{m}/{v}" for v in ("32", "bf16+cl") for m in TRAIN_METHODS]


# --------------------------------------------------------------------------------------------------
# step 3: host synchronisations of the steady-state training loop (internal)
# --------------------------------------------------------------------------------------------------
def designed_kind(frames: Sequence[tuple[str, str]]) -> str | None:
    """Which designed synchronisation the stack ``frames`` ((filename, function), outermost first) made,
    or None. The function that made it is the innermost frame past generator expressions and torch's
    Tensor wrappers (a synchronisation *inside* a designed one's callees, e.g. in the optimizer step
    that GradScaler.step calls, is not designed)."""
    for filename, function in reversed(frames):
        path = filename.replace(os.sep, "/")
        if function.startswith("<") or path.endswith("torch/_tensor.py"):
            continue
        return next((kind for (suffix, name), kind in DESIGNED_SYNCS.items()
                     if function == name and path.endswith(suffix)), None)
    return None


def caller(frames: Sequence[tuple[str, int, str]]) -> str:
    """Where a synchronisation comes from: the innermost frame in the repository, relative to it (else
    the innermost of all)."""
    root = str(ROOT) + os.sep
    inside = [f for f in frames if f[0].startswith(root)]
    filename, line, function = (inside or list(frames) or [("?", 0, "?")])[-1]
    where = filename[len(root):] if inside else filename
    return f"{where.replace(os.sep, '/')}:{line} in {function}"


class SyncRecorder:
    """Collects CUDA synchronisation warnings (``torch.cuda.set_sync_debug_mode("warn")``) with the Python
    stack that caused each; other warnings are counted apart."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.designed: Counter[str] = Counter()
        self.undesigned: Counter[str] = Counter()
        self.other = 0

    def __enter__(self) -> "SyncRecorder":
        self._catch = warnings.catch_warnings()
        self._catch.__enter__()
        warnings.simplefilter("always")
        warnings.showwarning = self._show
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("warn")
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            torch.cuda.set_sync_debug_mode("default")
        self._catch.__exit__(*exc)

    def _show(self, message, category, filename, lineno, file=None, line=None) -> None:
        if SYNC_MESSAGE not in str(message):
            self.other += 1
            return
        # the stack of whatever issued the warning, without the warning machinery's frames and ours
        frames = [(f.filename, f.lineno, f.name) for f in traceback.extract_stack()
                  if f.filename not in (warnings.__file__, __file__)]
        kind = designed_kind([(f[0], f[2]) for f in frames])
        if kind is None:
            self.undesigned[caller(frames)] += 1
        else:
            self.designed[kind] += 1


def sync_overrides(setting: Setting, method: str, variant: str) -> list[str]:
    from okd.bench import parse_variant

    h, w = setting.sync_size
    kd = ["kd=okd", "weighting=otw"] if method == "okd" else [f"weighting={method}"]
    return ["backbone=resnet50", "backbone.pretrained=false", *setting.backbone, f"dataset.height={h}",
            f"dataset.width={w}", f"dataset.train_size={setting.batch * setting.sync_steps}", "dataset.val_size=1",
            "dataset.test_size=1", f"trainer.batch_size={setting.batch}", f"trainer.device={setting.device}",
            f"trainer.log_every_n_steps={max(1, setting.sync_steps // 2)}", "trainer.progress=false", "logger=none",
            *kd, *parse_variant(variant).overrides()]


def sync_one(setting: Setting, work: Path, name: str) -> dict:
    """One warm-up epoch (cuDNN autotuning, lazily built modules), then one epoch under the recorder."""
    from okd.bench import build_framework

    method, variant = name.split("/")
    fw = build_framework(sync_overrides(setting, method, variant), work / "syncs" / name.replace("/", "-"))
    trainer = fw.trainer
    trainer._train_epoch(0)
    cuda = fw.device.type == "cuda"
    with SyncRecorder(cuda) as rec:  # (no explicit synchronize inside: torch would report it too)
        trainer._train_epoch(1)
    steps = len(trainer.train_loader)
    undesigned = [{"where": k, "count": n, "per_step": round(n / steps, 2)} for k, n in rec.undesigned.most_common()]
    return {"ok": not undesigned, "steps": steps, "detected": cuda, "designed": dict(rec.designed),
            "undesigned": undesigned, "other_warnings": rec.other,
            "log_every_n_steps": trainer.log_every_n_steps}


def internal_syncs(setting: Setting, work: Path, part: Part) -> None:
    part.data["cuda"] = torch.cuda.is_available()
    part.run_units(part.data["planned"], lambda name: sync_one(setting, work, name))


SYNC_UNITS = [f"{m}/{v}" for m, v in SYNC_CONFIGS]


# --------------------------------------------------------------------------------------------------
# step 4: okd.bench, one variant per process
# --------------------------------------------------------------------------------------------------
def bench_file(variant: str) -> str:
    return f"bench_{variant.replace('+', '-')}.json"  # '+' is not a portable file-name character


def step_bench(ctx: Context, timeout: float) -> dict:
    end = time.monotonic() + timeout
    variants: dict[str, dict] = {}
    failed, not_run = [], []
    for variant in ctx.setting.variants:
        left = end - time.monotonic()
        if left < MIN_STEP_S:
            not_run.append(variant)
            continue
        path = ctx.out / bench_file(variant)
        cmd = [sys.executable, "-m", "okd.bench", *ctx.setting.bench, "--methods", BENCH_METHODS,
               "--variants", variant, "--json", str(path)]
        done = run_command(ctx, cmd, left)
        result = read_json(path) if done.rc == 0 else None
        if result is None:
            failed.append(f"{variant} ({'stopped by the budget' if done.rc is None else f'exit {done.rc}'})")
        else:
            variants[variant] = result
    status = "pass" if not failed and not not_run else "timeout" if any("budget" in f for f in failed) else "fail"
    summary = f"variants timed: {', '.join(variants) or 'none'}"
    if failed:
        summary += "; failed: " + ", ".join(failed)
    return {"status": status, "summary": summary, "detail": {"variants": variants, "methods": BENCH_METHODS},
            "not_run": not_run}


def bench_ms(ctx: Context, variant: str, part: str, config: str) -> float | None:
    result = ctx.results.get("bench", {}).get("detail", {}).get("variants", {}).get(variant)
    if not result:
        return None
    rows = result["variants"][0]["rows"]
    return next((r["ms"] for r in rows if r["part"] == part and r["config"] == config), None)


# --------------------------------------------------------------------------------------------------
# step 5: the loader against what the model consumes
# --------------------------------------------------------------------------------------------------
def internal_loader(setting: Setting, work: Path, part: Part) -> None:
    from okd.data.bench import loader_throughput
    from okd.data.nyuv2 import build as build_nyuv2

    root = write_nyuv2(work / "nyuv2-loader", setting.loader_files, 1, setting.size)
    bundle = build_nyuv2(root, val_fraction=0.0, select_split="test")
    pin = torch.cuda.is_available()  # as the trainer's loaders on CUDA

    def measure(name: str) -> dict:
        rate = loader_throughput(bundle.train, setting.batch, setting.loader_workers, epochs=3, pin_memory=pin)
        return {"ok": rate > 0, "samples_per_s": rate, "workers": setting.loader_workers, "batch": setting.batch,
                "files": setting.loader_files, "pin_memory": pin, "cpus": os.cpu_count()}

    part.run_units(part.data["planned"], measure)


def step_loader(ctx: Context, timeout: float) -> dict:
    result = internal_step(ctx, "loader", timeout)
    units = result["detail"].get("units", [])
    rate = units[0].get("samples_per_s") if units and units[0].get("ok") else None
    need = consumption(ctx)
    result["detail"]["consumption"] = need
    if rate is not None:
        result["summary"] = f"{rate:.0f} samples/s with {units[0]['workers']} workers"
    return result


def consumption(ctx: Context) -> dict[str, float]:
    """Samples/s the timed training steps consume (batch / step time), by configuration."""
    batch = ctx.setting.batch
    out = {}
    for variant in ctx.setting.variants:
        for part, config in (("train", "ew"), ("okd", "okd")):
            ms = bench_ms(ctx, variant, part, config)
            if ms:
                out[f"{config} {variant}"] = batch / (ms / 1000)
    return out


# --------------------------------------------------------------------------------------------------
# the steps, the targets, the report
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Step:
    name: str
    title: str
    budget_s: float
    run: Callable[[Context, float], dict]


STEPS = (
    Step("tests", "CUDA-marked tests", 80, step_tests),
    Step("train", "2 epochs at the paper's size: EW, MGDA, OKD x fp32, bf16+cl",
         120, lambda ctx, t: internal_step(ctx, "train", t)),
    Step("syncs", "host synchronisations of the steady-state training loop",
         60, lambda ctx, t: internal_step(ctx, "syncs", t)),
    Step("bench", "okd.bench --preset gpu (EW, DWA, GradNorm, MGDA, OKD, eval)", 160, step_bench),
    Step("loader", "DataLoader samples/s vs the training step's consumption", 25, step_loader),
)
INTERNAL = {"train": (internal_train, TRAIN_UNITS), "syncs": (internal_syncs, SYNC_UNITS),
            "loader": (internal_loader, ["loader"])}


def step_timeout(step: Step, left: float, later: float) -> float:
    """A step's own budget, plus what earlier steps saved beyond the budgets of the later ones."""
    return min(left, max(step.budget_s, left - later))


def run_step(ctx: Context, step: Step, later: float) -> dict:
    """Run one selected step within its time (``later``: the budgets of the selected steps after it)."""
    base = {"name": step.name, "title": step.title, "budget_s": step.budget_s}
    left = ctx.left() - RESERVE_S
    if left < MIN_STEP_S:
        return {**base, "status": "not run", "summary": f"out of time ({max(left, 0):.0f} s of the budget left)",
                "elapsed_s": 0.0}
    timeout = step_timeout(step, left, later)
    print(f"okd.gpu_check: {step.name}: {step.title} (up to {timeout:.0f} s)", flush=True)
    start = time.monotonic()
    try:
        result = step.run(ctx, timeout)
    except Exception as err:  # noqa: BLE001 -- the check reports a broken step and goes on
        result = {"status": "fail", "summary": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
    result = {**base, **result, "elapsed_s": round(time.monotonic() - start, 1)}
    print(f"okd.gpu_check: {step.name}: {result['status']} in {result['elapsed_s']:.0f} s: {result['summary']}",
          flush=True)
    return result


def target(name: str, value: float | None, limit: float, higher: bool, unit: str = "x", source: str = "") -> dict:
    ok = None if value is None else (value >= limit if higher else value <= limit)
    return {"target": name, "value": value, "limit": f"{'>=' if higher else '<='} {limit:g}{unit}", "ok": ok,
            "unit": unit, "source": source}


def targets(ctx: Context) -> list[dict]:
    """The issue's targets from this run's figures (None where the figure was not measured)."""
    out = []
    fp32, fast = bench_ms(ctx, "32", "train", "ew"), bench_ms(ctx, "bf16+cl", "train", "ew")
    out.append(target("bf16+channels_last speed-up of the EW step over fp32", fp32 / fast if fp32 and fast else None,
                      SPEEDUP_TARGET, higher=True, source="bench: train/ew, 32 vs bf16+cl"))
    for variant, result in ctx.results.get("bench", {}).get("detail", {}).get("variants", {}).items():
        for check in result["variants"][0]["checks"]:
            against = {"bare": "the bare loop", "ew": "EW", "components": "the sum of its bare components"}
            out.append(target(f"{check['config']} ({variant}) vs {against[check['against']]}", check["ratio"],
                              check["limit"], higher=False, source="okd.bench"))
    loader = ctx.results.get("loader", {})
    units = loader.get("detail", {}).get("units", [])
    rate = units[0].get("samples_per_s") if units else None
    need = loader.get("detail", {}).get("consumption", {}).get("ew bf16+cl")
    out.append(target("loader samples/s / fastest EW step's samples/s (bf16+cl)",
                      rate / need if rate and need else None, 1.0, higher=True, source="loader vs bench"))
    out.append(okd_memory_target(ctx))
    return out


def okd_memory_target(ctx: Context) -> dict:
    """OKD's peak: the whole 2-epoch run (teachers, adaptors, optimizers, evaluation), else okd.bench's
    figure for its OKD configuration (what it allocates above the configurations built before it)."""
    name = f"OKD peak GPU memory at batch {ctx.setting.batch} (student, 3 teachers, adaptors), GB"
    peaks = [u["peak_gib"] for u in ctx.results.get("train", {}).get("detail", {}).get("units", [])
             if u["name"].startswith("okd/") and u.get("peak_gib") is not None]
    source = "train: torch.cuda.max_memory_allocated over the run"
    if not peaks:
        mib = [r["peak_mib"] for v in ctx.results.get("bench", {}).get("detail", {}).get("variants", {}).values()
               for r in v["variants"][0]["rows"] if r["config"] == "okd" and r.get("peak_mib") is not None]
        peaks, source = [m / 1024 for m in mib], "okd.bench: peak of the OKD configuration"
    return target(name, max(peaks) * 2**30 / 1e9 if peaks else None, OKD_MEMORY_LIMIT_GB, higher=False,
                  unit=" GB", source=source)


def environment(dry_run: bool) -> dict:
    env = {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "dry_run": dry_run, "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(device=props.name, memory_gib=round(props.total_memory / 2**30, 1),
                   capability=f"sm_{props.major}{props.minor}", cuda_version=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version(), tf32_convolutions=torch.backends.cudnn.allow_tf32,
                   tf32_matmul=torch.backends.cuda.matmul.allow_tf32)
    else:
        env["device"] = f"CPU ({platform.processor() or platform.machine()})"
    return env


# --------------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------------
def _num(value: float | None, fmt: str = ".2f") -> str:
    return "-" if value is None else format(value, fmt)


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [f"# okd GPU check: {'PASS' if report['ok'] else 'FAIL'}", ""]
    if env["dry_run"]:
        lines += ["**Dry run**: CPU, toy sizes (tiny ResNet, 32x32, batch 2, 1 step per epoch): the plumbing "
                  "only, no figure here is a measurement.", ""]
    gpu = (f"{env['device']} ({env['memory_gib']} GiB, {env['capability']}), CUDA {env['cuda_version']}, "
           f"cuDNN {env['cudnn']}, TF32 convolutions {env['tf32_convolutions']}" if env["cuda"] else env["device"])
    lines += [f"{gpu}; torch {env['torch']}, Python {env['python']}, {env['cpus']} CPUs; {env['date']}; "
              f"budget {report['budget_s']:.0f} s, elapsed {report['elapsed_s']:.0f} s.", "",
              "| step | status | elapsed (s) | budget (s) | result |", "|---|---|---|---|---|"]
    for s in report["steps"]:
        lines.append(f"| {s['name']}: {s['title']} | {s['status']} | {s['elapsed_s']:.0f} | {s['budget_s']:.0f} "
                     f"| {s['summary']} |")
    lines += ["", "## Targets", "", "| target | value | limit | |", "|---|---|---|---|"]
    for t in report["targets"]:
        verdict = "not measured" if t["ok"] is None else "(dry run)" if env["dry_run"] else "ok" if t["ok"] else "MISSED"
        value = "-" if t["value"] is None else f"{t['value']:.2f}{t['unit']}"
        lines.append(f"| {t['target']} | {value} | {t['limit']} | {verdict} |")
    steps = {s["name"]: s for s in report["steps"]}
    for name, section in SECTIONS.items():
        if steps.get(name, {}).get("detail"):
            lines += ["", *section(steps[name])]
    not_run = [f"{s['name']}: {s['summary']}" for s in report["steps"] if s["status"] == "not run"]
    not_run += [f"{s['name']}: {', '.join(s['not_run'])}" for s in report["steps"] if s.get("not_run")]
    if not_run:
        lines += ["", "## Not run", "", *(f"- {n}" for n in not_run)]
    return "\n".join(lines) + "\n"


def _tests_section(step: dict) -> list[str]:
    d = step["detail"]
    lines = ["## CUDA tests", "", f"`pytest -m cuda {CUDA_TESTS}`: {step['summary']}."]
    lines += [f"- {p['outcome']}: `{p['test']}`: {p['message'][:200]}" for p in d.get("problems", [])]
    lines += [f"- skipped because: {r}" for r in d.get("skip_reasons", [])[:1]]
    return lines


def _train_section(step: dict) -> list[str]:
    d = step["detail"]
    data = d.get("data", {})
    lines = ["## Training: 2 epochs", "",
             f"Synthetic NYUv2 layout, {data.get('train_files')} training + {data.get('test_files')} test files "
             f"of {'x'.join(map(str, data.get('size', [])))}, steps per epoch: {data.get('steps_per_epoch')}.", "",
             "| run | ok | time (s) | epoch (s) | peak GiB | train losses | test loss |", "|---|---|---|---|---|---|---|"]
    for u in d.get("units", []):
        losses = ", ".join(f"{k[5:]} {v:.3g}" for k, v in (u.get("train_losses") or {}).items())
        note = u.get("error") or (f"non-finite: {', '.join(u['non_finite'])}" if u.get("non_finite") else "")
        lines.append(f"| {u['name']} | {'yes' if u.get('ok') else 'NO'} | {_num(u.get('time_s'), '.1f')} | "
                     f"{_num(u.get('epoch_time_s_mean'), '.1f')} | {_num(u.get('peak_gib'))} | {losses or note} | "
                     f"{_num(u.get('test_loss'), '.3g')} |")
    return lines


def _syncs_section(step: dict) -> list[str]:
    d = step["detail"]
    lines = ["## Host synchronisations (one steady-state epoch)", ""]
    if not d.get("cuda"):
        lines += ["No CUDA: synchronisations cannot be detected on the CPU; the same loop ran.", ""]
    lines += ["| config | steps | designed | not designed |", "|---|---|---|---|"]
    for u in d.get("units", []):
        designed = "; ".join(f"{k}: {n}" for k, n in (u.get("designed") or {}).items()) or "-"
        other = "; ".join(f"`{x['where']}` x{x['count']} ({x['per_step']}/step)" for x in u.get("undesigned", []))
        lines.append(f"| {u['name']} | {u.get('steps', '-')} | {designed} | {other or u.get('error') or 'none'} |")
    return lines


def _bench_section(step: dict) -> list[str]:
    from okd.bench import format_side_by_side, format_variant

    variants = step["detail"].get("variants", {})
    lines = ["## okd.bench", ""]
    for variant, result in variants.items():
        lines += [f"`{result['setup']['command']}`", format_variant(result["variants"][0]), ""]
    if len(variants) > 1:
        lines.append(format_side_by_side([r["variants"][0] for r in variants.values()]))
    return lines


def _loader_section(step: dict) -> list[str]:
    d = step["detail"]
    units = d.get("units", [])
    lines = ["## Loader", ""]
    if units and units[0].get("ok"):
        u = units[0]
        lines.append(f"{u['samples_per_s']:.0f} samples/s: {u['workers']} workers, batch {u['batch']}, pin_memory "
                     f"{u['pin_memory']}, {u['files']} files, {u['cpus']} CPUs.")
    need = d.get("consumption", {})
    lines += [f"- the {k} training step consumes {v:.0f} samples/s" for k, v in need.items()]
    return lines


SECTIONS = {"tests": _tests_section, "train": _train_section, "syncs": _syncs_section, "bench": _bench_section,
            "loader": _loader_section}


# --------------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m okd.gpu_check", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("--out", type=Path, default=None, help="result folder (default: $OUT, else outputs/gpu_check)")
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S, help="seconds for the whole check")
    parser.add_argument("--only", default=None, help=f"comma-separated steps of {[s.name for s in STEPS]}")
    parser.add_argument("--dry-run", action="store_true", help="the same steps on the CPU at toy sizes")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    for name in ("--internal", "--part", "--internal-deadline"):
        parser.add_argument(name, default=None, help=argparse.SUPPRESS)
    return parser


def preflight(args: argparse.Namespace) -> str | None:
    """Why the check cannot start (one line), or None."""
    if not args.dry_run and not torch.cuda.is_available():
        return (f"okd.gpu_check: no CUDA device (torch {torch.__version__}, torch.cuda.is_available() is False): "
                f"nothing was checked; run it on a GPU machine, or with --dry-run to rehearse on the CPU")
    missing = [m for m in ("hydra", "omegaconf") if importlib.util.find_spec(m) is None]
    if missing:
        return (f"okd.gpu_check: {' and '.join(missing)} not importable: install the wheels carried in .whl "
                f"(pip install --no-index --no-deps --target /tmp/site .whl/*.whl; export PYTHONPATH=/tmp/site)")
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.internal:
        return internal_main(args)
    problem = preflight(args)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    only = None if args.only is None else {s.strip() for s in args.only.split(",") if s.strip()}
    unknown = sorted((only or set()) - {s.name for s in STEPS})
    if unknown:
        print(f"okd.gpu_check: --only {unknown}: not steps of {[s.name for s in STEPS]}", file=sys.stderr)
        return 2
    out = (args.out or Path(os.environ.get("OUT") or ROOT / "outputs" / "gpu_check")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="okd-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        report = check(args, only, out, work.resolve())
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"okd.gpu_check: {'PASS' if report['ok'] else 'FAIL'}: {out / 'gpu_check.md'}", flush=True)
    return 0 if report["ok"] else 1


def check(args: argparse.Namespace, only: set[str] | None, out: Path, work: Path) -> dict:
    start = time.monotonic()
    log = out / "gpu_check.log"
    log.write_text(f"okd.gpu_check {' '.join(sys.argv[1:])}\n")
    ctx = Context(args.dry_run, out, work, log, deadline=start + args.budget)
    report: dict[str, Any] = {"tool": "okd.gpu_check", "environment": environment(args.dry_run),
                              "budget_s": args.budget, "steps": []}
    selected = [s for s in STEPS if only is None or s.name in only]
    for i, step in enumerate(selected):
        result = run_step(ctx, step, later=sum(s.budget_s for s in selected[i + 1:]))
        ctx.results[step.name] = result
        report["steps"].append(result)
    report["targets"] = targets(ctx)
    report["elapsed_s"] = round(time.monotonic() - start, 1)
    report["ok"] = all(s["status"] == "pass" for s in report["steps"])
    report["not_selected"] = [s.name for s in STEPS if s not in selected]
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    (out / "gpu_check.md").write_text(markdown(report))
    return report


def internal_main(args: argparse.Namespace) -> int:
    """One internal step in this process (started by :func:`internal_step`)."""
    work, setting = Path(args.work), setting_of(args.dry_run)
    if args.dry_run:
        torch.set_num_threads(1)  # toy tensors: more threads only contend on a small CPU
    run, planned = INTERNAL[args.internal]
    part = Part(Path(args.part), planned, float(args.internal_deadline))
    run(setting, work, part)
    return 0 if all(u.get("ok") for u in part.data["units"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
