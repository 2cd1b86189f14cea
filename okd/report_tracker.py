"""The comparison report of a sweep as one W&B run of the sweep's group (``job_type: report``).

At the end of a multirun whose jobs log to W&B (``logger=wandb``, the default), :func:`log_report` makes
one more run in the jobs' group, with what ``report.md`` shows: the table (``comparison``: mean ± std
over seeds as in report.md, Δm/Δp, base, epoch time, parameters, seeds), the full-precision numbers of
``report.csv`` (``comparison_numbers``, sortable columns) and the figures (``figures/deltas``,
``figures/curves`` as ``wandb.Image``). The run goes through okd's own :class:`okd.logging.WandbLogger`
(mode ``auto``: offline without credentials, so it never waits on the network; a tracker failure is one
warning), its files in ``<sweep dir>/report/wandb/``. Project, entity, group and mode are those of the
sweep's jobs: :func:`tracker_settings` resolves the sweep's ``logger`` config (the group through okd's
``okd_group`` resolver, as every job resolves it).
"""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Mapping

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

WANDB_LOGGER = "okd.logging.WandbLogger"
#: the logger settings a report run shares with the sweep's jobs
SHARED = ("project", "entity", "group", "mode")


def tracker_settings(config: DictConfig) -> dict[str, Any] | None:
    """``{project, entity, group, mode}`` of the sweep's W&B runs, resolved from the multirun's config as
    its jobs resolve them; None when the sweep does not log to W&B (``logger=none``, ``logger.mode=disabled``)."""
    if OmegaConf.select(config, "logger._target_") != WANDB_LOGGER:
        return None
    instance = HydraConfig.instance()
    previous, readonly = instance.cfg, config.hydra._get_flag("readonly")
    instance.set_config(config)  # ${okd_group:...} and ${hydra:...} resolve as in the sweep
    try:
        settings = {key: OmegaConf.select(config, f"logger.{key}") for key in SHARED}
    finally:
        instance.cfg = previous
        config.hydra._set_flag("readonly", readonly)  # set_config made Hydra's node read-only
    from okd.logging import resolve_wandb_mode

    return None if resolve_wandb_mode(str(settings["mode"])) == "disabled" else settings


def comparison_rows(report: Any) -> tuple[list[str], list[list[Any]]]:
    """The table of report.md (one row per method, formatted as there): columns and rows."""
    from okd import report as rp

    columns = (["method", "tasks", "seeds"]
               + [k + ("" if k not in rp.DIRECTIONS else " ↑" if rp.DIRECTIONS[k] else " ↓") for k in report.metric_keys]
               + ["Δm % ↑", "Δp % ↑", "base", "epoch time (s)", "parameters"])
    rows = []
    for row in report.rows:
        cells = [row.name, "+".join(row.first.tasks), f"{len(row.runs)} ({', '.join(map(str, row.seeds()))})"]
        cells += [rp.fmt(row.metric(k)) for k in report.metric_keys]
        cells += [rp.fmt(row.delta("delta_m"), signed=True), rp.fmt(row.delta("delta_p"), signed=True),
                  "; ".join(dict.fromkeys(rp.short_source(b) for b in row.bases)) or "—",
                  rp.fmt(row.epoch_time()), rp.fmt_params(row.parameters())]
        rows.append(cells)
    return columns, rows


def csv_rows(path: Path) -> tuple[list[str], list[list[Any]]]:
    """report.csv with numbers as numbers (empty cells: None), for sortable W&B columns."""
    with open(path, newline="") as f:
        table = list(csv.reader(f))
    header, body = table[0], table[1:]

    def value(cell: str) -> Any:
        if cell == "":
            return None
        try:
            number = float(cell)
        except ValueError:
            return cell
        return number if math.isfinite(number) else None

    return header, [[value(c) for c in row] for row in body]


def log_report(report: Any, out: Path, settings: Mapping[str, Any], sweep: Path) -> str:
    """Log ``report`` (an :class:`okd.report.Report` written to ``out``) as a W&B run of the sweep's group;
    returns where it went (okd's description of the run, e.g. the offline folder and its sync command)."""
    import wandb

    from okd.logging import WandbLogger

    group = str(settings.get("group") or "okd")
    logger = WandbLogger(project=str(settings.get("project") or "okd"), entity=settings.get("entity"),
                         group=group, job_type="report", name=f"{group} report", tags=["report"],
                         mode=str(settings.get("mode") or "auto"))
    runs = sum(len(row.runs) for row in report.rows)
    logger.start(out, {"sweep_dir": str(sweep), "report_dir": str(out), "selection": report.selection,
                       "split": report.split, "methods": len(report.rows), "runs": runs,
                       "base": list(report.base_sources)})
    columns, rows = comparison_rows(report)
    values: dict[str, Any] = {"comparison": wandb.Table(columns=columns, data=rows)}
    if report.files.get("csv"):
        header, numbers = csv_rows(Path(report.files["csv"]))
        values["comparison_numbers"] = wandb.Table(columns=header, data=numbers)
    captions = {"deltas": f"Δm and Δp per method ({report.selection_text()})",
                "curves": "training loss and the selection split's first metric per epoch"}
    for name, caption in captions.items():
        png = report.files.get(f"{name}_png")
        if png:
            values[f"figures/{name}"] = wandb.Image(str(png), caption=caption)
    logger.log(values, step=0)
    summary: dict[str, Any] = {"report/methods": len(report.rows), "report/runs": runs}
    for row in report.rows:
        for key in ("delta_m", "delta_p"):
            stat = row.delta(key)
            if stat is not None:
                summary[f"{key}/{row.name}"] = stat[0]
    logger.summary(summary)
    where = logger.describe()
    logger.finish()
    return where
