"""The training loop: ``fit`` runs epochs of train-then-evaluate and calls the parts that do the rest.

The trainer knows no method by name. Per step it runs ONE student forward pass, computes the task
losses, asks the distiller for its extra loss (teachers train there), lets the weighting perform the
backward pass, and steps the optimizer. Per-step values stay on the device; the host syncs once per
epoch (and every ``log_every_n_steps`` for the progress bar). Every other concern is a part in its
own module of okd/engine/, named after it (docs/architecture.md#where-things-live).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from okd import distributed
from okd.engine import console, preemption, summary
from okd.engine.checkpoint import Checkpointer, load_training_state, seed_everything, training_state
from okd.engine.checks import check_run, check_settings
from okd.engine.context import RunContext
from okd.engine.evaluation import evaluate_split
from okd.engine.device import compile_forward, default_threads, place_model, select_device
from okd.engine.loaders import batch_to_device, make_loader
from okd.engine.nan_policy import NanPolicy
from okd.engine.optimizer import build_optimizer
from okd.engine.panels import log_panels
from okd.engine.precision import Precision
from okd.engine.preemption import Preempted, SignalFlag
from okd.engine.strategy import Strategy
from okd.errors import OkdError
from okd.logging import (MemoryRecorder, NullLogger, Progress, RunRecorder, tracked_metrics, tracker_config,
                         writable_dir)
from okd.models.base import MultiTaskModel
from okd.tasks import metric_directions
from okd.weighting.base import BoundModel


class Trainer:
    """Epoch loop with optimizer and scheduler given as factories (Hydra ``_partial_``)."""

    def __init__(self, optimizer: Callable[..., torch.optim.Optimizer], scheduler: Callable[..., Any] | None = None,
                 epochs: int = 5, batch_size: int = 8, eval_batch_size: int | None = None, num_workers: int = 0,
                 pin_memory: bool | None = None, persistent_workers: bool = True, device: str = "auto",
                 resume: bool | str = False, eval_splits: Sequence[str] | None = None, progress: bool = True,
                 log_every_n_steps: int = 25, deterministic: bool = False, drop_last: bool = False,
                 checkpoint_every_n_steps: int = 0, nan_policy: str = "stop", requeue: bool = True,
                 log_images: int = 4, precision: str | int = 32, channels_last: bool = False,
                 cudnn_benchmark: bool = True, compile: bool | Mapping[str, Any] = False,
                 threads: int | None = None) -> None:
        check_settings(epochs=epochs, batch_size=batch_size, eval_batch_size=eval_batch_size, num_workers=num_workers,
                       log_every_n_steps=log_every_n_steps, checkpoint_every_n_steps=checkpoint_every_n_steps,
                       log_images=log_images, threads=threads, resume=resume, compile=compile)
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.epochs, self.batch_size, self.eval_batch_size = epochs, batch_size, eval_batch_size or batch_size
        self.loader_settings = {"num_workers": num_workers, "pin_memory": pin_memory,
                                "persistent_workers": persistent_workers and num_workers > 0}
        self.drop_last, self.device_name, self.threads, self.resume = drop_last, device, threads, resume
        self.eval_splits = list(eval_splits) if eval_splits is not None else None
        self.progress, self.log_every_n_steps, self.log_images = progress, log_every_n_steps, log_images
        self.deterministic, self.channels_last, self.cudnn_benchmark = deterministic, channels_last, cudnn_benchmark
        self.compile = dict(compile) if isinstance(compile, Mapping) else ({} if compile else None)
        self.checkpoint_every_n_steps, self.requeue = checkpoint_every_n_steps, requeue
        # the parts (each is its own module); model, loaders and optimizer arrive in setup()
        self.amp = Precision(precision)
        self.nan = NanPolicy(nan_policy)
        self.signal = SignalFlag()
        self.strategy = Strategy()
        self.skipped_steps = 0         # nan_policy=skip: steps dropped so far in the run
        self._skipped_last = False     # was the last training step dropped?
        self._in_epoch: dict | None = None  # a resumed epoch's progress (mid-epoch checkpoint)
        self.last_rows: dict[str, dict[str, float]] = {}

    @property
    def is_main(self) -> bool:
        return self.strategy.is_main

    @property
    def world_size(self) -> int:
        return self.strategy.world_size

    # -- setup ----------------------------------------------------------------------------------------
    def setup_model(self, ctx: RunContext) -> MultiTaskModel:
        """What evaluation and prediction need: the device, the model on it, precision, the metric
        directions (``mode=eval``/``predict`` call only this, then :meth:`eval_loader`)."""
        self.ctx = ctx
        self.device = distributed.device_for(select_device(self.device_name))
        torch.set_num_threads(self.threads or default_threads())
        self.strategy.setup()
        if not self.is_main:
            ctx.logger = NullLogger()  # rank 0 logs for the whole job
        seed_everything(ctx.seed)
        model = place_model(ctx.model, self.device, channels_last=self.channels_last,
                            cudnn_benchmark=self.cudnn_benchmark, deterministic=self.deterministic)
        self.amp.setup(self.device)
        self.eval_model: nn.Module = model
        self.directions = metric_directions(ctx.tasks)
        return model

    def setup(self, ctx: RunContext) -> None:
        """For training: :meth:`setup_model`, the checks, then weighting and distiller bound, optimizer,
        scheduler, loaders and checkpointer built."""
        model = self.setup_model(ctx)
        splits = self.eval_splits or list(ctx.data.eval_splits)
        check_run(ctx, self.eval_splits, self.compile is not None)
        self.strategy.check(ctx)
        ctx.selection.bind(self.directions, ctx.data.select_split, splits)
        ctx.weighting.bind(BoundModel(
            task_names=[t.name for t in ctx.tasks], shared_parameters=model.shared_parameters(),
            task_parameters=model.task_parameters(), last_shared_parameters=model.last_shared_parameters(),
            reduce_gradients=distributed.average if self.world_size > 1 else None))
        ctx.weighting.to(self.device)
        ctx.distiller.setup(model, ctx.tasks, self.device, build_model=ctx.build_model)
        self.train_model = self.strategy.wrap(model, ctx.weighting, ctx.distiller, self.device)
        if self.compile is not None:  # the forward passes of training and evaluation
            self.train_model, self.eval_model = compile_forward(self.train_model, self.compile), compile_forward(
                model, self.compile)
        ctx.distiller.grad_scaler = self.amp.scaler  # fp16: one GradScaler for everything the step updates
        self.optimizer, self.scheduler = build_optimizer(self.optimizer_factory, self.scheduler_factory, [
            {"params": [p for p in model.parameters() if p.requires_grad]}, *ctx.distiller.student_param_groups(),
            *ctx.weighting.param_groups()])
        self.strategy.track_parameters(self.optimizer, model)
        self.recorder = RunRecorder(writable_dir(Path(ctx.run_dir))) if self.is_main else MemoryRecorder()
        self.checkpoints = Checkpointer(Path(ctx.run_dir) / "checkpoints", self.checkpoint_every_n_steps, self.is_main)
        self.checkpoint_dir = self.checkpoints.directory
        self.train_loader = make_loader(ctx.data.train, self.batch_size, shuffle=True, seed=ctx.seed,
                                        device=self.device, drop_last=self.drop_last, **self.loader_settings)
        self.eval_loaders = {s: self.eval_loader(s) for s in splits}

    def eval_loader(self, split: str) -> DataLoader:
        """The loader of one evaluation split (under DDP: this process's shard of it)."""
        return make_loader(self.ctx.data.eval_splits[split], self.eval_batch_size, shuffle=False, seed=self.ctx.seed,
                           device=self.device, **self.loader_settings)

    # -- the loop -------------------------------------------------------------------------------------
    def fit(self, ctx: RunContext) -> dict[str, Any]:
        """Train ``ctx.model`` and write metrics.jsonl, summary.json and checkpoints in ctx.run_dir."""
        self.setup(ctx)
        resumed = self.resume is True or (self.resume == "auto" and self.checkpoints.last.is_file())
        start_epoch, wandb_id = self._restore() if resumed else (0, None)
        ctx.logger.start(Path(ctx.run_dir), tracker_config(ctx.config, ctx.choices), resume_id=wandb_id,
                         metrics=tracked_metrics([t.name for t in ctx.tasks], self.eval_loaders, self.directions))
        if self.is_main:
            console.announce(ctx, self.device, self.world_size, start_epoch, self.epochs)
        if not resumed:  # a resume in epoch 0 has warmed up already: its teachers are in the checkpoint
            ctx.distiller.warmup(self.train_loader)  # e.g. OKD's teachers train alone first
        started, epoch_times, exit_code = time.perf_counter(), [], 1
        previous_handlers = preemption.install_handlers(self.signal)
        try:
            for epoch in range(start_epoch, self.epochs):
                epoch_times.append(self._run_epoch(epoch))
                if self.signal.agree() and epoch + 1 < self.epochs:  # during evaluation: last.pt is this epoch's
                    raise Preempted(self.signal.signum, epoch + 1, 0)
            result = summary.build(ctx, rows=self.recorder.rows(), best=ctx.selection.best, last=self.last_rows,
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
                preemption.after_save(stop, self.checkpoints.last, self.requeue)
        finally:
            preemption.restore_handlers(previous_handlers)
            ctx.logger.finish(exit_code)
        if exit_code != 0:
            raise SystemExit(exit_code)
        if self.is_main:
            console.farewell(ctx, ctx.selection, self.epochs, self.checkpoint_dir)
        return result

    def _run_epoch(self, epoch: int) -> float:
        """Train, step the schedules, evaluate every split, then record, log, select and save."""
        ctx, t0 = self.ctx, time.perf_counter()
        train_losses, train_weights, skipped = self._train_epoch(epoch, self._in_epoch)
        self._in_epoch = None
        ctx.weighting.on_epoch_end(epoch, train_losses, ctx.distiller.reference_losses())
        kd_logs = ctx.distiller.on_epoch_end(epoch)
        if self.scheduler is not None:
            self.amp.step_scheduler(self.scheduler)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        train_time = time.perf_counter() - t0
        # Under DDP each process ran batch norm on its own shard: evaluate (and save) rank 0's statistics.
        distributed.broadcast_module_(ctx.model, buffers_only=True)
        rows = {"train": self._train_row(epoch, train_losses, train_weights, skipped, kd_logs)}
        for split, loader in self.eval_loaders.items():
            rows[split] = {**self.evaluate(loader, split), **ctx.distiller.evaluate(loader)}
        epoch_time = time.perf_counter() - t0
        for split, values in rows.items():
            extra = {"time_s": train_time, "epoch_time_s": epoch_time} if split == "train" else {"time_s": None}
            self.recorder.record({"epoch": epoch, "split": split, **values, **extra})
        ctx.logger.log({f"{s}/{k}": v for s, vals in rows.items() for k, v in vals.items()
                        if isinstance(v, (int, float))} | {"epoch": epoch, "epoch_time_s": epoch_time}, step=epoch)
        self.last_rows = rows
        log_panels(ctx.logger, ctx.model, ctx.tasks, ctx.data, self.device, self.log_images, epoch)
        improved = ctx.selection.update(epoch, rows)
        if self.is_main:
            self.checkpoints.save(training_state(self, epoch), best=improved)
            console.epoch_table(ctx, epoch, self.epochs, rows, epoch_time, ctx.selection.label() if improved else None)
        return epoch_time

    def _train_row(self, epoch: int, losses: Tensor, weights: Tensor, skipped: int, kd_logs: dict) -> dict:
        names = [t.name for t in self.ctx.tasks]
        losses, weights = losses.tolist(), weights.tolist()
        self.nan.check_means(losses, names, epoch, self.checkpoints.last)
        row = {f"loss/{n}": v for n, v in zip(names, losses)} | {f"weight/{n}": w for n, w in zip(names, weights)}
        row.update(kd_logs)
        row.update(self.ctx.weighting.epoch_logs())
        row["lr"] = self.optimizer.param_groups[0]["lr"]
        if self.nan.skip:
            row["skipped_steps"] = skipped
        return row

    def _train_epoch(self, epoch: int, carry: dict | None = None) -> tuple[Tensor, Tensor, int]:
        """One pass over the training split; ``carry`` continues an epoch interrupted mid-way (it may
        have no batch left: a signal after the last step saves before the epoch's end).

        Returns the epoch-mean task losses and weights over the steps taken, and how many steps
        ``nan_policy=skip`` dropped in this epoch."""
        ctx, k = self.ctx, len(self.ctx.tasks)
        ctx.model.train()
        ctx.distiller.train()
        carry = carry or {"step": 0, "loss_sum": torch.zeros(k), "weight_sum": torch.zeros(k),
                          "first_bad": torch.full((k,), -1, dtype=torch.long), "skipped": 0}
        state = {"step": carry["step"], "skipped": int(carry.get("skipped", 0)),
                 **{key: carry[key].to(self.device) for key in ("loss_sum", "weight_sum", "first_bad")}}
        start, names = carry["step"], [t.name for t in ctx.tasks]
        self.train_loader.sampler.set_epoch(epoch, start * self.batch_size)  # data order = f(seed, epoch)
        # worker seeds (augmentation) = f(seed, epoch) too; persistent workers keep theirs across epochs
        self.train_loader.generator.manual_seed(ctx.seed * 100_003 + epoch)
        end = start + len(self.train_loader)
        bar = Progress(self.train_loader, f"epoch {epoch}", total=end, initial=start,
                       enabled=self.progress and self.is_main)
        vote = distributed.SignalVote()
        for step, batch in enumerate(bar, start=start):
            detached, weights = self.training_step(*self.to_device(batch))
            bad = ~torch.isfinite(detached)
            first_bad = state["first_bad"]  # first non-finite step per task, on the device
            state["first_bad"] = torch.where((first_bad < 0) & bad, torch.full_like(first_bad, step), first_bad)
            state["step"] = done = step + 1
            if self.nan.skip and self._skipped_last:
                state["skipped"] += 1  # a dropped step adds nothing to the means (but may still be signalled)
            else:
                state["loss_sum"] += torch.where(bad, 0.0, detached)
                state["weight_sum"] += weights
            # under DDP all processes learn of a signal one step later, at the same step (no wait)
            signalled = self.signal.note(vote.step(self.signal.signum))
            if done % self.log_every_n_steps == 0:  # one host sync per interval
                self.nan.check(state["first_bad"], names, epoch, self.checkpoints.last)
                if self.progress and self.is_main and done > state["skipped"]:
                    bar.update(done, float(state["loss_sum"].sum() / (done - state["skipped"])))
            if signalled or self.checkpoints.due(done, end):
                self.nan.check(state["first_bad"], names, epoch, self.checkpoints.last)
                if self.is_main:
                    self.checkpoints.save_mid_epoch(training_state(self, epoch - 1), epoch, state)
                if signalled:
                    raise Preempted(self.signal.signum, epoch, done)
        self.signal.note(vote.drain())  # the last step's vote; fit() acts on it after the epoch
        self.nan.check(state["first_bad"], names, epoch, self.checkpoints.last)
        steps = state["step"] - state["skipped"]
        if steps <= 0:
            raise OkdError(f"epoch {epoch}: the training split yielded no usable batch (trainer.batch_size larger "
                           f"than the split with trainer.drop_last=true, or every step skipped as non-finite)")
        return state["loss_sum"] / steps, state["weight_sum"] / steps, state["skipped"]

    def training_step(self, images: Tensor, targets: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """One optimisation step: ONE student forward, the weighting's backward, the optimizer step.

        Returns the detached (K,) task losses and the (K,) weights used, both left on the device.
        """
        ctx = self.ctx
        with self.strategy.no_sync(self.train_model):
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
        self.strategy.sync_gradients()
        self._skipped_last = self.nan.skip and not self.nan.step_is_finite(losses, self.optimizer,
                                                                           self.amp.scaler is not None)
        if self._skipped_last:  # dropped before it changes anything
            self.optimizer.zero_grad(set_to_none=True)
            self.skipped_steps += 1
            return losses.detach(), weights
        stepped = self.amp.step(self.optimizer)
        detached = losses.detach()
        if stepped:  # an fp16 overflow leaves the weighting's state (e.g. FAMO's) where it was
            ctx.weighting.after_step(detached, recompute_losses=self._recompute(images, targets))
        ctx.distiller.after_step()
        self.amp.update()
        return detached, weights

    def _recompute(self, images: Tensor, targets: Mapping[str, Tensor]) -> Callable[[], Tensor]:
        """Losses of the same batch after the step (only methods that ask pay the forward pass)."""
        def recompute() -> Tensor:
            with torch.no_grad(), self.amp.autocast():
                out = self.ctx.model(images)
                losses = torch.stack([t.loss(out.predictions[t.name], targets[t.name]) for t in self.ctx.tasks])
            return distributed.average(losses)
        return recompute

    def evaluate(self, loader: DataLoader, split: str = "eval") -> dict[str, float]:
        """Task losses, their mean (``loss``) and split-level metrics of the current model on one split."""
        self.ctx.model.eval()

        def predict(images: Tensor) -> Mapping[str, Tensor]:
            with self.amp.autocast():
                return self.eval_model(images).predictions

        row = evaluate_split(predict, self.ctx.tasks, map(self.to_device, loader), self.device)
        row["loss"] = sum(row[f"loss/{t.name}"] for t in self.ctx.tasks) / len(self.ctx.tasks)
        return row

    def to_device(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        return batch_to_device(batch, [t.name for t in self.ctx.tasks], self.device, self.channels_last)

    def _restore(self) -> tuple[int, str | None]:
        """Load last.pt into every part (okd/engine/checkpoint.py); returns the first epoch to run and
        the tracker's run id."""
        state = self.checkpoints.load_last(self.device)
        load_training_state(self, state)
        self._in_epoch = state.get("in_epoch")  # a mid-epoch checkpoint: where that epoch continues
        if self.is_main:
            console.resuming(self.checkpoints.last, state)
        return state["epoch"] + 1, state.get("wandb_id")
