"""Where a run's numbers go: ``metrics.jsonl``/``summary.json`` (always), the console, and W&B.

* :class:`RunRecorder` writes the machine-readable results next to Hydra's ``.hydra/`` snapshot:
  one JSON object per epoch and split in ``metrics.jsonl`` and the final/best numbers in
  ``summary.json`` (written atomically, so a kill never leaves half a file).
* :class:`WandbLogger` (``logger=wandb``) and :class:`NullLogger` (``logger=none``) receive the same
  flat ``"<split>/<task>/<metric>"`` dicts, the prediction panels and masks, the ``mode=eval`` tables,
  and, after a finished fit, the checkpoint folder (``logger.log_model``: model artifacts).
* :func:`fetch_checkpoint` resolves ``ckpt=wandb:<entity>/<project>/<artifact>:<alias>`` for
  ``mode=eval``/``predict``, or refuses it with one line without waiting on the network.
"""
from __future__ import annotations

import json
import math
import os
import logging
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence
from urllib.parse import urlsplit

from okd.errors import OkdError

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
        """Pictures keyed by name: PIL images, or :class:`okd.predict.SegmentationMasks` (a picture with
        class-id masks, which a tracker may draw as toggleable overlays)."""

    def log_tables(self, tables: Mapping[str, tuple[Sequence[str], Sequence[Sequence[Any]]]]) -> None:
        """Small tables keyed by name, each ``(columns, rows)`` (e.g. per split in ``mode=eval``)."""

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


def tracked_metrics(tasks: Sequence[str], splits: Iterable[str], directions: Mapping[str, bool]) -> dict[str, bool]:
    """Every per-epoch key a fit sends the tracker, with its direction (higher is better?): the
    training losses, and per evaluation split the losses and every metric of the tasks."""
    out = {f"train/loss/{n}": False for n in tasks}
    for split in splits:
        out.update({f"{split}/loss": False, **{f"{split}/loss/{n}": False for n in tasks}})
        out.update({f"{split}/{metric}": higher for metric, higher in directions.items()})
    return out


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


