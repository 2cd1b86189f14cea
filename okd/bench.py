"""Benchmark harness: steady-state training-step time of the framework against a bare PyTorch loop.

    python -m okd.bench                                  # SegNet (width 0.25), 96x128, batch 8, all weightings
    python -m okd.bench --methods ew,dwa,pcgrad --steps 30 --json bench.json
    python -m okd.bench --backbone segnet --width 1.0 --size 288x384 --batch 8 --device cuda

What is measured, on one fixed batch already on the device (data loading is not part of a step):
* ``bare``: the floor -- the same network and the same task losses in a plain loop
  (forward, sum of losses, backward, ``optimizer.step``), no framework code at all;
* ``<method>``: ``Trainer.training_step`` of the real framework (built from ``conf/`` with
  ``weighting=<method>``), i.e. exactly what ``python run.py weighting=<method>`` runs per step.

Each configuration is timed in several rounds interleaved with the others (so drifts in machine
load hit all of them alike); the reported time is the median over rounds of the mean step time.
Ratios are against ``bare`` and against ``ew``. These are benchmarks, not tests: nothing asserts
on times.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    import okd.config  # noqa: F401  (resolvers)

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose("config", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg


def weighting_options() -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / "weighting").glob("*.yaml"))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def framework_step(overrides: list[str], run_dir: Path) -> tuple[Callable[[], None], torch.device, dict]:
    """The framework's real training step for one configuration, on one fixed batch."""
    from okd.app import build

    trainer, ctx = build(compose(overrides), run_dir)
    trainer.setup(ctx)
    batch = next(iter(trainer.train_loader))
    images, targets = trainer._to_device(batch)
    ctx.model.train()
    return (lambda: trainer.training_step(images, targets)), trainer.device, {
        "model": ctx.model, "tasks": ctx.tasks, "images": images, "targets": targets,
        "optimizer_factory": trainer.optimizer_factory,
    }


def bare_step(parts: dict) -> Callable[[], None]:
    """The floor: a copy of the same network and losses in a plain PyTorch loop."""
    import copy

    model = copy.deepcopy(parts["model"]).train()
    tasks, images, targets = parts["tasks"], parts["images"], parts["targets"]
    optimizer = parts["optimizer_factory"](model.parameters())

    def step() -> None:
        out = model(images)
        loss = sum(t.loss(out.predictions[t.name], targets[t.name]) for t in tasks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def time_rounds(steps: dict[str, Callable[[], None]], device: torch.device, n_steps: int, warmup: int,
                rounds: int) -> dict[str, list[float]]:
    for fn in steps.values():
        for _ in range(warmup):
            fn()
    _sync(device)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for r in range(rounds):
        for name, fn in steps.items():
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(n_steps):
                fn()
            _sync(device)
            times[name].append((time.perf_counter() - t0) / n_steps)
        print(f"round {r + 1}/{rounds} done", file=sys.stderr, flush=True)
    return times


def peak_memory(fn: Callable[[], None], device: torch.device) -> float | None:
    """Peak allocated GPU memory (MiB) of a few steps; None on the CPU."""
    if device.type != "cuda":
        return None
    torch.cuda.reset_peak_memory_stats(device)
    for _ in range(2):
        fn()
    _sync(device)
    return torch.cuda.max_memory_allocated(device) / 2**20


def run(args: argparse.Namespace) -> dict:
    import tempfile

    torch.set_num_threads(args.threads) if args.threads else None
    height, width = (int(v) for v in args.size.lower().split("x"))
    methods = weighting_options() if args.methods == "all" else args.methods.split(",")
    unknown = sorted(set(methods) - set(weighting_options()))
    if unknown:
        raise SystemExit(f"okd.bench: unknown weighting(s) {unknown}; available: {weighting_options()}")
    base = [
        f"backbone={args.backbone}", f"backbone.width={args.width}", "logger=none",
        f"dataset.height={height}", f"dataset.width={width}", f"dataset.train_size={args.batch}",
        "dataset.val_size=1", "dataset.test_size=1", f"trainer.batch_size={args.batch}",
        f"trainer.device={args.device}", "trainer.progress=false",
    ]
    steps: dict[str, Callable[[], None]] = {}
    memory: dict[str, float | None] = {}
    skipped: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        parts = None
        for method in methods:
            try:
                fn, device, p = framework_step([*base, f"weighting={method}"], Path(tmp) / method)
            except ValueError as err:  # e.g. OTW without teachers
                skipped[method] = str(err)
                continue
            steps[method] = fn
            parts = parts or p
        if parts is None:
            raise SystemExit("okd.bench: no configuration could be built")
        steps = {"bare": bare_step(parts), **steps}
        for name, fn in steps.items():
            memory[name] = peak_memory(fn, device)
        times = time_rounds(steps, device, args.steps, args.warmup, args.rounds)
    median = {name: statistics.median(ts) for name, ts in times.items()}
    ew = median.get("ew")
    rows = [
        {"config": name, "step_ms": 1000 * t, "vs_bare": t / median["bare"],
         "vs_ew": (t / ew) if ew else None, "peak_mib": memory[name],
         "spread_ms": 1000 * (max(times[name]) - min(times[name]))}
        for name, t in median.items()
    ]
    return {
        "setup": {"backbone": args.backbone, "width": args.width, "size": [height, width], "batch": args.batch,
                  "device": str(device), "steps": args.steps, "rounds": args.rounds, "warmup": args.warmup,
                  "threads": torch.get_num_threads(), "torch": torch.__version__},
        "rows": rows, "skipped": skipped,
    }


def format_table(result: dict) -> str:
    s = result["setup"]
    lines = [f"okd.bench: {s['backbone']} width {s['width']}, {s['size'][0]}x{s['size'][1]}, batch {s['batch']}, "
             f"{s['device']}, {s['threads']} threads, torch {s['torch']}; median of {s['rounds']} rounds x "
             f"{s['steps']} steps", "",
             "| config | step (ms) | vs bare | vs EW | peak GPU MiB |", "|---|---|---|---|---|"]
    for r in result["rows"]:
        vs_ew = f"{r['vs_ew']:.2f}x" if r["vs_ew"] else "-"
        mem = f"{r['peak_mib']:.0f}" if r["peak_mib"] is not None else "-"
        lines.append(f"| {r['config']} | {r['step_ms']:.1f} | {r['vs_bare']:.2f}x | {vs_ew} | {mem} |")
    for name, why in result["skipped"].items():
        lines.append(f"\nskipped {name}: {why}")
    return "\n".join(lines)


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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m okd.bench", description=__doc__.split("\n\n")[0])
    add_timing_arguments(parser, width=0.25, size="96x128")
    parser.add_argument("--methods", default="all", help="comma-separated weightings, or 'all'")
    args = parser.parse_args(argv)
    result = run(args)
    print(format_table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
