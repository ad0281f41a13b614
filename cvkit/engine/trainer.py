"""The one training loop every task uses.

:class:`Trainer` runs epochs of ``task.loss`` → backward → optimizer step with the ``train:``
config's schedule, AMP, gradient clipping and accumulation; validates every ``val_every``
epochs with ``task.evaluate`` and tracks the best ``task.best_metric``; logs one line per
epoch. Everything else is a callback (:mod:`cvkit.engine.callbacks.builtin`, installed from the
config around the user's own): the NaN/inf loss stop, EMA, early stopping, the
``metrics.jsonl``/``metrics.csv`` rows and curves, and ``last.pt``/``best.pt`` (atomic).
A model with a non-gradient part (R-CNN's SVMs) defines ``fit_stage(train_loader, device)``:
it runs after each epoch that is validated and after the last one, before validation.

Under ``torchrun`` the model is wrapped in DistributedDataParallel (BatchNorm synchronised on
CUDA); the loader should use a DistributedSampler (``task.build_loader(..., distributed=True)``).
Only rank 0 logs, validates and writes files; the others wait for it.

Resuming from ``last.pt`` restores weights, optimizer, scheduler, AMP scaler, EMA, the RNG
states, the epoch/step counters and callback states, and each epoch re-seeds the loader's
generator from ``seed`` and the epoch number, so a resumed run's losses equal an uninterrupted
run's.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from cvkit.config import Config, config_to_dict
from cvkit.data.sampling import multi_sample_epoch
from cvkit.engine import distributed
from cvkit.engine.callbacks import Callback
from cvkit.engine.callbacks.builtin import (
    EMA,
    MetricsLogger,
    NonFiniteLossError,
    default_callbacks,
)
from cvkit.engine.checkpoint import capture_rng_state, load_checkpoint, restore_rng_state
from cvkit.engine.ema import ModelEMA
from cvkit.engine.history import MetricsHistory
from cvkit.engine.optim import build_optimizer, build_scheduler
from cvkit.engine.rundir import RunDir
from cvkit.engine.tasks import Task
from cvkit.errors import CheckpointError, ConfigError
from cvkit.logs import get_logger, progress

__all__ = ["NonFiniteLossError", "Trainer", "resolve_amp"]

logger = get_logger("train")


def resolve_amp(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``train.amp`` on ``device`` (None: full float32).

    ``auto`` is bfloat16 on CUDA GPUs that support it, else float16, and off on the CPU.

    Raises:
        ConfigError: ``bf16``/``fp16`` asked for on a device that cannot run it.
    """
    if device.type != "cuda":
        if mode in ("bf16", "fp16"):
            raise ConfigError(f"train.amp: {mode!r} needs a CUDA device, got {device}; use auto")
        return None
    if mode == "off":
        return None
    if mode == "fp16":
        return torch.float16
    bf16 = torch.cuda.is_bf16_supported()
    if mode == "bf16" and not bf16:
        raise ConfigError(f"train.amp: 'bf16' is not supported by {device}; use fp16 or auto")
    return torch.bfloat16 if bf16 else torch.float16


def use_channels_last(mode: bool | str, device: torch.device, model: nn.Module) -> bool:
    """``train.channels_last``: ``auto`` is on for a model with 2-D convolutions trained on the
    CPU, where oneDNN's channels-last kernels are faster (measured in
    ``benchmarks/results/train.md``), and off on CUDA (where AMP picks its own layouts)."""
    if mode != "auto":
        return bool(mode)
    return device.type == "cpu" and any(isinstance(m, nn.Conv2d) for m in model.modules())