def _has_wandb_credentials(host: str | None = None) -> bool:
    """An API key in WANDB_API_KEY, or a ``wandb login`` entry in ~/.netrc (for ``host`` too when given)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        text = netrc.read_text()
    except OSError:
        return False
    return "api.wandb.ai" in text or bool(host and host in text)


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
        log_model: bool | str | None = False,
    ) -> None:
        self.project, self.entity, self.group, self.job_type = project, entity, group, job_type
        self.name, self.tags, self.notes = name, list(tags), notes
        self.mode = resolve_wandb_mode(mode)
        self.log_model = log_model_choice(log_model)
        self._run = None
        self._run_id: str | None = None
        self._description: str | None = None
        self._config: dict = {}

    def start(self, run_dir: Path, config: dict, resume_id: str | None = None,
              metrics: Mapping[str, bool] | None = None) -> None:
        import wandb  # imported here: it is slow to import and unused with logger=none

        self._config = dict(config)
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
        self._guarded("log_images", lambda run: run.log({k: _wandb_image(v) for k, v in images.items()}, step=step))

    def log_tables(self, tables: Mapping[str, tuple[Sequence[str], Sequence[Sequence[Any]]]]) -> None:
        if self.mode == "disabled":
            return
        import wandb

        self._guarded("log_tables", lambda run: run.log(
            {key: wandb.Table(columns=list(columns), data=[list(r) for r in rows])
             for key, (columns, rows) in tables.items()}))

    def log_checkpoints(self, checkpoint_dir: Path) -> None:
        """``log_model=best``: best.pt, ``all``: best.pt and last.pt, as versions of the artifact
        ``model-<run id>`` (type ``model``) with the alias ``best``/``last`` (and W&B's own ``latest`` on
        the newest: last.pt with ``all``); metadata: the best epoch, monitor and value, the method and
        the seed. Offline, the artifact is stored in the offline run and uploaded by ``wandb sync``.
        A failure is one warning: the checkpoints stay where they are and the run closes normally."""
        if not self.log_model or self.mode == "disabled" or self._run is None:
            return
        wanted = ["best.pt", "last.pt"] if self.log_model == "all" else ["best.pt"]
        present = [f for f in wanted if (Path(checkpoint_dir) / f).is_file()]
        if not present:
            console.warning(f"okd: warning: logger.log_model={self.log_model}: no {' or '.join(wanted)} in "
                            f"{checkpoint_dir}; no model artifact logged")
            return
        try:
            self._log_model_artifact(self._run, Path(checkpoint_dir), present)
        except Exception as err:  # noqa: BLE001  (any tracker failure, whatever its type)
            # the run itself is fine (its numbers are logged): it still closes normally in finish()
            console.warning(f"okd: warning: W&B could not store the checkpoints as an artifact ({type(err).__name__}: "
                            f"{err}); they are in {checkpoint_dir}")

    def _log_model_artifact(self, run, checkpoint_dir: Path, files: Sequence[str]) -> None:
        import wandb

        from okd.engine.checkpoint import load_checkpoint

        name = f"model-{run.id}"
        logged = []
        for file in files:
            path = checkpoint_dir / file
            state = load_checkpoint(path, mmap=True)  # mmap: only the small entries below are read
            best = state.get("best") or {}
            metadata = {"file": file, "epoch": state.get("epoch"), "method": self._config.get("method"),
                        "seed": self._config.get("seed"), "best_epoch": best.get("epoch"),
                        "monitor": best.get("monitor"), "monitor_split": best.get("split"),
                        "monitor_value": best.get("value"),
                        **{k: self._config.get(k) for k in CHOICE_KEYS}}
            artifact = wandb.Artifact(name, type="model", metadata=_jsonable(metadata),
                                      description=f"{file} of run {run.name or run.id}")
            artifact.add_file(str(path), name=file)  # copied to W&B's staging area: a resume may rewrite it
            alias = file.removesuffix(".pt")  # W&B adds "latest" to the newest version itself
            run.log_artifact(artifact, aliases=[alias])
            logged.append(f"{file} (:{alias})")
        run.summary["model_artifact"] = name
        where = " (stored in the offline run: `wandb sync` uploads it)" if self.mode == "offline" else ""
        entity = self.entity or getattr(run, "entity", None) or "<entity>"  # offline runs know none yet
        console.info(f"checkpoints logged to W&B as artifact {name}: {'; '.join(logged)}{where}; evaluate with "
                     f"ckpt=wandb:{entity}/{getattr(run, 'project', None) or self.project}/{name}:{_logged_alias(files)}")

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


def log_model_choice(value: Any) -> str | None:
    """``logger.log_model``: false (default), ``best`` (best.pt) or ``all`` (best.pt and last.pt)."""
    if value in (False, None, "false", "False", "none", "null"):
        return None
    if value in ("best", "all"):
        return value
    raise ValueError(f"logger.log_model={value!r}: expected false, best (log best.pt as a W&B artifact) or all "
                     f"(best.pt and last.pt)")


def _logged_alias(files: Sequence[str]) -> str:
    """The alias to evaluate a logged model by: ``best`` when best.pt was logged."""
    return "best" if "best.pt" in files else Path(files[-1]).stem


def _wandb_image(value: Any):
    """A PIL image as ``wandb.Image``; :class:`okd.predict.SegmentationMasks` as the picture with its
    prediction and ground-truth masks (toggleable per class in the dashboard)."""
    import wandb

    masks = getattr(value, "wandb_masks", None)
    return wandb.Image(value.image, masks=masks()) if masks is not None else wandb.Image(value)


# ---------------------------------------------------------------------------------------------
# Checkpoints from W&B: ckpt=wandb:<entity>/<project>/<artifact>:<alias or version>
# ---------------------------------------------------------------------------------------------
ARTIFACT_PREFIX = "wandb:"
ARTIFACT_SYNTAX = "wandb:<entity>/<project>/<artifact>:<alias or version>, e.g. wandb:me/okd/model-1a2b3c4d:best"
#: seconds to wait for W&B's server to answer where an artifact is (downloads themselves are not limited)
LOOKUP_TIMEOUT_S = 60


def is_artifact_ref(ckpt: Any) -> bool:
    return isinstance(ckpt, str) and ckpt.startswith(ARTIFACT_PREFIX)


def parse_artifact_ref(ref: str) -> tuple[str, str, str, str]:
    """``wandb:<entity>/<project>/<artifact>:<alias>`` -> (entity, project, artifact, alias)."""
    body = ref[len(ARTIFACT_PREFIX):]
    path, _, alias = body.rpartition(":")
    parts = path.split("/") if path else []
    if len(parts) != 3 or not all(parts) or not alias or "/" in alias:
        raise ArtifactError(f"ckpt={ref}: not an artifact reference; expected {ARTIFACT_SYNTAX}")
    return parts[0], parts[1], parts[2], alias


def fetch_checkpoint(ref: str, root: Path, mode: str = "auto") -> Path:
    """Download the model artifact ``ref`` into ``root`` and return its checkpoint file.

    Refused at once, one line each, before any work and without waiting on the network: a malformed
    reference, W&B offline or disabled (``mode``/WANDB_MODE), no credentials, the server unreachable;
    an unknown artifact or one without a ``.pt`` file after the lookup."""
    entity, project, name, alias = parse_artifact_ref(ref)
    effective = resolve_wandb_mode(mode)
    if effective in ("offline", "disabled"):
        env = os.environ.get("WANDB_MODE")
        why = f"WANDB_MODE={env}" if env in ("offline", "disabled", "dryrun") else f"logger.mode={mode}"
        raise ArtifactError(f"ckpt={ref}: W&B is {effective} ({why}), so the artifact cannot be downloaded; "
                            f"download it where the network is (wandb artifact get {ref[len(ARTIFACT_PREFIX):]}) and "
                            f"pass ckpt=<path to its .pt file>, or set WANDB_MODE=online")
    base_url = _wandb_base_url()
    if not _has_wandb_credentials(urlsplit(base_url).hostname):
        raise ArtifactError(f"ckpt={ref}: no W&B credentials for {base_url} (WANDB_API_KEY or `wandb login`) to "
                            f"download the artifact; log in, or pass ckpt=<path to a .pt file>")
    _check_reachable(ref, base_url)
    artifact = _lookup_artifact(ref, f"{entity}/{project}/{name}:{alias}")
    if artifact.type != "model":
        console.warning(f"okd: warning: ckpt={ref}: artifact type {artifact.type!r}, not 'model'")
    folder = Path(artifact.download(root=str(root)))
    checkpoints = sorted(p for p in folder.rglob("*.pt") if p.is_file())
    preferred = [p for p in checkpoints if p.stem == alias]
    if len(preferred) == 1 or len(checkpoints) == 1:
        path = (preferred or checkpoints)[0]
        console.info(f"checkpoint {ref} ({artifact.name}, aliases {', '.join(artifact.aliases) or '-'}) "
                     f"downloaded to {path}")
        return path
    found = ", ".join(p.name for p in checkpoints) or "no .pt file"
    raise ArtifactError(f"ckpt={ref}: expected one checkpoint (.pt) in the artifact, found {found} in {folder}")


def _wandb_base_url() -> str:
    """The W&B server, as wandb resolves it (WANDB_BASE_URL, else ``wandb login --host``'s setting)."""
    try:
        from wandb import env
        from wandb.sdk import wandb_setup

        url = env.get_base_url(wandb_setup.singleton().settings.base_url)
    except Exception:  # noqa: BLE001  (an older or newer wandb: its documented default)
        url = os.environ.get("WANDB_BASE_URL")
    return str(url or "https://api.wandb.ai").rstrip("/")


def _check_reachable(ref: str, base_url: str, timeout: float = 5.0) -> None:
    """A TCP connection to the W&B server, within ``timeout`` seconds: no network is one line, not a hang."""
    import socket

    url = urlsplit(base_url)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
    except OSError as err:
        raise ArtifactError(f"ckpt={ref}: cannot reach the W&B server {base_url} ({err.strerror or err}); download "
                            f"the artifact where the network is and pass ckpt=<path to its .pt file>") from err


def _lookup_artifact(ref: str, name: str):
    """``wandb.Api().artifact(name)`` with a deadline: a server that does not answer ends with one line."""
    import threading

    result: dict[str, Any] = {}

    def lookup() -> None:
        try:
            import wandb

            result["artifact"] = wandb.Api(timeout=20).artifact(name)
        except Exception as err:  # noqa: BLE001  (reported below, with the reference)
            result["error"] = err

    thread = threading.Thread(target=lookup, daemon=True, name="okd-artifact-lookup")
    thread.start()
    thread.join(LOOKUP_TIMEOUT_S)
    if thread.is_alive():
        raise ArtifactError(f"ckpt={ref}: W&B did not answer within {LOOKUP_TIMEOUT_S} s; try again, or pass "
                            f"ckpt=<path to a .pt file>")
    if "error" in result:
        err = result["error"]
        message = " ".join(str(err).split()) or type(err).__name__
        message = message if len(message) <= 200 else message[:200] + "..."
        raise ArtifactError(f"ckpt={ref}: W&B could not give this artifact: unknown, no access, or the login failed "
                            f"({message}); expected {ARTIFACT_SYNTAX}") from err
    return result["artifact"]


class ArtifactError(OkdError, ValueError):
    """A ``ckpt=wandb:...`` reference that cannot be resolved."""


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
