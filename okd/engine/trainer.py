"""The training loop: epochs of train-then-evaluate, checkpoints, and result files.

The trainer knows no method by name. Per step it runs ONE student forward pass, computes the task
losses, asks the distiller for its extra loss (teachers train there), lets the weighting perform the
backward pass, and steps the optimizer. Per-step values stay on the device; the host syncs once per
epoch (and every ``log_every_n_steps`` for the progress bar).
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from okd import distributed
from okd.data.base import DataBundle
from okd.errors import OkdError
from okd.engine import preemption
from okd.engine.precision import Precision
from okd.engine.preemption import Preempted
from okd.engine import summary
from okd.engine.device import default_threads, select_device
from okd.engine.panels import log_panels
from okd.engine.sampler import ResumableRandomSampler
from okd.engine.checkpoint import check_model_state, load_checkpoint, rng_state, save_checkpoint, seed_everything, set_rng_state
from okd.kd.base import Distiller, NoDistillation
from okd.logging import (Logger, MemoryRecorder, NullLogger, Progress, RunRecorder, console, format_epoch_table,
                         tracker_config, writable_dir)
from okd.models.base import MultiTaskModel
from okd.tasks import Task, metric_directions
from okd.weighting.base import BoundModel, LossWeighting, Weighting

CHECKPOINT_VERSION = 1


@dataclass
class RunContext:
    """Everything a fit needs besides the trainer's own settings (built by okd.app)."""

    model: MultiTaskModel
    tasks: list[Task]
    data: DataBundle
    weighting: Weighting
    run_dir: Path
    distiller: Distiller = field(default_factory=NoDistillation)
    logger: Logger = field(default_factory=NullLogger)
    seed: int = 0
    config: dict = field(default_factory=dict)
    choices: dict = field(default_factory=dict)
    #: builds a fresh network of the configured backbone for a task list (teachers, STL baselines)
    build_model: Callable[[Sequence[Task]], MultiTaskModel] | None = None
    #: how results are compared with single-task baselines: last_n, stl_runs, reference (conf: delta)
    delta: dict = field(default_factory=dict)
    #: the run's command-line overrides (saved in checkpoints: a resume compares its own with them)
    overrides: list = field(default_factory=list)