class Trainer:
    """Trains ``model`` on ``train_loader`` for ``config.train.epochs`` epochs.

    Args:
        config: the resolved config (``train:`` drives the loop, ``seed`` the loader seeds).
        task: the task that computes losses and validation metrics.
        model: the model to train (moved to ``device``; wrapped in DDP under torchrun).
        train_loader: batches for ``task.loss``.
        val_loader: batches for ``task.evaluate``; None skips validation and ``best.pt``.
        run: the run folder for checkpoints, metrics and plots; None writes nothing.
        device: where to train (default: the model's current device).
        classes: class names saved in checkpoints (default: ``train_loader.dataset.classes``).
        category_ids: COCO category id of each class, or None.
        callbacks: the user's :class:`~cvkit.engine.callbacks.Callback` objects, called at
            each hook after the loss check and EMA and before early stopping, the metrics
            files and the checkpoints (:func:`~cvkit.engine.callbacks.builtin.default_callbacks`);
            their states are saved in checkpoints under their names.
    """

    def __init__(
        self,
        config: Config,
        task: Task,
        model: nn.Module,
        train_loader: DataLoader,
        val_loader: DataLoader | None = None,
        run: RunDir | None = None,
        device: torch.device | None = None,
        classes: list[str] | None = None,
        category_ids: list[int] | None = None,
        callbacks: Iterable[Callback] = (),
    ) -> None:
        cfg = config.train
        self.config = config
        self.task = task
        self.device = device or next(model.parameters()).device
        self.model = model.to(self.device)
        self.channels_last = use_channels_last(cfg.channels_last, self.device, self.model)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.train_loader = train_loader
        self.val_loader = val_loader
        self.run = run
        dataset = train_loader.dataset
        self.classes = list(classes if classes is not None else getattr(dataset, "classes", []))
        self.category_ids = category_ids
        if category_ids is None and getattr(dataset, "category_ids", None) is not None:
            self.category_ids = list(dataset.category_ids)
        self.is_main = distributed.is_main_process()
        if distributed.is_distributed() and self.device.type == "cuda":
            # batch statistics over the whole global batch, as in single-GPU training
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.optimizer = build_optimizer(self.model, cfg)
        self.steps_per_epoch = math.ceil(len(train_loader) / cfg.accumulate)
        self.scheduler = build_scheduler(self.optimizer, cfg, self.steps_per_epoch)
        self.amp_dtype = resolve_amp(cfg.amp, self.device)
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.amp_dtype == torch.float16
        )
        self.train_model: nn.Module = self.model
        if distributed.is_distributed():
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = DistributedDataParallel(self.model, device_ids=ids)
        self.epochs = cfg.epochs
        self.epoch = 0
        self.step = 0
        self.best_score = -math.inf
        self.best_epoch = 0
        self.best_metrics: dict[str, float] = {}
        self.metrics: dict[str, float] = {}
        self.improved = False
        self.stop_requested = False
        self.callbacks = default_callbacks(config, run if self.is_main else None, list(callbacks))
        names = [callback.name for callback in self.callbacks]
        if len(set(names)) != len(names):
            raise ConfigError(f"callbacks: names must differ, got {names}")
        self._call("setup")

    def _callback(self, kind: type[Callback]) -> Any:
        return next((c for c in self.callbacks if isinstance(c, kind)), None)

    @property
    def ema(self) -> ModelEMA | None:
        """The EMA of the weights (``train.ema``), else None."""
        callback = self._callback(EMA)
        return callback.ema if callback is not None else None

    @property
    def history(self) -> MetricsHistory | None:
        """The run's metric rows (rank 0 with a run folder), else None."""
        callback = self._callback(MetricsLogger)
        return callback.history if callback is not None else None

    @property
    def eval_model(self) -> nn.Module:
        """The weights that are validated and deployed: the EMA when kept, else the model."""
        ema = self.ema
        return ema.module if ema is not None else self.model

    def fit(self) -> dict[str, float]:
        """Train the remaining epochs; returns the validation metrics of ``best.pt``.

        Without validation returns the metrics of the last epoch's training losses.

        Raises:
            NonFiniteLossError: a loss became NaN or infinite (training stops at that step).
        """
        cfg = self.config.train
        if self.is_main:
            logger.info(
                "training %s for %d epochs (%d steps/epoch) on %s (%d threads, %d loader "
                "workers%s%s)",
                self.task.name or type(self.task).__name__,
                self.epochs,
                self.steps_per_epoch,
                self.device,
                torch.get_num_threads(),
                getattr(self.train_loader, "num_workers", 0),
                ", channels-last" if self.channels_last else "",
                f", AMP {self.amp_dtype}" if self.amp_dtype else "",
            )
        train_row: dict[str, float] = {}
        self._call("on_train_start")
        epoch = self.epoch
        while epoch < self.epochs:
            self._call("on_epoch_start", epoch)
            train_row = self.train_one_epoch(epoch)
            self.epoch = epoch + 1
            self._call("on_train_epoch_end", train_row)
            validate = self.val_loader is not None and (
                self.epoch % cfg.val_every == 0 or self.epoch == self.epochs
            )
            fit_stage = getattr(self.model, "fit_stage", None)
            if fit_stage is not None and (validate or self.epoch >= self.epochs):
                # a model's non-gradient part (R-CNN's SVMs) is fitted on these weights
                fit_stage(self.train_loader, self.device)
            self.improved = self._validate() if validate else False
            row: dict[str, Any] = {"epoch": self.epoch, "step": self.step, **train_row}
            if validate and self.is_main:
                row.update({f"val/{key}": value for key, value in self.metrics.items()})
                self._call("on_validation_end", self.metrics)
            if self.is_main:
                self._log_epoch(train_row, validate)
            self._call("on_epoch_end", row)
            stop = bool(distributed.broadcast_object(self.stop_requested))
            distributed.barrier()
            if stop:
                break
            epoch = self.epoch
        result = self.best_metrics or dict(train_row)
        # hand the model back in the layout it came in (and that a reloaded checkpoint has)
        self.model.to(memory_format=torch.contiguous_format)
        self._call("on_train_end", result)
        return result

    def set_epochs(self, epochs: int) -> None:
        """Train ``epochs`` epochs in total instead (at least the ones done); the LR schedule
        is rebuilt for the new length and continues from the current step."""
        self.epochs = max(int(epochs), self.epoch)
        cfg = self.config.train.model_copy(update={"epochs": max(self.epochs, 1)})
        schedule = build_scheduler(self.optimizer, cfg, self.steps_per_epoch)
        state = dict(self.scheduler.state_dict())
        state["lr_lambdas"] = [None] * len(schedule.lr_lambdas)
        schedule.load_state_dict(state)
        # building the scheduler reset every group to the schedule's step-0 rate: the next
        # optimizer step must use the new schedule's rate at the current step instead
        groups = self.optimizer.param_groups
        for group, base_lr, multiplier in zip(
            groups, schedule.base_lrs, schedule.lr_lambdas, strict=True
        ):
            group["lr"] = base_lr * multiplier(schedule.last_epoch)
        self.scheduler = schedule

    def _call(self, hook: str, *args: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(self, *args)

    def train_one_epoch(self, epoch: int) -> dict[str, float]:
        """One pass over the training loader.

        Returns:
            ``train/<loss>`` means over the epoch's batches (``train/loss`` is their sum),
            ``lr`` at the end of the epoch, ``img_per_s`` (all processes) and ``epoch_time_s``.
        """
        cfg = self.config.train
        loader = self.train_loader
        self._seed_loader(epoch)
        self.train_model.train()
        self.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, float] = {}
        images = 0
        batches = len(loader)
        start = time.perf_counter()
        done = 0

        def status() -> str:
            rate = images * distributed.world_size() / max(time.perf_counter() - start, 1e-9)
            lr = self.optimizer.param_groups[0]["lr"]
            return f"loss {sums.get('loss', 0.0) / max(done, 1):.4f} lr {lr:.3g} {rate:.1f} img/s"

        iterator: Iterable[Any] = loader
        if self.is_main:
            desc = f"epoch {epoch + 1}/{self.epochs}"
            iterator = progress(loader, total=batches, desc=desc, status=status)
        for index, batch in enumerate(iterator):
            batch = self.task.to_device(batch, self.device)
            images += self.task.batch_size(batch)
            step_now = (index + 1) % cfg.accumulate == 0 or index + 1 == batches
            sync = nullcontext()
            if isinstance(self.train_model, DistributedDataParallel) and not step_now:
                sync = self.train_model.no_sync()
            with sync:
                with torch.autocast(
                    self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None
                ):
                    losses = self.task.loss(self.train_model, batch)
                total = sum(losses.values())
                values = self._loss_values(losses, total)
                batch_info = {
                    "epoch": epoch,
                    "batch": index,
                    "step": self.step,
                    "losses": values,
                    "inputs": batch,
                }
                # before backward: a NaN check stops here with the weights and grads untouched
                self._call("on_batch_end", batch_info)
                self.scaler.scale(total / cfg.accumulate).backward()
            if step_now:
                self._optimizer_step()
                lr = self.optimizer.param_groups[0]["lr"]
                info = {"epoch": epoch, "step": self.step, "batch": index, "lr": lr}
                self._call("on_step_end", {**info, "losses": values})
            for key, value in values.items():
                sums[key] = sums.get(key, 0.0) + value
            done += 1
        elapsed = max(time.perf_counter() - start, 1e-9)
        row = {f"train/{key}": value / max(batches, 1) for key, value in sums.items()}
        row["lr"] = self.optimizer.param_groups[0]["lr"]
        row["img_per_s"] = images * distributed.world_size() / elapsed
        row["epoch_time_s"] = elapsed
        return row

    def _optimizer_step(self) -> None:
        cfg = self.config.train
        if cfg.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step += 1

    def _loss_values(
        self, losses: dict[str, torch.Tensor], total: torch.Tensor
    ) -> dict[str, float]:
        """Loss values as floats, averaged over processes; ``loss`` is their sum."""
        names = [*losses, "loss"]
        stacked = torch.stack([v.detach().float() for v in (*losses.values(), total)])
        numbers = distributed.mean_across_processes(stacked).tolist()
        return dict(zip(names, numbers, strict=True))

    def _validate(self) -> bool:
        """Evaluate on rank 0; returns whether ``best_metric`` improved."""
        if not self.is_main:
            return False
        model = self.eval_model
        was_training = model.training
        model.eval()
        with torch.no_grad():
            self.metrics = self.task.evaluate(model, self.val_loader, self.device)
        model.train(was_training)
        score = self.metrics.get(self.task.best_metric, math.nan)
        improved = math.isfinite(score) and score > self.best_score
        if improved:
            self.best_score = score
            self.best_epoch = self.epoch
            self.best_metrics = dict(self.metrics)
        return improved

    def _log_epoch(self, train_row: dict[str, float], validated: bool) -> None:
        losses = " ".join(
            f"{key.removeprefix('train/')} {value:.4f}"
            for key, value in train_row.items()
            if key.startswith("train/")
        )
        message = (
            f"epoch {self.epoch}/{self.epochs} {losses} lr {train_row['lr']:.3g} "
            f"{train_row['img_per_s']:.1f} img/s"
        )
        if validated:
            message += f" | val {self.task.describe(self.metrics)}"
        logger.info(message)

    def checkpoint(self) -> dict[str, Any]:
        """Everything needed to deploy the model or resume training exactly."""
        checkpoint: dict[str, Any] = {
            "model": self.model.state_dict(),
            "ema": None,
            "config": config_to_dict(self.config),
            "classes": self.classes,
            "category_ids": self.category_ids,
            "epoch": self.epoch,
            "step": self.step,
            "world_size": distributed.world_size(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": capture_rng_state(),
            "metrics": self.metrics,
            "best_metrics": self.best_metrics,
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "callbacks": {},
        }
        for callback in self.callbacks:
            state = callback.state_dict()
            if callback.checkpoint_key is not None:
                checkpoint[callback.checkpoint_key] = state
            elif state:
                checkpoint["callbacks"][callback.name] = state
        return checkpoint

    def resume(self, path: str | Path) -> None:
        """Continue from a ``last.pt`` checkpoint written by this trainer.

        Raises:
            CheckpointError: unreadable file, state that does not fit this model/optimizer, or a
                checkpoint of a job with another number of processes (world size).
        """
        checkpoint = load_checkpoint(path, map_location=self.device)
        if "optimizer" not in checkpoint or "rng" not in checkpoint:
            raise CheckpointError(f"{path}: holds weights only; cannot resume training from it")
        # Steps per epoch, the schedule's position and the batch each step averages all depend
        # on the number of processes: continuing with another number would silently change them.
        saved_world = checkpoint.get("world_size")
        if saved_world is not None and saved_world != distributed.world_size():
            raise CheckpointError(
                f"{path}: written by a job of {saved_world} processes, resumed with "
                f"{distributed.world_size()}; resume with the same --nnodes x --nproc-per-node, "
                f"or start a new run from these weights: --set model.pretrained={path}"
            )
        try:
            self.model.load_state_dict(checkpoint["model"])
            self.optimizer.load_state_dict(checkpoint["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise CheckpointError(f"{path}: does not fit this model and optimizer: {exc}") from None
        scheduler_state = dict(checkpoint["scheduler"])
        # The schedule's shape comes from the current config (e.g. more epochs), not the file.
        scheduler_state["lr_lambdas"] = [None] * len(self.scheduler.lr_lambdas)
        self.scheduler.load_state_dict(scheduler_state)
        self.scaler.load_state_dict(checkpoint["scaler"])
        restore_rng_state(checkpoint["rng"])
        self.epoch = int(checkpoint["epoch"])
        self.step = int(checkpoint["step"])
        self.metrics = dict(checkpoint.get("metrics") or {})
        self.best_metrics = dict(checkpoint.get("best_metrics") or {})
        self.best_score = float(checkpoint.get("best_score", -math.inf))
        self.best_epoch = int(checkpoint.get("best_epoch", 0))
        states = checkpoint.get("callbacks") or {}
        self._call("setup")  # start again from the loaded weights (e.g. an EMA switched on now)
        for callback in self.callbacks:
            key = callback.checkpoint_key
            state = checkpoint.get(key) if key is not None else states.get(callback.name)
            if state:
                callback.load_state_dict(state)
        if self.is_main:
            logger.info("resumed from %s at epoch %d, step %d", path, self.epoch, self.step)

    def _seed_loader(self, epoch: int) -> None:
        """Make the epoch's shuffling and augmentation seeds a function of (seed, epoch), and
        switch multi-sample transforms (mosaic, mixup) off for the last ``data.close_mosaic``."""
        loader = self.train_loader
        sampler = getattr(loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        if hasattr(sampler, "multi_sample"):
            close = self.config.data.close_mosaic
            sampler.multi_sample = multi_sample_epoch(epoch, self.epochs, close)
        seed = self.config.seed * 100_003 + epoch
        for generator in (getattr(loader, "generator", None), getattr(sampler, "generator", None)):
            if isinstance(generator, torch.Generator):
                generator.manual_seed(seed)
