"""Where a run's numbers go: ``metrics.jsonl``/``summary.json`` (always), the console, and W&B.

* :class:`RunRecorder` writes the machine-readable results next to Hydra's ``.hydra/`` snapshot:
  one JSON object per epoch and split in ``metrics.jsonl`` and the final/best numbers in
  ``summary.json`` (written atomically, so a kill never leaves half a file).
* :class:`WandbLogger` (``logger=wandb``) and :class:`NullLogger` (``logger=none``) receive the same
  flat ``"<split>/<task>/<metric>"`` dicts.
"""
from __future__ import annotations

import json
import math
import os
import logging
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

log_stream = sys.stderr
#: the console: Hydra's job logging sends it to the terminal and to the run directory's run.log
console = logging.getLogger("okd")


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temp file, fsync and rename: readers see the old file or the new one, never half."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else (1e308 if value > 0 else -1e308)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def writable_dir(path: Path) -> Path:
    """Fail before training when results could not be written."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".okd-write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise OSError(f"the run directory {path} is not writable ({err.strerror or err}); choose another with "
                      f"hydra.run.dir=<dir>") from err
    return path


class RunRecorder:
    """Writes ``metrics.jsonl`` and ``summary.json`` in the run directory."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.summary_path = self.run_dir / "summary.json"

    def record(self, row: Mapping[str, Any]) -> None:
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(_jsonable(dict(row))) + "\n")
            f.flush()

    def rows(self) -> list[dict]:
        if not self.metrics_path.exists():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line.strip()]

    def truncate_after(self, epoch: int) -> None:
        """Drop rows of epochs > ``epoch`` (a resumed run redoes them)."""
        if not self.metrics_path.exists():
            return
        kept = [r for r in self.rows() if r.get("epoch", -1) <= epoch]
        atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept))

    def write_summary(self, summary: Any) -> None:
        """``summary.json``, atomically: an ``okd.results.RunSummary`` (every key documented there) or its dict."""
        data = summary.to_dict() if hasattr(summary, "to_dict") else dict(summary)
        atomic_write_text(self.summary_path, json.dumps(_jsonable(data), indent=2) + "\n")


class MemoryRecorder(RunRecorder):
    """The recorder of DDP processes other than rank 0: the same rows, kept in memory, no files."""

    def __init__(self) -> None:
        self._rows: list[dict] = []

    def record(self, row: Mapping[str, Any]) -> None:
        self._rows.append(json.loads(json.dumps(_jsonable(dict(row)))))

    def rows(self) -> list[dict]:
        return list(self._rows)

    def truncate_after(self, epoch: int) -> None:
        self._rows = [r for r in self._rows if r.get("epoch", -1) <= epoch]

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        pass


class Logger:
    """Experiment-tracker interface. ``start`` receives the resolved config as a plain dict."""

    def start(self, run_dir: Path, config: dict, resume_id: str | None = None,
              metrics: Mapping[str, bool] | None = None) -> None:
        """``config``: the tracker's config (:func:`tracker_config`); ``metrics``: every logged metric
        key with whether higher is better (trackers that summarise runs use the best value)."""

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        pass

    #: whether :meth:`log_images` does something (panels are only rendered when it does)
    accepts_images: bool = False

    def summary(self, values: Mapping[str, Any]) -> None:
        pass

    def log_images(self, images: Mapping[str, Any], step: int) -> None:
        """PIL images keyed by name."""

    def log_checkpoints(self, checkpoint_dir: Path) -> None:
        """Called once at the end of a finished fit with the run's checkpoint folder (best.pt, last.pt)."""

    def finish(self, exit_code: int = 0) -> None:
        pass

    @property
    def run_id(self) -> str | None:
        return None

    def describe(self) -> str:
        return "no experiment tracker (logger=none)"


#: the config groups whose chosen option every tracker run carries as a plain config key
CHOICE_KEYS = ("dataset", "backbone", "weighting", "kd", "experiment")


def tracker_config(config: Mapping[str, Any], choices: Mapping[str, Any], method: str | None = None) -> dict:
    """What a tracker records as a run's config: the chosen option of every config group and the
    method as plain keys (to group, filter and colour runs by), the seed, and the whole resolved
    config without Hydra's ``_target_`` entries under ``config`` (its swept values are columns too)."""
    def clean(node: Any) -> Any:
        if isinstance(node, Mapping):
            return {k: clean(v) for k, v in node.items() if k != "_target_"}
        if isinstance(node, (list, tuple)):
            return [clean(v) for v in node]
        return node

    out: dict[str, Any] = {key: choices.get(key) for key in CHOICE_KEYS}
    out["method"] = method or config.get("method") or method_name(choices)
    out["seed"] = config.get("seed")
    out["config"] = clean(config)
    return out


