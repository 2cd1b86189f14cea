"""Benchmark harness: steady-state cost of the framework against bare PyTorch loops of the same work.

    python -m okd.bench                                   # SegNet width 0.25, 96x128, batch 8: everything
    python -m okd.bench --methods ew,dwa,gradnorm --no-okd --no-eval --steps 30 --json bench.json
    python -m okd.bench --precision bf16 --channels-last --device cuda
    python -m okd.bench --variants 32,bf16,bf16+cl --device cuda      # precisions side by side
    python -m okd.bench --preset gpu                      # = --backbone resnet50 --width 1.0 --size 288x384
                                                          #   --batch 8 --device cuda --variants 32,bf16,bf16+cl
                                                          #   --steps 5 --rounds 3

Three parts, each a framework configuration built from ``conf/`` exactly as ``run.py`` builds it,
timed against its floor: the same networks and losses in a plain PyTorch loop, no framework code.
Everything runs on one fixed batch already on the device (data loading is not part of a step).

* training (``--methods``: comma-separated weightings, ``all`` (default) or ``none``):
  ``bare`` = forward, sum of task losses, backward, ``optimizer.step()``; ``<method>`` =
  ``Trainer.training_step`` with ``weighting=<method>``. ``ew`` is always timed: it is a reference.
* OKD (``--okd``/``--no-okd``, default on): ``Trainer.training_step`` with ``kd=okd`` (weighting
  ``--okd-weighting``, default otw: the paper) against the sum of its bare components, the student
  step and each of the K single-task teacher steps, each timed on its own in a plain loop.
* evaluation (``--eval``/``--no-eval``, default on): ``Trainer.evaluate`` (inference_mode forward,
  task losses and metric accumulation on the device, one host sync at the end) over
  ``--eval-batches`` batches against a bare loop doing the same forward, losses and metric updates
  directly; reported per batch.

Precision, memory layout and compilation are passed to the framework as ``trainer.precision``,
``trainer.channels_last`` and ``trainer.compile`` and mirrored in every bare loop: ``torch.autocast``
with the same dtype (plus a ``torch.amp.GradScaler`` for precision 16), a channels_last model and
batch, ``torch.compile(dynamic=False)`` of the student (the trainer compiles the student, for
training and evaluation, not OKD's teachers; their bare loops stay eager too). One such set is a
*variant*, written ``<precision>[+cl][+compile]`` (precision 32, bf16 or 16): either
``--precision/--channels-last/--compile`` (one variant) or ``--variants 32,bf16,bf16+cl`` (several,
timed one after the other and printed side by side; ratios are always between configurations of
the same variant). ``--override`` adds Hydra overrides to every framework configuration (the bare
loops copy the resulting networks and optimizers); ``kd.*`` ones go to the OKD configuration only.

Timing: every configuration of a variant is timed in ``--rounds`` rounds interleaved with the
others (machine-load drifts hit all alike); a round runs ``--steps`` steps (evaluation: one call
over ``--eval-batches`` batches); the reported time is the median over rounds. Peak memory (CUDA
only; ``-`` on the CPU, which has no allocator statistics) is ``torch.cuda.max_memory_allocated``
over two steps after a reset, minus what the configurations built before it hold: the
configuration's own weights, optimizer state, gradients and activations.

The ``target`` column shows the issue's targets (#10) with ok/over: EW <= 1.05x the bare loop;
loss-based weightings (LossWeighting subclasses whose step is just ``sum_k w_k L_k``: ew, dwa, uw,
rlw, gls, otw) <= 1.05x EW; GradNorm <= 1.5x EW; OKD <= 1.10x the sum of its bare components.
FAMO (one extra forward pass per step for its post-step losses, Liu et al. 2023, Alg. 1) and the
gradient-based methods (K backward passes by design) have no target. These are benchmarks, not
tests: nothing asserts on times.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from okd.tasks import Task

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"

#: ``--precision`` spellings -> the trainer's value (``trainer.precision``).
PRECISIONS = {"32": "32", "fp32": "32", "bf16": "bf16", "16": "16", "fp16": "16"}
AUTOCAST_DTYPES = {"32": None, "bf16": torch.bfloat16, "16": torch.float16}
#: Targets of issue #10 (ratios measured in one run).
EW_LIMIT, LOSS_LIMIT, GRADNORM_LIMIT, OKD_LIMIT = 1.05, 1.05, 1.5, 1.10
#: ``--preset gpu``: the GPU comparison table of BENCHMARKS.md (the paper's CNN setting).
PRESETS = {"gpu": {"backbone": "resnet50", "width": 1.0, "size": "288x384", "batch": 8, "device": "cuda",
                   "variants": "32,bf16,bf16+cl", "steps": 5, "rounds": 3}}
#: Trainer options a variant sets; ``--override`` may not set them (the bare loops would not follow).
VARIANT_KEYS = ("trainer.precision", "trainer.channels_last", "trainer.compile")


# --------------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------------
def compose(overrides: list[str]):
    from okd.config import compose

    return compose(overrides)


def weighting_options() -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / "weighting").glob("*.yaml"))


@dataclass(frozen=True)
class Variant:
    """Precision, memory layout and compilation of one timed set of configurations."""

    precision: str = "32"
    channels_last: bool = False
    compile: bool = False

    @property
    def name(self) -> str:
        return "+".join([self.precision] + ["cl"] * self.channels_last + ["compile"] * self.compile)

    def overrides(self) -> list[str]:
        out = [f"trainer.precision={self.precision}", f"trainer.channels_last={str(self.channels_last).lower()}"]
        # only when asked, so that the other variants need nothing of the option
        return out + ["trainer.compile=true"] * self.compile

    def autocast(self, device: torch.device):
        dtype = AUTOCAST_DTYPES[self.precision]
        return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)

    def scaler(self, device: torch.device) -> torch.amp.GradScaler | None:
        """fp16 needs loss scaling (bf16 has fp32's exponent range and does not)."""
        return torch.amp.GradScaler(device.type) if self.precision == "16" else None

    def prepare(self, model: nn.Module, compiled: bool = True) -> nn.Module:
        """What the trainer does to its student, for a bare loop: NHWC weights, ``torch.compile`` with
        static shapes (the trainer compiles the student only: OKD's teachers pass ``compiled=False``)."""
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return torch.compile(model, dynamic=False) if self.compile and compiled else model


def parse_variant(text: str) -> Variant:
    """``<precision>[+cl][+compile]``, e.g. ``32``, ``bf16+cl``, ``16+cl+compile``."""
    precision, *flags = text.strip().lower().split("+")
    if precision not in PRECISIONS:
        raise ValueError(f"variant {text!r}: precision {precision!r} is not one of 32, bf16, 16 "
                         f"(expected <precision>[+cl][+compile], e.g. bf16+cl)")
    unknown = [f for f in flags if f not in ("cl", "compile")]
    if unknown or len(set(flags)) != len(flags):
        raise ValueError(f"variant {text!r}: flags must be cl and/or compile, each at most once (got {flags})")
    return Variant(PRECISIONS[precision], "cl" in flags, "compile" in flags)


@dataclass(frozen=True)
class Target:
    """An issue target: this configuration's time / ``against``'s time <= ``limit``."""

    against: str
    limit: float


def weighting_class(method: str) -> type:
    from hydra.utils import get_class
    from omegaconf import OmegaConf

    return get_class(OmegaConf.load(CONF_DIR / "weighting" / f"{method}.yaml")["_target_"])


def target_for(method: str) -> tuple[Target | None, str]:
    """The issue's target for a weighting, and why when there is none."""
    from okd.weighting.base import LossWeighting, Weighting
    from okd.weighting.gradnorm import GradNorm

    if method == "ew":
        return Target("bare", EW_LIMIT), ""
    cls = weighting_class(method)
    if issubclass(cls, GradNorm):
        return Target("ew", GRADNORM_LIMIT), ""
    if issubclass(cls, LossWeighting):
        if cls.after_step is Weighting.after_step:
            return Target("ew", LOSS_LIMIT), ""
        return None, "one extra forward per step: post-step losses"
    return None, "gradient-based: K backward passes"


# --------------------------------------------------------------------------------------------------
# what is timed
# --------------------------------------------------------------------------------------------------
@dataclass
class Framework:
    """A trainer set up from the config, and one batch of its training split on its device."""

    trainer: Any
    ctx: Any
    images: Tensor
    targets: dict[str, Tensor]

    @property
    def device(self) -> torch.device:
        return self.trainer.device


def build_framework(overrides: list[str], run_dir: Path) -> Framework:
    from okd.app import build

    trainer, ctx = build(compose(overrides), run_dir)
    trainer.setup(ctx)
    images, targets = trainer.to_device(next(iter(trainer.train_loader)))
    ctx.model.train()
    ctx.distiller.train()
    return Framework(trainer, ctx, images, targets)


def clone(model: nn.Module, build: Callable[[], nn.Module], device: torch.device) -> nn.Module:
    """A fresh instance with the same weights: free of anything the trainer wrapped around ``model``."""
    copy = build().to(device)
    copy.load_state_dict(model.state_dict())
    return copy


def plain_step(model: nn.Module, loss_fn: Callable[[Any], Tensor], images: Tensor,
               optimizer: torch.optim.Optimizer, variant: Variant, device: torch.device) -> Callable[[], None]:
    """The floor of one training step: forward, loss, backward, optimizer step."""
    scaler = variant.scaler(device)

    def step() -> None:
        with variant.autocast(device):
            loss = loss_fn(model(images))
        optimizer.zero_grad(set_to_none=True)
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()

    return step


def bare_student_step(fw: Framework, variant: Variant, with_afd: bool = False) -> Callable[[], None]:
    """The same student and task losses as ``fw``, in a plain loop.

    ``with_afd``: the OKD student's own step -- its task losses plus the AFD loss (adaptors, gates,
    feature distances: the method's arithmetic, not framework code) against the teachers' features
    of this batch. Those are computed once here: the teachers' forward passes are timed in their own
    steps.
    """
    ctx, device = fw.ctx, fw.device
    model = clone(ctx.model, lambda: ctx.build_model(ctx.tasks), device).train()
    params = list(model.parameters())
    tasks, targets = ctx.tasks, fw.targets
    afd, features = None, None
    if with_afd:
        distiller = ctx.distiller
        afd = copy.deepcopy(distiller.afd)
        params += list(afd.parameters())
        with torch.no_grad(), variant.autocast(device):
            outputs = {t.name: distiller.teachers[t.name](fw.images) for t in tasks}
            features = {name: {k: out.features[k] for k in distiller._teacher_keys[name]}
                        for name, out in outputs.items()}
    optimizer = fw.trainer.optimizer_factory(params)

    def loss(out) -> Tensor:
        total = sum(t.loss(out.predictions[t.name], targets[t.name]).float() for t in tasks)
        return total if afd is None else total + afd(out.features, features).total

    return plain_step(variant.prepare(model), loss, fw.images, optimizer, variant, device)


def bare_teacher_step(fw: Framework, task: Task, variant: Variant) -> Callable[[], None]:
    """One OKD teacher (single-task network, its own loss and optimizer) in a plain loop."""
    distiller, device = fw.ctx.distiller, fw.device
    builder = distiller.teacher_backbone or (lambda tasks: fw.ctx.build_model(tasks))
    model = clone(distiller.teachers[task.name], lambda: builder(tasks=[task]), device).train()
    optimizer = distiller.teacher_optimizer_factory(model.parameters())
    target = fw.targets[task.name]

    def loss(out) -> Tensor:
        return task.loss(out.predictions[task.name], target).float()

    return plain_step(variant.prepare(model, compiled=False), loss, fw.images, optimizer, variant, device)


def eval_batches(fw: Framework, n: int) -> list[dict[str, Tensor]]:
    """``n`` references to the device-resident batch (the evaluation loop's ``.to`` is then a no-op)."""
    return [{"image": fw.images, **fw.targets}] * n


def framework_eval(fw: Framework, n: int) -> Callable[[], None]:
    batches = eval_batches(fw, n)
    return lambda: fw.trainer.evaluate(batches, "bench")


def bare_eval(fw: Framework, n: int, variant: Variant) -> Callable[[], None]:
    """The floor of evaluation: forward under inference_mode, the same losses and metric updates."""
    ctx, device = fw.ctx, fw.device
    model = variant.prepare(clone(ctx.model, lambda: ctx.build_model(ctx.tasks), device).eval())
    tasks, images, targets = ctx.tasks, fw.images, fw.targets

    @torch.inference_mode()
    def run() -> None:
        metrics = {t.name: t.metric() for t in tasks}
        loss_sum = torch.zeros(len(tasks), device=device, dtype=torch.float64)
        for _ in range(n):
            with variant.autocast(device):
                out = model(images)
            for i, t in enumerate(tasks):
                pred = out.predictions[t.name].float()
                loss_sum[i] += t.loss(pred, targets[t.name]).double() * images.shape[0]
                metrics[t.name].update(pred, targets[t.name])
        for m in metrics.values():
            m.compute()
        loss_sum.tolist()  # the host reads the split's losses, as Trainer.evaluate does

    return run


# --------------------------------------------------------------------------------------------------
# timing and memory
# --------------------------------------------------------------------------------------------------
@dataclass
class Entry:
    """One timed configuration: ``fn`` runs ``per_call`` units (steps or batches)."""

    part: str
    config: str
    fn: Callable[[], None]
    repeat: int                 # calls per timing round
    per_call: int = 1
    peak_mib: float | None = None
    times: list[float] = field(default_factory=list)  # seconds per unit, one per round

    @property
    def key(self) -> str:
        return f"{self.part}/{self.config}"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _allocated(device: torch.device) -> int:
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else 0


def peak_mib(fn: Callable[[], None], device: torch.device, base: int) -> float | None:
    """Peak allocated CUDA memory of two calls above ``base`` bytes, in MiB; None on the CPU."""
    if device.type != "cuda":
        return None
    _sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    for _ in range(2):
        fn()
    _sync(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


class Bench:
    """Builds the entries of one variant in order, warming each up and measuring its memory."""

    def __init__(self, device: torch.device, warmup: int, repeat: int) -> None:
        self.device, self.warmup, self.repeat = device, warmup, repeat
        self.entries: list[Entry] = []

    def add(self, part: str, config: str, make: Callable[[], Callable[[], None]], per_call: int = 1) -> Entry:
        """Build with ``make`` (what it allocates counts as this configuration's memory), warm up."""
        base = _allocated(self.device)
        fn = make()
        for _ in range(self.warmup):
            fn()
        entry = Entry(part, config, fn, repeat=self.repeat if per_call == 1 else 1, per_call=per_call,
                      peak_mib=peak_mib(fn, self.device, base))
        self.entries.append(entry)
        return entry

    def time_rounds(self, rounds: int, label: str) -> None:
        for r in range(rounds):
            for e in self.entries:
                _sync(self.device)
                t0 = time.perf_counter()
                for _ in range(e.repeat):
                    e.fn()
                _sync(self.device)
                e.times.append((time.perf_counter() - t0) / (e.repeat * e.per_call))
            print(f"okd.bench {label}: round {r + 1}/{rounds} done", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------
# one variant
# --------------------------------------------------------------------------------------------------
def base_overrides(args: argparse.Namespace, height: int, width: int) -> list[str]:
    return [
        f"backbone={args.backbone}", f"backbone.width={args.width}", "logger=none",
        f"dataset.height={height}", f"dataset.width={width}", f"dataset.train_size={args.batch}",
        "dataset.val_size=1", "dataset.test_size=1", f"trainer.batch_size={args.batch}",
        f"trainer.device={args.device}", "trainer.progress=false",
        *(o for o in args.override if not _key(o).startswith("kd.")),
    ]


def okd_overrides(args: argparse.Namespace) -> list[str]:
    """The OKD configuration's own: ``kd.*`` overrides apply to it alone (the others have kd=none)."""
    return ["kd=okd", f"weighting={args.okd_weighting}", *(o for o in args.override if _key(o).startswith("kd."))]


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def check_variant(base: list[str], variant: Variant, okd: list[str]) -> None:
    """Fail before any timing when the framework rejects a variant (e.g. an option it lacks) or an
    override (composed with the OKD configuration's own, ``okd``, when that part is timed)."""
    from hydra.utils import instantiate

    try:
        instantiate(compose([*base, *variant.overrides(), *okd]).trainer, _convert_="all")
    except Exception as err:  # noqa: BLE001 -- Hydra wraps the Trainer's own error; name the variant
        cause = err
        while cause.__cause__ is not None:
            cause = cause.__cause__
        raise SystemExit(f"okd.bench: the framework rejects the configuration of variant {variant.name!r} "
                         f"({' '.join(variant.overrides())}, and any --override): {cause}") from err


def _train_step(fw: Framework) -> Callable[[], None]:
    return lambda: fw.trainer.training_step(fw.images, fw.targets)


def bench_training(bench: Bench, base: list[str], variant: Variant, methods: list[str], tmp: Path,
                   skipped: dict[str, str]) -> None:
    """``bare`` and one ``Trainer.training_step`` per weighting (``methods`` starts with ew)."""
    frameworks: dict[str, Framework] = {}

    def make(method: str) -> Callable[[], None]:
        fw = frameworks[method] = build_framework([*base, *variant.overrides(), f"weighting={method}"],
                                                  tmp / f"train-{method}")
        return _train_step(fw)

    for method in methods:
        try:
            bench.add("train", method, lambda: make(method))
        except ValueError as err:  # e.g. OTW without teachers: refused before training, as by run.py
            if method == "ew":
                raise
            skipped[method] = str(err)
        if method == "ew":
            bench.add("train", "bare", lambda: bare_student_step(frameworks["ew"], variant))


def bench_okd(bench: Bench, base: list[str], variant: Variant, okd: list[str], tmp: Path) -> list[str]:
    """``Trainer.training_step`` with kd=okd and its bare components; returns the components' keys."""
    frameworks: dict[str, Framework] = {}

    def make() -> Callable[[], None]:
        fw = frameworks["okd"] = build_framework([*base, *variant.overrides(), *okd], tmp / "okd")
        return _train_step(fw)

    bench.add("okd", "okd", make)
    fw = frameworks["okd"]
    if fw.ctx.distiller.afd is not None:  # the student's bare step includes the distillation loss
        keys = [bench.add("okd", "bare student + AFD", lambda: bare_student_step(fw, variant, with_afd=True)).key]
    else:
        keys = [bench.add("okd", "bare student", lambda: bare_student_step(fw, variant)).key]
    for task in fw.ctx.tasks:
        keys.append(bench.add("okd", f"bare teacher {task.name}", lambda: bare_teacher_step(fw, task, variant)).key)
    return keys


def bench_eval(bench: Bench, base: list[str], variant: Variant, n: int, tmp: Path) -> None:
    frameworks: dict[str, Framework] = {}

    def make() -> Callable[[], None]:
        fw = frameworks["eval"] = build_framework([*base, *variant.overrides(), "weighting=ew"], tmp / "eval")
        return framework_eval(fw, n)

    bench.add("eval", "evaluate", make, per_call=n)
    bench.add("eval", "bare", lambda: bare_eval(frameworks["eval"], n, variant), per_call=n)


def run_variant(args: argparse.Namespace, base: list[str], variant: Variant, methods: list[str]) -> dict:
    from okd.engine.device import select_device

    bench = Bench(select_device(args.device), args.warmup, args.steps)
    skipped: dict[str, str] = {}
    components: list[str] = []
    with tempfile.TemporaryDirectory(prefix="okd-bench-") as tmp:
        if methods:
            bench_training(bench, base, variant, methods, Path(tmp), skipped)
        if args.okd:
            components = bench_okd(bench, base, variant, okd_overrides(args), Path(tmp))
        if args.eval:
            bench_eval(bench, base, variant, args.eval_batches or args.steps, Path(tmp))
        bench.time_rounds(args.rounds, variant.name)
    result = {"variant": variant.name, "precision": variant.precision, "channels_last": variant.channels_last,
              "compile": variant.compile, "device": str(bench.device),
              **summarize(bench.entries, components, args.okd_weighting), "skipped": skipped}
    del bench
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the next variant starts from an empty device
    return result


# --------------------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------------------
def _row(e: Entry, ms: float, vs: dict[str, float | None], target: Target | None = None, note: str = "",
         unit: str = "step") -> dict:
    row = {"part": e.part, "config": e.config, "ms": ms, "unit": unit,
           "spread_ms": 1000 * (max(e.times) - min(e.times)), "peak_mib": e.peak_mib, "vs": vs,
           "target": None, "note": note}
    if target is not None:
        ratio = vs[target.against]
        row["target"] = {"against": target.against, "limit": target.limit, "ratio": ratio, "ok": ratio <= target.limit}
    return row


def summarize(entries: list[Entry], components: list[str], okd_weighting: str) -> dict:
    """Rows with ratios and targets, and the list of target checks."""
    ms = {e.key: 1000 * statistics.median(e.times) for e in entries}
    entries = sorted(entries, key=lambda e: e.config != "bare")  # floors first (stable: else as built)
    rows: list[dict] = []
    bare, ew = ms.get("train/bare"), ms.get("train/ew")
    for e in (e for e in entries if e.part == "train"):
        target, note = (None, "floor") if e.config == "bare" else target_for(e.config)
        vs = {"bare": ms[e.key] / bare, "ew": ms[e.key] / ew}
        rows.append(_row(e, ms[e.key], vs, target, note))
    floor = sum(ms[k] for k in components) if components else None
    for e in (e for e in entries if e.part == "okd"):
        is_okd = e.config == "okd"
        rows.append(_row(e, ms[e.key], {"components": ms[e.key] / floor}, Target("components", OKD_LIMIT)
                         if is_okd else None, f"weighting {okd_weighting}" if is_okd else "component"))
    if components:
        rows.append({"part": "okd", "config": "sum of components", "ms": floor, "unit": "step", "spread_ms": None,
                     "peak_mib": None, "vs": {"components": 1.0}, "target": None,
                     "note": f"floor: student + {len(components) - 1} teachers"})
    eval_bare = ms.get("eval/bare")
    for e in (e for e in entries if e.part == "eval"):
        rows.append(_row(e, ms[e.key], {"bare": ms[e.key] / eval_bare}, note="floor" if e.config == "bare" else "",
                         unit="batch"))
    checks = [{"part": r["part"], "config": r["config"], **r["target"]} for r in rows if r["target"]]
    return {"rows": rows, "checks": checks}


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _target_cell(row: dict) -> str:
    t = row["target"]
    if t is None:
        return f"- ({row['note']})" if row["note"] else "-"
    against = {"bare": "bare", "ew": "EW", "components": "components"}[t["against"]]
    return f"vs {against} <= {t['limit']:.2f}x: {'ok' if t['ok'] else 'OVER'}"


PART_TABLES = {
    "train": ("Training step", "step (ms)", ["bare", "ew"], ["vs bare", "vs EW"]),
    "okd": ("OKD step vs its bare components", "step (ms)", ["components"], ["vs components"]),
    "eval": ("Evaluation", "ms/batch", ["bare"], ["vs bare"]),
}


def format_variant(v: dict) -> str:
    lines = []
    for part, (title, unit, refs, heads) in PART_TABLES.items():
        rows = [r for r in v["rows"] if r["part"] == part]
        if not rows:
            continue
        lines += ["", f"{title} (variant {v['variant']}):", "",
                  f"| config | {unit} | {' | '.join(heads)} | target | peak MiB |",
                  "|---|---|" + "---|" * len(heads) + "---|---|"]
        for r in rows:
            ratios = " | ".join(_ratio(r["vs"].get(k)) for k in refs)
            lines.append(f"| {r['config']} | {r['ms']:.1f} | {ratios} | {_target_cell(r)} | {_mib(r['peak_mib'])} |")
    for name, why in v["skipped"].items():
        lines.append(f"\nskipped {name}: {why}")
    checks = v["checks"]
    over = [c for c in checks if not c["ok"]]
    lines.append(f"\ntargets ({v['variant']}): {len(checks) - len(over)} ok, {len(over)} over"
                 + "".join(f"; {c['config']} {c['ratio']:.3f}x > {c['limit']:.2f}x" for c in over))
    return "\n".join(lines)


def format_side_by_side(variants: list[dict]) -> str:
    """Time per unit of every configuration in every variant (speed-up against the first) and memory."""
    names = [v["variant"] for v in variants]
    lines = ["", "Variants side by side (ms per step or batch; in brackets: vs the first variant; peak MiB):", "",
             "| part | config | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    first = {(r["part"], r["config"]): r["ms"] for r in variants[0]["rows"]}
    keys = list(dict.fromkeys((r["part"], r["config"]) for v in variants for r in v["rows"]))
    for key in keys:
        cells = []
        for v in variants:
            row = next((r for r in v["rows"] if (r["part"], r["config"]) == key), None)
            if row is None:
                cells.append("-")
                continue
            cell = f"{row['ms']:.1f}"
            if key in first and v is not variants[0]:
                cell += f" ({row['ms'] / first[key]:.2f}x)"
            if row["peak_mib"] is not None:
                cell += f", {row['peak_mib']:.0f} MiB"
            cells.append(cell)
        lines.append(f"| {key[0]} | {key[1]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_table(result: dict) -> str:
    s = result["setup"]
    device = f"{s['device']} ({s['gpu']})" if s.get("gpu") else s["device"]
    lines = [f"okd.bench: {s['backbone']} width {s['width']}, {s['size'][0]}x{s['size'][1]}, batch {s['batch']}, "
             f"{device}, {s['threads']} thread(s), torch {s['torch']}; median of {s['rounds']} rounds x "
             f"{s['steps']} steps (evaluation: {s['eval_batches']} batches per round); load average "
             f"{s['load_before']} before, {s['load_after']} after"]
    for v in result["variants"]:
        lines.append(format_variant(v))
    if len(result["variants"]) > 1:
        lines.append(format_side_by_side(result["variants"]))
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------------
def add_timing_arguments(parser: argparse.ArgumentParser, width: float, size: str) -> None:
    """Options shared by every benchmark of the project (network, shape, timing rounds, output)."""
    parser.add_argument("--backbone", default="segnet")
    parser.add_argument("--width", type=float, default=width, help="backbone.width")
    parser.add_argument("--size", default=size, help="HxW of the synthetic images")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10, help="steps per timing round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--json", type=Path, default=None, help="also write the result as JSON here")


def build_parser(prog: str = "python -m okd.bench") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                     epilog="Variants: <precision>[+cl][+compile], precision 32 | bf16 | 16. "
                                            "See the module docstring (okd/bench.py) for what is measured.")
    add_timing_arguments(parser, width=0.25, size="96x128")
    parser.add_argument("--methods", default="all", help="training part: comma-separated weightings, 'all' or 'none' "
                                                         "(ew is always timed: the reference)")
    parser.add_argument("--okd", action=argparse.BooleanOptionalAction, default=True,
                        help="time kd=okd against its bare components")
    parser.add_argument("--okd-weighting", default="otw", help="the weighting of the OKD step (otw: the paper)")
    parser.add_argument("--eval", action=argparse.BooleanOptionalAction, default=True,
                        help="time Trainer.evaluate against a bare inference loop")
    parser.add_argument("--eval-batches", type=int, default=0, help="batches per evaluation call (0: --steps)")
    parser.add_argument("--precision", default="32", help="32 | bf16 | 16 (trainer.precision; bare: autocast)")
    parser.add_argument("--channels-last", action="store_true", help="trainer.channels_last (bare: the same)")
    parser.add_argument("--compile", action="store_true", help="trainer.compile (bare: torch.compile)")
    parser.add_argument("--variants", default=None,
                        help="several variants side by side, e.g. 32,bf16,bf16+cl (instead of --precision, "
                             "--channels-last, --compile)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None,
                        help="gpu: --backbone resnet50 --width 1.0 --size 288x384 --batch 8 --device cuda "
                             "--variants 32,bf16,bf16+cl --steps 5 --rounds 3 (options given explicitly win)")
    parser.add_argument("--override", action="append", default=[],
                        help="extra Hydra override for every framework configuration (repeatable); kd.* ones "
                             "for the OKD configuration only, e.g. kd.afd=false")
    return parser


def parse_args(argv: Sequence[str] | None = None, prog: str = "python -m okd.bench") -> argparse.Namespace:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    if args.preset:  # the preset's values become defaults; what the command line says still wins
        parser.set_defaults(**PRESETS[args.preset])
        args = parser.parse_args(argv)
    return args


def variants_of(args: argparse.Namespace) -> list[Variant]:
    try:
        if args.variants is None:
            return [parse_variant(args.precision + "+cl" * args.channels_last + "+compile" * args.compile)]
        if args.precision != "32" or args.channels_last or args.compile:
            raise ValueError("--variants lists every variant; do not combine it with --precision, --channels-last "
                             "or --compile")
        variants = [parse_variant(v) for v in args.variants.split(",") if v.strip()]
    except ValueError as err:
        raise SystemExit(f"okd.bench: {err}") from err
    if not variants:
        raise SystemExit("okd.bench: --variants is empty (expected e.g. 32,bf16,bf16+cl)")
    return list(dict.fromkeys(variants))


def methods_of(spec: str) -> list[str]:
    available = weighting_options()
    if spec == "none":
        return []
    methods = available if spec == "all" else [m.strip() for m in spec.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(available))
    if unknown or not methods:
        raise SystemExit(f"okd.bench: --methods {spec!r}: unknown weighting(s) {unknown}; expected 'all', 'none' "
                         f"or a comma-separated list of {available}")
    return ["ew", *(m for m in dict.fromkeys(methods) if m != "ew")]


def check_args(args: argparse.Namespace) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        raise SystemExit(f"okd.bench: --size {args.size!r}: expected HxW, e.g. 96x128") from None
    for name in ("batch", "steps", "rounds"):
        if getattr(args, name) < 1:
            raise SystemExit(f"okd.bench: --{name} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0 or args.eval_batches < 0:
        raise SystemExit("okd.bench: --warmup and --eval-batches must be >= 0")
    bad = [o for o in args.override if _key(o) in VARIANT_KEYS]
    if bad:
        raise SystemExit(f"okd.bench: --override {bad}: precision, channels_last and compile are set with "
                         f"--precision/--channels-last/--compile/--variants (the bare loops mirror them)")
    kd = [o for o in args.override if _key(o).startswith("kd.")]
    if kd and not args.okd:
        raise SystemExit(f"okd.bench: --override {kd}: kd.* options configure the OKD part, which --no-okd "
                         f"switches off")
    if args.okd_weighting not in weighting_options():
        raise SystemExit(f"okd.bench: --okd-weighting {args.okd_weighting!r} is not one of {weighting_options()}")
    return height, width


def run(args: argparse.Namespace) -> dict:
    height, width = check_args(args)
    methods, variants = methods_of(args.methods), variants_of(args)
    if not (methods or args.okd or args.eval):
        raise SystemExit("okd.bench: nothing to time (--methods none --no-okd --no-eval)")
    if args.threads:
        torch.set_num_threads(args.threads)
    base = base_overrides(args, height, width)
    for variant in variants:
        check_variant(base, variant, okd_overrides(args) if args.okd else [])
    load_before, started = _load(), datetime.datetime.now().isoformat(timespec="seconds")
    results = [run_variant(args, base, v, methods) for v in variants]
    setup = {"backbone": args.backbone, "width": args.width, "size": [height, width], "batch": args.batch,
             "device": results[0]["device"], "steps": args.steps, "rounds": args.rounds, "warmup": args.warmup,
             "eval_batches": args.eval_batches or args.steps, "okd_weighting": args.okd_weighting,
             "threads": torch.get_num_threads(), "torch": torch.__version__, "overrides": args.override,
             "date": started, "load_before": load_before,
             "load_after": _load(), "gpu": torch.cuda.get_device_name() if results[0]["device"].startswith("cuda")
             else None}
    return {"setup": setup, "variants": results}


def _load() -> str:
    """The 1-minute load average: other jobs on the machine slow everything (ratios less so)."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "n/a"


def main(argv: Sequence[str] | None = None, prog: str = "python -m okd.bench") -> dict:
    args = parse_args(argv, prog)
    result = run(args)
    result["setup"]["command"] = " ".join([prog, *(sys.argv[1:] if argv is None else argv)])
    print(format_table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
