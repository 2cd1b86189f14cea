"""What a fit says on the console (and in run.log): the opening line, one table per epoch with the
best-so-far mark, and the closing result. Only the main process speaks."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch

from okd.logging import console, format_epoch_table


def resuming(path: Path, state: Mapping[str, Any]) -> None:
    """Where a resumed run continues: after an epoch, or inside one (a mid-epoch checkpoint)."""
    inside = state.get("in_epoch")
    where = f"in epoch {inside['epoch']} after step {inside['step']}" if inside else f"after epoch {state['epoch']}"
    console.info(f"resuming from {path} {where}")


def announce(ctx: Any, device: torch.device, world_size: int, start_epoch: int, epochs: int) -> None:
    """The opening line: data, tasks, model size, methods, device and the epochs to run."""
    ddp = f" x {world_size} processes (DDP)" if world_size > 1 else ""
    console.info(f"okd: {ctx.data.name} ({len(ctx.data.train)} train samples), tasks {[t.name for t in ctx.tasks]}, "
                 f"{type(ctx.model).__name__} with {ctx.model.num_parameters():,} parameters, "
                 f"weighting {type(ctx.weighting).__name__}, kd {type(ctx.distiller).__name__}, "
                 f"device {device}{ddp}, {torch.get_num_threads()} CPU thread(s), epochs {start_epoch}..{epochs - 1}")


def epoch_table(ctx: Any, epoch: int, epochs: int, rows: Mapping[str, Mapping[str, float]], seconds: float,
                best: str | None) -> None:
    """One epoch's numbers; ``best``: how the epoch was chosen when it improved the selection."""
    console.info(format_epoch_table(epoch, epochs, student_rows(rows), seconds, best, ctx.data.info.get("depth_unit")))


def farewell(ctx: Any, selection: Any, epochs: int, checkpoint_dir: Path) -> None:
    """The run's result in a few lines: the chosen epoch, the report split's numbers there, the files."""
    best = selection.best
    if best is not None:
        report = ctx.data.report_split
        cells = format_epoch_table(best["epoch"], epochs, student_rows({report: best["metrics"].get(report, {})}),
                                   0.0, None, ctx.data.info.get("depth_unit"))
        console.info(f"best: epoch {best['epoch'] + 1}/{epochs}, chosen by {selection.label()}; "
                     f"{report} there:\n" + "\n".join(cells.splitlines()[1:]))
    console.info(f"results: {Path(ctx.run_dir) / 'summary.json'} and metrics.jsonl; "
                 f"checkpoints: {checkpoint_dir}; logger: {ctx.logger.describe()}")


def student_rows(rows: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """Keep the console compact: losses and weights for train, metrics for evaluation splits (the
    teachers', AFD's and gates' values are in metrics.jsonl and the tracker)."""
    out = {}
    for split, values in rows.items():
        if split == "train":
            out[split] = {k: v for k, v in values.items() if k.startswith(("loss/", "weight/"))}
        else:
            out[split] = {k: v for k, v in values.items() if not k.startswith(("loss", "teacher/"))}
    return out