def method_name(choices: Mapping[str, Any]) -> str:
    """A run's method from its config choices: the experiment preset, else weighting (+ its KD)."""
    if choices.get("experiment"):
        return str(choices["experiment"])
    weighting, kd = choices.get("weighting") or "?", choices.get("kd")
    return str(weighting) if kd in (None, "none") else f"{kd}+{weighting}"


class NullLogger(Logger):
    """``logger=none``: nothing beyond the run directory's own files."""


def _has_wandb_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text()
    except OSError:
        return False


def resolve_wandb_mode(mode: str) -> str:
    """``auto``: WANDB_MODE if set, else ``online`` with credentials and ``offline`` without them,
    so that a run never waits on the network for a login."""
    if mode not in ("auto", "online", "offline", "disabled"):
        raise ValueError(f"logger.mode must be auto, online, offline or disabled; got {mode!r}")
    if mode != "auto":
        return mode
    env = os.environ.get("WANDB_MODE")
    if env in ("online", "offline", "disabled", "dryrun", "run"):
        return {"dryrun": "offline", "run": "online"}.get(env, env)
    return "online" if _has_wandb_credentials() else "offline"


class WandbLogger(Logger):
    """``logger=wandb``: one W&B run per training run, its files inside the Hydra run dir."""

    def __init__(
        self,
        project: str = "okd",
        entity: str | None = None,
        group: str | None = None,
        job_type: str = "train",
        name: str | None = None,
        tags: Sequence[str] = (),
        mode: str = "auto",
        notes: str | None = None,
    ) -> None:
        self.project, self.entity, self.group, self.job_type = project, entity, group, job_type
        self.name, self.tags, self.notes = name, list(tags), notes
        self.mode = resolve_wandb_mode(mode)
        self._run = None
        self._run_id: str | None = None
        self._description: str | None = None

    def start(self, run_dir: Path, config: dict, resume_id: str | None = None,
              metrics: Mapping[str, bool] | None = None) -> None:
        import wandb  # imported here: it is slow to import and unused with logger=none

        self._run = wandb.init(
            project=self.project, entity=self.entity, group=self.group, job_type=self.job_type,
            name=self.name, tags=self.tags, notes=self.notes, config=config, dir=str(run_dir),
            mode=self.mode, id=resume_id, resume="allow" if resume_id else None,
        )
        self._run_id = self._run.id
        self._description = self._describe_run()
        # charts over epochs, and run tables that show each metric's best value in its own direction
        self._run.define_metric("epoch")
        self._run.define_metric("*", step_metric="epoch")
        for key, higher in (metrics or {}).items():
            self._run.define_metric(key, step_metric="epoch", summary="max" if higher else "min")

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        self._guarded("log", lambda run: run.log(dict(metrics), step=step))

    accepts_images = True

    def log_images(self, images: Mapping[str, Any], step: int) -> None:
        if self.mode == "disabled":
            return
        import wandb

        self._guarded("log_images", lambda run: run.log({k: wandb.Image(v) for k, v in images.items()}, step=step))

    def summary(self, values: Mapping[str, Any]) -> None:
        self._guarded("summary", lambda run: run.summary.update(dict(values)))

    def finish(self, exit_code: int = 0) -> None:
        self._guarded("finish", lambda run: run.finish(exit_code=exit_code))
        self._run = None

    def _guarded(self, what: str, call) -> None:
        """Run ``call(run)``; if the tracker fails, say so once and carry on without it.

        SLURM signals every process of a job, W&B's own service process included: after a preemption or
        a requeue that process may be gone, and its errors (ConnectionResetError, HandleAbandonedError)
        must neither replace the run's exit status nor stop the checkpoint and result files, which hold
        every number. The resumed job continues the same W&B run (by id).
        """
        if self._run is None:
            return
        try:
            call(self._run)
        except Exception as err:  # noqa: BLE001  (any tracker failure, whatever its type)
            self._run = None
            console.warning(f"okd: warning: W&B stopped working ({what}: {type(err).__name__}: {err}); the run goes "
                            f"on without it: metrics.jsonl, summary.json and the checkpoints keep every number")

    @property
    def run_id(self) -> str | None:
        return self._run_id

    def describe(self) -> str:
        return self._description or f"W&B ({self.mode})"

    def _describe_run(self) -> str:
        run = self._run
        run_dir = Path(getattr(run, "dir", "")).parent  # <run dir>/wandb/<offline-run-...>
        if self.mode == "offline":
            return f"W&B offline run {run.id} in {run_dir} (upload later: wandb sync {run_dir})"
        if self.mode == "disabled":
            return "W&B disabled"
        return f"W&B run {run.id}: {getattr(run, 'url', None) or run_dir}"


