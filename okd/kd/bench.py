"""Benchmark of kd=okd: the framework's OKD step against the bare cost of the networks it trains.

    python -m okd.kd.bench                                   # tiny SegNet (width 0.125), 48x64, batch 8
    python -m okd.kd.bench --width 1.0 --size 288x384 --device cuda --json okd_bench.json

One OKD step trains the student and K single-task teachers. Its floor is what the same K + 1
networks cost when each is trained alone in a plain PyTorch loop (forward, loss, backward, Adam
step), no framework code. Configurations timed, on one fixed batch already on the device:

* ``okd``: ``Trainer.training_step`` with ``kd=okd`` (what ``python run.py kd=okd`` runs per step:
  student + teachers + AFD with adaptors and gates + the weighting);
* ``bare_student + bare_teachers``: the floor, timed as one function;
* ``bare_student`` alone, for reference.

The reported ratio ``okd / (bare student + K bare teachers)`` is the overhead of distillation and of
the framework (AFD, adaptors, gates, bookkeeping). Rounds are interleaved (okd.bench.time_rounds);
the time is the median over rounds. A benchmark, not a test: nothing asserts on times.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
from pathlib import Path
from typing import Callable

import torch

from okd.bench import add_timing_arguments, compose, peak_memory, time_rounds


def okd_parts(overrides: list[str], run_dir: Path) -> dict:
    """The real OKD training step and copies of its networks for the bare loop."""
    from okd.app import build

    trainer, ctx = build(compose(["kd=okd", *overrides]), run_dir)
    trainer.setup(ctx)
    images, targets = trainer._to_device(next(iter(trainer.train_loader)))
    ctx.model.train()
    ctx.distiller.train()
    return {"step": lambda: trainer.training_step(images, targets), "device": trainer.device,
            "student": ctx.model, "teachers": dict(ctx.distiller.teachers.items()), "tasks": ctx.tasks,
            "images": images, "targets": targets, "optimizer_factory": trainer.optimizer_factory,
            "teacher_optimizer_factory": ctx.distiller.teacher_optimizer_factory}


def bare_steps(parts: dict) -> tuple[Callable[[], None], Callable[[], None]]:
    """(student step, student step + every teacher step) in plain PyTorch on copies of the networks."""
    images, targets, tasks = parts["images"], parts["targets"], parts["tasks"]
    student = copy.deepcopy(parts["student"]).train()
    s_opt = parts["optimizer_factory"](student.parameters())
    teachers = {n: copy.deepcopy(m).train() for n, m in parts["teachers"].items()}
    t_opts = {n: parts["teacher_optimizer_factory"](m.parameters()) for n, m in teachers.items()}

    def student_step() -> None:
        out = student(images)
        loss = sum(t.loss(out.predictions[t.name], targets[t.name]) for t in tasks)
        s_opt.zero_grad(set_to_none=True)
        loss.backward()
        s_opt.step()

    def all_steps() -> None:
        student_step()
        for t in tasks:
            out = teachers[t.name](images)
            loss = t.loss(out.predictions[t.name], targets[t.name])
            t_opts[t.name].zero_grad(set_to_none=True)
            loss.backward()
            t_opts[t.name].step()

    return student_step, all_steps


def run(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    height, width = (int(v) for v in args.size.lower().split("x"))
    overrides = [
        f"backbone={args.backbone}", f"backbone.width={args.width}", "logger=none",
        f"dataset.height={height}", f"dataset.width={width}", f"dataset.train_size={args.batch}",
        "dataset.val_size=1", "dataset.test_size=1", f"trainer.batch_size={args.batch}",
        f"trainer.device={args.device}", "trainer.progress=false", f"weighting={args.weighting}",
        *args.override,
    ]
    with tempfile.TemporaryDirectory() as tmp:
        parts = okd_parts(overrides, Path(tmp))
        student_step, all_steps = bare_steps(parts)
        steps = {"okd": parts["step"], "bare_student+teachers": all_steps, "bare_student": student_step}
        device = parts["device"]
        memory = {name: peak_memory(fn, device) for name, fn in steps.items()}
        times = time_rounds(steps, device, args.steps, args.warmup, args.rounds)
    median = {name: statistics.median(ts) for name, ts in times.items()}
    floor = median["bare_student+teachers"]
    return {
        "setup": {"backbone": args.backbone, "width": args.width, "size": [height, width], "batch": args.batch,
                  "device": str(device), "weighting": args.weighting, "teachers": len(parts["teachers"]),
                  "steps": args.steps, "rounds": args.rounds, "warmup": args.warmup,
                  "threads": torch.get_num_threads(), "torch": torch.__version__, "overrides": args.override},
        "rows": [{"config": n, "step_ms": 1000 * t, "vs_floor": t / floor, "peak_mib": memory[n],
                  "spread_ms": 1000 * (max(times[n]) - min(times[n]))} for n, t in median.items()],
        "ratio": median["okd"] / floor,
    }


def format_table(result: dict) -> str:
    s = result["setup"]
    lines = [f"okd.kd.bench: {s['backbone']} width {s['width']}, {s['size'][0]}x{s['size'][1]}, batch {s['batch']}, "
             f"{s['device']}, {s['threads']} threads, torch {s['torch']}, weighting {s['weighting']}, "
             f"{s['teachers']} teachers; median of {s['rounds']} rounds x {s['steps']} steps", "",
             "| config | step (ms) | vs bare student + teachers | peak GPU MiB |", "|---|---|---|---|"]
    for r in result["rows"]:
        mem = f"{r['peak_mib']:.0f}" if r["peak_mib"] is not None else "-"
        lines.append(f"| {r['config']} | {r['step_ms']:.1f} | {r['vs_floor']:.2f}x | {mem} |")
    lines.append(f"\nOKD step / (student step + {s['teachers']} teacher steps, bare PyTorch) = {result['ratio']:.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m okd.kd.bench", description=__doc__.split("\n\n")[0])
    add_timing_arguments(parser, width=0.125, size="48x64")
    parser.add_argument("--weighting", default="otw", help="the weighting of the OKD step (otw: the paper)")
    parser.add_argument("--override", action="append", default=[], help="extra Hydra override (repeatable)")
    args = parser.parse_args(argv)
    result = run(args)
    print(format_table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