class Trainer:
    """Epoch loop with Adam/StepLR-style optimizers given as factories (Hydra ``_partial_``)."""

    def __init__(
        self,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        epochs: int = 5,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool | None = None,
        persistent_workers: bool = True,
        device: str = "auto",
        resume: bool = False,
        monitor: str = "loss",
        eval_splits: Sequence[str] | None = None,
        progress: bool = True,
        log_every_n_steps: int = 25,
        deterministic: bool = False,
        drop_last: bool = False,
        checkpoint_every_n_steps: int = 0,
        nan_policy: str = "stop",
        requeue: bool = True,
        log_images: int = 4,
        precision: str | int = 32,
        channels_last: bool = False,
        cudnn_benchmark: bool = True,
        compile: bool | Mapping[str, Any] = False,
        threads: int | None = None,
    ) -> None:
        _check_positive("trainer.epochs", epochs)
        _check_positive("trainer.batch_size", batch_size)
        if eval_batch_size is not None:
            _check_positive("trainer.eval_batch_size", eval_batch_size)
        if num_workers < 0:
            raise ValueError(f"trainer.num_workers must be >= 0, got {num_workers}")
        _check_positive("trainer.log_every_n_steps", log_every_n_steps)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.epochs = epochs
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.device_name = device
        self.resume = resume
        self.monitor = monitor
        self.eval_splits = list(eval_splits) if eval_splits is not None else None
        self.progress = progress
        self.log_every_n_steps = log_every_n_steps
        self.deterministic = deterministic
        self.drop_last = drop_last
        if resume not in (True, False, "auto"):
            raise ValueError(f"trainer.resume must be true, false or auto, got {resume!r}")
        if not isinstance(checkpoint_every_n_steps, int) or checkpoint_every_n_steps < 0:
            raise ValueError(f"trainer.checkpoint_every_n_steps must be an integer >= 0 (0: at epoch ends "
                             f"only), got {checkpoint_every_n_steps!r}")
        if nan_policy not in ("stop", "skip"):
            raise ValueError(f"trainer.nan_policy must be 'stop' or 'skip', got {nan_policy!r}")
        if not isinstance(log_images, int) or log_images < 0:
            raise ValueError(f"trainer.log_images must be an integer >= 0, got {log_images!r}")
        self.log_images = log_images
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise ValueError(f"trainer.threads must be a positive integer or null (null: what the machine or "
                             f"launcher gives this job: OMP_NUM_THREADS, SLURM's cpus-per-task, the usable cores), "
                             f"got {threads!r}")
        self.threads = threads
        self.amp = Precision(precision)
        if not isinstance(compile, (bool, Mapping)):
            raise ValueError(f"trainer.compile must be true, false or a dict of torch.compile arguments "
                             f"(e.g. {{mode: max-autotune}}), got {compile!r}")
        self.compile = dict(compile) if isinstance(compile, Mapping) else ({} if compile else None)
        self.channels_last = channels_last
        self.cudnn_benchmark = cudnn_benchmark
        self.checkpoint_every_n_steps = checkpoint_every_n_steps
        self.nan_policy = nan_policy
        self.requeue = requeue
        self._signal: int | None = None
        self._manual_sync = False
        self.world_size, self.is_main = 1, True
        self._skipped_last = False
        self._in_epoch: dict | None = None
        self.skipped_steps = 0

    # ------------------------------------------------------------------------------------------
    def fit(self, ctx: RunContext) -> dict[str, Any]:
        """Train ``ctx.model`` and write metrics.jsonl, summary.json and checkpoints in ctx.run_dir."""
        self.setup(ctx)
        start_epoch, self.best, wandb_id = 0, None, None
        last = self.checkpoint_dir / "last.pt"
        resumed = self.resume is True or (self.resume == "auto" and last.is_file())
        if resumed:
            start_epoch, wandb_id = self._restore()
        ctx.logger.start(Path(ctx.run_dir), tracker_config(ctx.config, ctx.choices), resume_id=wandb_id,
                         metrics=self._tracked_metrics())
        self._announce(start_epoch)
        if not resumed:  # a resume in epoch 0 has warmed up already: its teachers are in the checkpoint
            ctx.distiller.warmup(self.train_loader)  # e.g. OKD's teachers train alone first
        started = time.perf_counter()
        epoch_times: list[float] = []
        exit_code = 1
        previous_handlers = preemption.install_handlers(self._on_signal)
        try:
            for epoch in range(start_epoch, self.epochs):
                epoch_times.append(self._run_epoch(epoch))
                signum = self._agreed_signal()
                if signum and epoch + 1 < self.epochs:  # arrived during evaluation: last.pt is this epoch's
                    raise Preempted(signum, epoch + 1, 0)
            result = summary.build(ctx, rows=self.recorder.rows(), best=self.best, last=getattr(self, "last_rows", {}),
                                   epochs=self.epochs, device=self.device, directions=self.directions,
                                   skipped_steps=self.skipped_steps, seconds=time.perf_counter() - started,
                                   epoch_times=epoch_times)
            self.recorder.write_summary(result)
            ctx.logger.summary(summary.flat(result))
            result = result.to_dict()  # fit returns summary.json's dict (okd.results.RunSummary.to_dict)
            if self.is_main:
                ctx.logger.log_checkpoints(self.checkpoint_dir)
            exit_code = 0
        except Preempted as stop:
            exit_code = stop.exit_code
            # the tracker first: a requeue makes SLURM end this job, the tracker's process included, at once
            ctx.logger.finish(exit_code)
            if self.is_main:
                preemption.after_save(stop, self.checkpoint_dir / "last.pt", self.requeue)
        finally:
            preemption.restore_handlers(previous_handlers)
            ctx.logger.finish(exit_code)
        if exit_code != 0:
            raise SystemExit(exit_code)
        self._farewell()
        return result

    def _tracked_metrics(self) -> dict[str, bool]:
        """Every per-epoch key the tracker receives with its direction (higher is better?)."""
        names = [t.name for t in self.ctx.tasks]
        out = {f"train/loss/{n}": False for n in names}
        for split in self.eval_loaders:
            out.update({f"{split}/loss": False, **{f"{split}/loss/{n}": False for n in names}})
            out.update({f"{split}/{metric}": higher for metric, higher in self.directions.items()})
        return out

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._signal = signum  # acted on at the end of the current step (under DDP: the next one)

    def _note_signal(self, agreed: int) -> bool:
        if agreed:
            self._signal = agreed  # also in a process that did not receive it itself
        return bool(agreed)

    def _agreed_signal(self) -> int:
        """The pending signal, agreed by every process under DDP (so that all of them stop at the
        same step), 0 for none."""
        signum = distributed.any_rank(self._signal or 0)
        if signum:
            self._signal = signum
        return signum

    def setup_model(self, ctx: RunContext) -> MultiTaskModel:
        """What evaluation and prediction need: the device, the model on it, precision, the metric
        directions (``mode=eval``/``predict`` call only this, then :meth:`eval_loader`)."""
        self.ctx = ctx
        self.device = distributed.device_for(select_device(self.device_name))
        torch.set_num_threads(self.threads or default_threads())
        self.world_size, self.is_main = distributed.world_size(), distributed.is_main()
        if not self.is_main:
            ctx.logger = NullLogger()  # rank 0 logs for the whole job
        self._validate(ctx)
        seed_everything(ctx.seed)
        if self.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        model = ctx.model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        if self.device.type == "cuda":
            # static shapes (fixed-size datasets): let cuDNN pick the fastest kernels once
            torch.backends.cudnn.benchmark = self.cudnn_benchmark and not self.deterministic
        self.amp.setup(self.device)
        self.eval_model: nn.Module = model
        self.directions = metric_directions(ctx.tasks)
        return model

    def setup(self, ctx: RunContext) -> None:
        """For training: :meth:`setup_model`, then bind weighting and distiller, build optimizer,
        scheduler and loaders."""
        model = self.setup_model(ctx)
        ctx.weighting.bind(BoundModel(
            task_names=[t.name for t in ctx.tasks],
            shared_parameters=model.shared_parameters(),
            task_parameters=model.task_parameters(),
            last_shared_parameters=model.last_shared_parameters(),
            reduce_gradients=distributed.average if self.world_size > 1 else None,
        ))
        ctx.weighting.to(self.device)
        ctx.distiller.setup(model, ctx.tasks, self.device, build_model=ctx.build_model)
        self.train_model = self._wrap_ddp(model)
        if self.compile is not None:
            self._compile()
        # fp16: one GradScaler for the student, its weighting's parameters and the distiller's optimizers
        ctx.distiller.grad_scaler = self.amp.scaler
        try:
            self.optimizer = self.optimizer_factory(
                [{"params": [p for p in model.parameters() if p.requires_grad]}]
                + ctx.distiller.student_param_groups()
                + ctx.weighting.param_groups()
            )
            self.scheduler = self.scheduler_factory(self.optimizer) if self.scheduler_factory else None
        except (ValueError, TypeError) as err:  # torch's own checks: "Invalid learning rate: -1.0", ...
            raise ValueError(f"trainer.optimizer/scheduler: {err} (see conf/trainer/default.yaml for valid "
                             f"settings: lr >= 0, weight_decay >= 0, ...)") from err
        self._hand_synced = self._hand_synced_parameters()
        self.recorder = RunRecorder(writable_dir(Path(ctx.run_dir))) if self.is_main else MemoryRecorder()
        self.checkpoint_dir = Path(ctx.run_dir) / "checkpoints"
        self.train_loader = self._loader(ctx.data.train, self.batch_size, shuffle=True)
        splits = self.eval_splits or list(ctx.data.eval_splits)
        self.eval_loaders = {s: self.eval_loader(s) for s in splits}
        self.best = None

    def _wrap_ddp(self, model: MultiTaskModel) -> nn.Module:
        """Under torchrun: DDP around the student (rank 0's weights everywhere from the start)."""
        if self.world_size == 1:
            return model
        # the weighting's and distiller's own parameters (UW's s, teachers, gates) start equal too
        distributed.broadcast_module_(self.ctx.weighting)
        distributed.broadcast_module_(self.ctx.distiller)
        # Methods that manipulate per-task gradients backpropagate K times: DDP's reducer must stay
        # out of it (no_sync); they average per-task gradients themselves, the trainer the result.
        self._manual_sync = not isinstance(self.ctx.weighting, LossWeighting)
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids, output_device=None if ids is None else ids[0])

    def _compile(self) -> None:
        """torch.compile the forward passes (training and evaluation; static shapes)."""
        options = {"dynamic": False, **self.compile}
        try:
            self.train_model = torch.compile(self.train_model, **options)
            self.eval_model = torch.compile(self.ctx.model, **options)
        except (TypeError, RuntimeError) as err:
            raise ValueError(f"trainer.compile={self.compile}: torch.compile rejected it: {err}") from err

    def _hand_synced_parameters(self) -> list[nn.Parameter]:
        """Parameters of the student's optimizer whose gradients DDP does not average: those outside
        the student (learnable weights, AFD gates), or all of them when the weighting runs no_sync."""
        if self.world_size == 1:
            return []
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        if self._manual_sync:
            return params
        inside = {id(p) for p in self.ctx.model.parameters()}
        return [p for p in params if id(p) not in inside]

    # ------------------------------------------------------------------------------------------
    def _run_epoch(self, epoch: int) -> float:
        ctx = self.ctx
        t0 = time.perf_counter()
        train_losses, train_weights, skipped = self._train_epoch(epoch, self._in_epoch)
        self._in_epoch = None
        ctx.weighting.on_epoch_end(epoch, train_losses, ctx.distiller.reference_losses())
        kd_logs = ctx.distiller.on_epoch_end(epoch)
        if self.scheduler is not None:
            with warnings.catch_warnings():
                # fp16: GradScaler may skip every step of an epoch (while it finds its scale); PyTorch
                # then warns that the scheduler stepped before the optimizer, which is expected here
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step", category=UserWarning)
                self.scheduler.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        train_time = time.perf_counter() - t0
        # Under DDP each process ran batch norm on its own shard: evaluate (and save) rank 0's statistics.
        distributed.broadcast_module_(ctx.model, buffers_only=True)

        names = [t.name for t in ctx.tasks]
        losses, weights = train_losses.tolist(), train_weights.tolist()
        for name, value in zip(names, losses):
            if not math.isfinite(value):
                raise FloatingPointError(
                    f"the training loss of task {name!r} is {value} in epoch {epoch}; stopping "
                    f"(last good checkpoint: {self.checkpoint_dir / 'last.pt'})")
        train_row = {f"loss/{n}": l for n, l in zip(names, losses)}
        train_row.update({f"weight/{n}": w for n, w in zip(names, weights)})
        train_row.update(kd_logs)
        train_row.update(ctx.weighting.epoch_logs())
        train_row["lr"] = self.optimizer.param_groups[0]["lr"]
        if self.nan_policy == "skip":
            train_row["skipped_steps"] = skipped
        rows = {"train": train_row}
        for split, loader in self.eval_loaders.items():
            rows[split] = {**self.evaluate(loader, split), **ctx.distiller.evaluate(loader)}
        epoch_time = time.perf_counter() - t0

        for split, values in rows.items():
            row = {"epoch": epoch, "split": split, **values}
            row["time_s"] = train_time if split == "train" else None
            if split == "train":
                row["epoch_time_s"] = epoch_time
            self.recorder.record(row)
        ctx.logger.log({f"{s}/{k}": v for s, vals in rows.items() for k, v in vals.items()
                        if isinstance(v, (int, float))} | {"epoch": epoch, "epoch_time_s": epoch_time},
                       step=epoch)
        self.last_rows = rows
        log_panels(ctx.logger, ctx.model, ctx.tasks, ctx.data, self.device, self.log_images, epoch)
        self._update_best(epoch, rows)
        self._save(epoch)
        if self.is_main:
            best = _best_label(self.best) if self._pending_best else None
            console.info(format_epoch_table(epoch, self.epochs, _console_rows(rows), epoch_time, best,
                                            ctx.data.info.get("depth_unit")))
        return epoch_time

    def _train_epoch(self, epoch: int, carry: dict | None = None) -> tuple[Tensor, Tensor, int]:
        """One pass over the training split; ``carry`` continues an epoch interrupted mid-way (it may
        have no batch left: a signal after the last step saves before the epoch's end).

        Returns the epoch-mean task losses and weights over the steps taken, and how many steps
        ``nan_policy=skip`` dropped in this epoch."""
        ctx, model = self.ctx, self.ctx.model
        model.train()
        ctx.distiller.train()
        k = len(ctx.tasks)
        if carry is None:
            carry = {"step": 0, "loss_sum": torch.zeros(k), "weight_sum": torch.zeros(k),
                     "first_bad": torch.full((k,), -1, dtype=torch.long), "skipped": 0}
        loss_sum = carry["loss_sum"].to(self.device)
        weight_sum = carry["weight_sum"].to(self.device)
        first_bad = carry["first_bad"].to(self.device)  # first non-finite step per task, on the device
        start = carry["step"]
        skipped = int(carry.get("skipped", 0))  # steps of this epoch dropped by nan_policy=skip
        self.train_sampler.set_epoch(epoch, start * self.batch_size)  # data order = f(seed, epoch)
        # worker seeds (augmentation) = f(seed, epoch) too; persistent workers keep theirs across epochs
        self.train_loader.generator.manual_seed(ctx.seed * 100_003 + epoch)
        bar = Progress(self.train_loader, f"epoch {epoch}", total=start + len(self.train_loader), initial=start,
                       enabled=self.progress and self.is_main)
        done = start  # steps of this epoch taken so far (including dropped ones)
        vote = distributed.SignalVote()
        for step, batch in enumerate(bar, start=start):
            images, targets = self._to_device(batch)
            detached, weights = self.training_step(images, targets)
            bad = ~torch.isfinite(detached)
            first_bad = torch.where((first_bad < 0) & bad, torch.full_like(first_bad, step), first_bad)
            done = step + 1
            if self.nan_policy == "skip" and self._skipped_last:
                skipped += 1  # a dropped step adds nothing to the means (but may still be signalled)
            else:
                loss_sum += torch.where(bad, 0.0, detached)
                weight_sum += weights
            # under DDP all processes learn of a signal one step later, at the same step (no wait)
            signalled = self._note_signal(vote.step(self._signal or 0))
            if done % self.log_every_n_steps == 0:  # one host sync per interval
                self._check_finite(first_bad, epoch)
                if self.progress and self.is_main and done > skipped:
                    bar.update(done, float(loss_sum.sum() / (done - skipped)))
            state = {"step": done, "loss_sum": loss_sum, "weight_sum": weight_sum, "first_bad": first_bad,
                     "skipped": skipped}
            if signalled or (self.checkpoint_every_n_steps and done % self.checkpoint_every_n_steps == 0
                             and done < len(self.train_loader) + start):
                self._check_finite(first_bad, epoch)
                self._save_mid_epoch(epoch, state)
                if signalled:
                    raise Preempted(self._signal, epoch, done)
        self._note_signal(vote.drain())  # the last step's vote; fit() acts on it after the epoch
        self._check_finite(first_bad, epoch)
        steps = done - skipped
        if steps <= 0:
            raise OkdError(f"epoch {epoch}: the training split yielded no usable batch (trainer.batch_size larger "
                           f"than the split with trainer.drop_last=true, or every step skipped as non-finite)")
        return loss_sum / steps, weight_sum / steps, skipped

    def _check_finite(self, first_bad: Tensor, epoch: int) -> None:
        if self.nan_policy == "skip":
            return
        steps = first_bad.tolist()
        bad = [(t.name, s) for t, s in zip(self.ctx.tasks, steps) if s >= 0]
        if bad:
            where = ", ".join(f"task {name!r} at step {s}" for name, s in bad)
            raise FloatingPointError(
                f"non-finite training loss in epoch {epoch}: {where}; stopping. The last good checkpoint is "
                f"{self.checkpoint_dir / 'last.pt'} (trainer.nan_policy=skip skips such steps instead)")

    def _save_mid_epoch(self, epoch: int, carry: dict) -> None:
        if not self.is_main:
            return
        state = self._state(epoch - 1)
        state["in_epoch"] = {"epoch": epoch, **{k: (v.cpu() if isinstance(v, Tensor) else v) for k, v in carry.items()}}
        save_checkpoint(self.checkpoint_dir / "last.pt", state)

    def training_step(self, images: Tensor, targets: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """One optimisation step: ONE student forward, the weighting's backward, the optimizer step.

        Returns the detached (K,) task losses and the (K,) weights used, both left on the device.
        """
        ctx = self.ctx
        with distributed.no_sync(self.train_model, self._manual_sync):
            with self.amp.autocast():
                out = self.train_model(images)
                losses = torch.stack([t.loss(out.predictions[t.name], targets[t.name]).float() for t in ctx.tasks])
                losses = distributed.global_values(losses)  # whole-batch values under DDP (identity otherwise)
                extra = ctx.distiller.training_step(images, targets, out)
            self.optimizer.zero_grad(set_to_none=True)
            representation = out.features[ctx.model.representation_key] if ctx.weighting.needs_representation else None
            # fp16: the weighting scales what it backpropagates by S (and unscales what it reasons about)
            scale = self.amp.loss_scale()
            weights = ctx.weighting.backward(losses, extra_loss=extra, representation=representation,
                                             **({"loss_scale": scale} if scale is not None else {}))
        distributed.average_gradients_(self._hand_synced)
        self._skipped_last = False
        if self.nan_policy == "skip" and not self._all_finite(losses):
            # the one per-step host sync this policy needs: the step is dropped before it changes anything
            self.optimizer.zero_grad(set_to_none=True)
            self._skipped_last = True
            self.skipped_steps += 1
            return losses.detach(), weights
        stepped = self.amp.step(self.optimizer)
        detached = losses.detach()
        if stepped:  # an fp16 overflow leaves the weighting's state (e.g. FAMO's) where it was
            ctx.weighting.after_step(detached, recompute_losses=self._recompute(images, targets))
        ctx.distiller.after_step()
        self.amp.update()
        return detached, weights

    def _all_finite(self, losses: Tensor) -> bool:
        if self.amp.scaler is not None:  # fp16: overflowing gradients are the scaler's business (it skips them)
            return bool(torch.isfinite(losses.detach()).all())
        grads = [p.grad for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
        norms = torch.stack([losses.detach().sum()] + [g.norm() for g in grads]) if grads else losses.detach()
        return bool(torch.isfinite(norms).all())

    def _recompute(self, images: Tensor, targets: Mapping[str, Tensor]) -> Callable[[], Tensor]:
        """Losses of the same batch after the step (only methods that ask pay the forward pass)."""
        def recompute() -> Tensor:
            with torch.no_grad(), self.amp.autocast():
                out = self.ctx.model(images)
                losses = torch.stack([t.loss(out.predictions[t.name], targets[t.name]) for t in self.ctx.tasks])
            return distributed.average(losses)
        return recompute

    @torch.inference_mode()
    def evaluate(self, loader: DataLoader, split: str = "eval") -> dict[str, float]:
        """Task losses and split-level metrics of the current model on one split."""
        model, tasks = self.eval_model, self.ctx.tasks
        self.ctx.model.eval()
        metrics = {t.name: t.metric() for t in tasks}
        loss_sum = torch.zeros(len(tasks), device=self.device, dtype=torch.float64)
        count = 0
        for batch in loader:
            images, targets = self._to_device(batch)
            with self.amp.autocast():
                out = model(images)
            out.predictions.update({k: v.float() for k, v in out.predictions.items()})
            n = images.shape[0]
            for i, t in enumerate(tasks):
                pred, target = out.predictions[t.name], targets[t.name]
                loss_sum[i] += t.loss(pred, target).double() * n
                metrics[t.name].update(pred, target)
            count += n
        # under DDP: every process evaluated its shard; summing the accumulators gives the split's numbers
        count = distributed.reduce_evaluation_(loss_sum, count, metrics.values())
        row: dict[str, float] = {}
        for i, t in enumerate(tasks):
            row[f"loss/{t.name}"] = float(loss_sum[i] / max(count, 1))
            for m, v in metrics[t.name].compute().items():
                row[f"{t.name}/{m}"] = v
        row["loss"] = sum(row[f"loss/{t.name}"] for t in tasks) / len(tasks)
        return row

    # ------------------------------------------------------------------------------------------
    def _to_device(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        nb = self.device.type == "cuda"
        images = batch["image"].to(self.device, non_blocking=nb)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        targets = {t.name: batch[t.name].to(self.device, non_blocking=nb) for t in self.ctx.tasks}
        return images, targets

    def eval_loader(self, split: str) -> DataLoader:
        """The loader of one evaluation split (under DDP: this process's shard of it)."""
        return self._loader(self.ctx.data.eval_splits[split], self.eval_batch_size, shuffle=False)

    def _loader(self, dataset: Dataset, batch_size: int, shuffle: bool) -> DataLoader:
        pin = self.device.type == "cuda" if self.pin_memory is None else self.pin_memory
        rank, world = distributed.rank(), distributed.world_size()
        if shuffle:
            sampler = ResumableRandomSampler(len(dataset), self.ctx.seed, rank, world)
        else:  # evaluation: this process's shard, no padding (every sample counted once)
            sampler = distributed.ShardSampler(len(dataset), rank, world) if world > 1 else None
        if shuffle:
            self.train_sampler = sampler
        return DataLoader(
            dataset, batch_size=batch_size, sampler=sampler, num_workers=self.num_workers,
            pin_memory=pin, persistent_workers=self.persistent_workers,
            drop_last=self.drop_last and shuffle,
            # worker seeds (augmentation) come from this generator: a function of the run seed
            generator=torch.Generator().manual_seed(self.ctx.seed),
        )

    def _validate(self, ctx: RunContext) -> None:
        available = set(ctx.data.eval_splits)
        for split in self.eval_splits or []:
            if split not in available:
                raise ValueError(f"trainer.eval_splits: {split!r} is not a split of dataset "
                                 f"{ctx.data.name!r} (available: {sorted(available)})")
        if ctx.data.select_split not in (self.eval_splits or available):
            raise ValueError(f"the model-selection split {ctx.data.select_split!r} is not evaluated; "
                             f"add it to trainer.eval_splits")
        if ctx.weighting.needs_representation:
            _ = ctx.model.representation_key  # soft-sharing models raise a clear error here, before training
        if ctx.weighting.needs_reference_losses and not ctx.distiller.provides_reference_losses:
            raise ValueError(
                f"weighting {type(ctx.weighting).__name__} needs teacher losses, but kd="
                f"{ctx.choices.get('kd', type(ctx.distiller).__name__)} provides none; use kd=okd "
                f"(online teachers) or another weighting")
        if self.world_size > 1:
            self._validate_distributed(ctx)
        if self.compile is not None and ctx.weighting.needs_representation:
            raise ValueError(
                f"trainer.compile=true with weighting {ctx.choices.get('weighting', type(ctx.weighting).__name__)}: "
                f"this method backpropagates to the shared representation first and through the encoder "
                f"afterwards, but a compiled network is one autograd node that can only be differentiated "
                f"as a whole; use trainer.compile=false or the method's parameter-level variant")
        directions = metric_directions(ctx.tasks)
        if self.monitor != "loss" and self.monitor not in directions:
            raise ValueError(f"trainer.monitor={self.monitor!r} is not a metric of these tasks; use 'loss' "
                             f"or one of {sorted(directions)}")

    def _validate_distributed(self, ctx: RunContext) -> None:
        n = self.world_size
        if ctx.weighting.needs_representation:
            raise ValueError(
                f"weighting {ctx.choices.get('weighting', type(ctx.weighting).__name__)} works on the gradients of the "
                f"shared representation, which are per sample: under DDP ({n} processes) each process only has its "
                f"shard's, and the method's solution on the whole batch cannot be formed from them. Run it in one "
                f"process, or use its parameter-gradient variant (e.g. weighting=mgda, weighting=alignedmtl); see the "
                f"README's DDP section for the list")
        for split, dataset in {"train": ctx.data.train, **ctx.data.eval_splits}.items():
            if len(dataset) < n:
                raise ValueError(f"split {split!r} of {ctx.data.name!r} has {len(dataset)} samples, fewer than the "
                                 f"{n} processes of this DDP job")

    def _update_best(self, epoch: int, rows: Mapping[str, Mapping[str, float]]) -> None:
        split = self.ctx.data.select_split
        value = rows[split][self.monitor]
        higher = self.directions.get(self.monitor, False)
        better = (self.best is None or (value > self.best["value"] if higher else value < self.best["value"]))
        if better and math.isfinite(value):
            self.best = {"epoch": epoch, "split": split, "monitor": self.monitor, "value": value,
                         "metrics": {s: dict(r) for s, r in rows.items()}}
            self._pending_best = True
        else:
            self._pending_best = False

    def _state(self, epoch: int) -> dict[str, Any]:
        ctx = self.ctx
        return {
            "version": CHECKPOINT_VERSION,
            "epoch": epoch,
            "model": ctx.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "weighting": ctx.weighting.checkpoint_state(),
            "grad_scaler": self.amp.state_dict(),
            "distiller": ctx.distiller.checkpoint_state(),
            "rng": rng_state(),
            "best": self.best,
            "skipped_steps": self.skipped_steps,  # nan_policy=skip: steps dropped so far in the run
            "wandb_id": ctx.logger.run_id,
            "tasks": [t.name for t in ctx.tasks],
            "num_classes": ctx.data.num_classes,
            "choices": dict(ctx.choices),
            "metrics": {s: dict(r) for s, r in getattr(self, "last_rows", {}).items()},
            # the run's resolved config: a resume continues with it (okd/app.py), mode=eval/predict
            # rebuild the model from its dataset and backbone without other flags
            "config": ctx.config,
            "overrides": list(ctx.overrides),
            "class_names": list(ctx.data.info.get("class_names") or []),
        }

    def _save(self, epoch: int) -> None:
        if not self.is_main:
            return  # every process holds the same weights; rank 0 writes them
        state = self._state(epoch)
        save_checkpoint(self.checkpoint_dir / "last.pt", state)
        if self._pending_best:
            save_checkpoint(self.checkpoint_dir / "best.pt", state)

    def _restore(self) -> tuple[int, str | None]:
        path = self.checkpoint_dir / "last.pt"
        if not path.is_file():
            raise FileNotFoundError(
                f"trainer.resume=true but there is no checkpoint at {path}; point the run at the run "
                f"directory to resume, e.g. `python run.py trainer.resume=true hydra.run.dir=<run dir>`")
        state = load_checkpoint(path, map_location=self.device)
        self.load_model_state(state, path)
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.ctx.weighting.load_checkpoint_state(state["weighting"])
        self.amp.load_state_dict(state.get("grad_scaler"))
        self.ctx.distiller.load_checkpoint_state(state["distiller"])
        set_rng_state(state["rng"])
        self.best = state["best"]
        self.skipped_steps = int(state.get("skipped_steps", 0))
        self.recorder.truncate_after(state["epoch"])
        self._in_epoch = state.get("in_epoch")
        if not self.is_main:
            pass
        elif self._in_epoch is not None:
            console.info(f"resuming from {path} in epoch {self._in_epoch['epoch']} after step {self._in_epoch['step']}")
        else:
            console.info(f"resuming from {path} after epoch {state['epoch']}")
        return state["epoch"] + 1, state.get("wandb_id")

    def load_model_state(self, state: dict[str, Any], path: Path) -> None:
        """Load a checkpoint's weights into the model, with every mismatch named."""
        ctx = self.ctx
        names = [t.name for t in ctx.tasks]
        if state.get("tasks") != names:
            raise ValueError(f"checkpoint {path} was trained on tasks {state.get('tasks')}; this run has {names} "
                             f"(set dataset.tasks to match)")
        check_model_state(ctx.model, state["model"], path,
                          {**state.get("choices", {}), "num_classes": state.get("num_classes")},
                          {**ctx.choices, "num_classes": ctx.data.num_classes} if ctx.choices else None)
        ctx.model.load_state_dict(state["model"])

    def _announce(self, start_epoch: int) -> None:
        ctx = self.ctx
        if not self.is_main:
            return
        ddp = f" x {self.world_size} processes (DDP)" if self.world_size > 1 else ""
        console.info(f"okd: {ctx.data.name} ({len(ctx.data.train)} train samples), tasks {[t.name for t in ctx.tasks]}, "
              f"{type(ctx.model).__name__} with {ctx.model.num_parameters():,} parameters, "
              f"weighting {type(ctx.weighting).__name__}, kd {type(ctx.distiller).__name__}, "
              f"device {self.device}{ddp}, {torch.get_num_threads()} CPU thread(s), epochs {start_epoch}..{self.epochs - 1}")

    def _farewell(self) -> None:
        ctx = self.ctx
        if not self.is_main:
            return
        if self.best is not None:
            # the run's result in one line: the chosen epoch and the report split's numbers there
            report = ctx.data.report_split
            cells = format_epoch_table(self.best["epoch"], self.epochs, _console_rows(
                {report: self.best["metrics"].get(report, {})}), 0.0, None, ctx.data.info.get("depth_unit"))
            console.info(f"best: epoch {self.best['epoch'] + 1}/{self.epochs}, chosen by {_best_label(self.best)}; "
                         f"{report} there:\n" + "\n".join(cells.splitlines()[1:]))
        console.info(f"results: {Path(ctx.run_dir) / 'summary.json'} and metrics.jsonl; "
              f"checkpoints: {self.checkpoint_dir}; logger: {ctx.logger.describe()}")


def _check_positive(name: str, value: int) -> None:
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _best_label(best: Mapping[str, Any]) -> str:
    return f"{best['split']} {best['monitor']} {best['value']:.4g}"


def _console_rows(rows: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """Keep the console compact: losses and weights for train, metrics for evaluation splits."""
    out = {}
    for split, values in rows.items():
        # the student's numbers only; teacher/AFD/gate values are in metrics.jsonl and W&B
        if split == "train":
            out[split] = {k: v for k, v in values.items() if k.startswith(("loss/", "weight/"))}
        else:
            out[split] = {k: v for k, v in values.items() if not k.startswith(("loss", "teacher/"))}
    return out