class Progress:
    """The progress of one epoch: a tqdm bar on a terminal; without one (a SLURM job, ``> log``), a plain
    console line at most every ``every_s`` seconds, so that logs hold no carriage returns."""

    def __init__(self, iterable: Any, desc: str, total: int, initial: int = 0, enabled: bool = True,
                 every_s: float = 30.0) -> None:
        from tqdm.auto import tqdm

        self.desc, self.total, self.enabled, self.every_s = desc, total, enabled, every_s
        self.interactive = enabled and log_stream.isatty()
        self.bar = tqdm(iterable, desc=desc, leave=False, disable=not self.interactive, file=log_stream,
                        dynamic_ncols=True, initial=initial, total=total)
        self.started, self.initial = time.monotonic(), initial
        self.last = self.started

    def __iter__(self):
        return iter(self.bar)

    def update(self, step: int, loss: float) -> None:
        """Called at the log interval with the running mean loss (already on the host)."""
        if self.interactive:
            self.bar.set_postfix(loss=f"{loss:.4g}")
            return
        now = time.monotonic()
        if self.enabled and now - self.last >= self.every_s:
            rate = (step - self.initial) / max(now - self.started, 1e-9)
            console.info(f"{self.desc}: step {step}/{self.total}, loss {loss:.4g}, {rate:.2f} steps/s")
            self.last = now


#: console width: the epoch table wraps its lines to fit
WIDTH = 100
TASK_LABELS = {"segmentation": "seg", "depth": "depth", "normal": "nrm"}
METRIC_LABELS = {"miou": "mIoU", "pix_acc": "acc", "abs_err": "abs", "rel_err": "rel", "mean": "mean",
                 "median": "med"}
#: units of the metrics on the console (depth errors take the dataset's depth unit)
UNITS = {"miou": "%", "pix_acc": "%", "mean": "°", "median": "°"}


def format_epoch_table(epoch: int, epochs: int, rows: Mapping[str, Mapping[str, float]], seconds: float,
                       best: str | None = None, depth_unit: str | None = None) -> str:
    """One block per epoch, at most :data:`WIDTH` columns: ``epoch k/N (time)``, a mark when this epoch
    is the best so far (``best``: what it was chosen by), then a line per split (wrapped when long):
    train losses ``L`` and weights ``w``, evaluation metrics with units."""
    head = f"epoch {epoch + 1}/{epochs} ({seconds:.1f} s)"
    if best:
        head += f"  * best so far ({best})"
    lines = [head]
    for split, values in rows.items():
        cells = [_cell(k, v, depth_unit) for k, v in values.items()]
        lines.extend(_wrap(f"  {split:<5}", cells))
    return "\n".join(lines)


def _cell(key: str, value: Any, depth_unit: str | None) -> str:
    if key.startswith(("loss/", "weight/")):
        kind, task = key.split("/", 1)
        return f"{'L' if kind == 'loss' else 'w'}/{TASK_LABELS.get(task, task)} {_short(value)}"
    task, _, metric = key.partition("/")
    if metric.startswith("within_"):  # share of pixels with an angle error under the threshold
        label, unit = f"<{metric[len('within_'):]}°", "%"
    else:
        label = METRIC_LABELS.get(metric, metric)
        unit = UNITS.get(metric, " m" if metric == "abs_err" and depth_unit == "metres" else "")
    return f"{TASK_LABELS.get(task, task)} {label} {_short(value)}{unit}"


def _wrap(prefix: str, cells: Sequence[str]) -> list[str]:
    lines, line = [], prefix
    for cell in cells:
        if len(line) + 2 + len(cell) > WIDTH and line != prefix:
            lines.append(line)
            line = " " * len(prefix)
        line += ("  " if line.strip() else " ") + cell
    lines.append(line)
    return lines


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
