"""The one training loop every task uses.

:class:`Trainer` runs epochs of ``task.loss`` → backward → optimizer step with the ``train:``
config's schedule, AMP, gradient clipping, accumulation and EMA; validates every
``val_every`` epochs with ``task.evaluate``; writes ``last.pt`` every epoch and ``best.pt``
when ``task.best_metric`` improves (both atomically); logs one line per epoch and keeps
``metrics.jsonl`` / ``metrics.csv`` and a PNG of the curves in the run folder.

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
from cvkit.engine import distributed
from cvkit.engine.callbacks import Callback
from cvkit.engine.checkpoint import (
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from cvkit.engine.ema import ModelEMA
from cvkit.engine.history import MetricsHistory, plot_curves
from cvkit.engine.optim import build_optimizer, build_scheduler
from cvkit.engine.rundir import RunDir
from cvkit.engine.tasks import Task
from cvkit.errors import CheckpointError, ConfigError, CvkitError
from cvkit.logs import get_logger, progress

logger = get_logger("train")


class NonFiniteLossError(CvkitError, FloatingPointError):
    """A loss became NaN or infinite; the message names the epoch, step, batch and values."""


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
        callbacks: :class:`~cvkit.engine.callbacks.Callback` objects called at each hook;
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
        self.ema = ModelEMA(self.model, cfg.ema_decay) if cfg.ema else None
        self.train_model: nn.Module = self.model
        if distributed.is_distributed():
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = DistributedDataParallel(self.model, device_ids=ids)
        self.epoch = 0
        self.step = 0
        self.best_score = -math.inf
        self.best_epoch = 0
        self.best_metrics: dict[str, float] = {}
        self.metrics: dict[str, float] = {}
        self.stale_validations = 0
        self.callbacks = list(callbacks)
        names = [callback.name for callback in self.callbacks]
        if len(set(names)) != len(names):
            raise ConfigError(f"callbacks: names must differ, got {names}")
        self.history = None
        if run is not None and self.is_main:
            self.history = MetricsHistory(run.metrics_jsonl, run.metrics_csv)

    @property
    def eval_model(self) -> nn.Module:
        """The weights that are validated and deployed: the EMA when kept, else the model."""
        return self.ema.module if self.ema is not None else self.model

    def fit(self) -> dict[str, float]:
        """Train the remaining epochs; returns the validation metrics of ``best.pt``.

        Without validation returns the metrics of the last epoch's training losses.

        Raises:
            NonFiniteLossError: a loss became NaN or infinite (training stops at that step).
        """
        cfg = self.config.train
        if self.is_main:
            logger.info(
                "training %s for %d epochs (%d steps/epoch) on %s%s",
                self.task.name or type(self.task).__name__,
                cfg.epochs,
                self.steps_per_epoch,
                self.device,
                f", AMP {self.amp_dtype}" if self.amp_dtype else "",
            )
        train_row: dict[str, float] = {}
        self._call("on_train_start")
        for epoch in range(self.epoch, cfg.epochs):
            self._call("on_epoch_start", epoch)
            train_row = self.train_one_epoch(epoch)
            self.epoch = epoch + 1
            validate = self.val_loader is not None and (
                self.epoch % cfg.val_every == 0 or self.epoch == cfg.epochs
            )
            improved = self._validate() if validate else False
            stop = bool(distributed.broadcast_object(self._should_stop(validate)))
            row: dict[str, Any] = {"epoch": self.epoch, "step": self.step, **train_row}
            if validate and self.is_main:
                row.update({f"val/{key}": value for key, value in self.metrics.items()})
                self._call("on_validation_end", self.metrics)
            self._call("on_epoch_end", row)  # before the checkpoint, which saves its state
            if self.is_main:
                self._end_epoch(row, train_row, validate, improved)
            distributed.barrier()
            if stop:
                logger.info(
                    "early stop: no better %s for %d validations",
                    self.task.best_metric,
                    self.stale_validations,
                )
                break
        if self.is_main and self.run is not None and self.history is not None and cfg.plots:
            best = f"val/{self.task.best_metric}"
            metrics = sorted(
                {
                    k
                    for row in self.history.rows
                    for k in row
                    if k.startswith(best) and k.count("/") == 1
                }
            )
            plot_curves(self.history.rows, self.run.plots / "curves.png", metrics)
        result = self.best_metrics or dict(train_row)
        self._call("on_train_end", result)
        return result

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
            desc = f"epoch {epoch + 1}/{cfg.epochs}"
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
                values = self._loss_values(losses, total, epoch, index, batch)
                self.scaler.scale(total / cfg.accumulate).backward()
            batch_info = {"epoch": epoch, "batch": index, "step": self.step, "losses": values}
            self._call("on_batch_end", batch_info)
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
        if self.ema is not None:
            self.ema.update(self.model)

    def _loss_values(
        self,
        losses: dict[str, torch.Tensor],
        total: torch.Tensor,
        epoch: int,
        index: int,
        batch: Any,
    ) -> dict[str, float]:
        """Loss values (averaged over processes); raises on NaN/inf before any update."""
        names = [*losses, "loss"]
        stacked = torch.stack([v.detach().float() for v in (*losses.values(), total)])
        numbers = distributed.mean_across_processes(stacked).tolist()
        values = dict(zip(names, numbers, strict=True))
        if not all(math.isfinite(v) for v in values.values()):
            shown = ", ".join(f"{k}={v:.6g}" for k, v in values.items())
            raise NonFiniteLossError(
                f"non-finite loss at epoch {epoch + 1}, step {self.step}, batch {index} "
                f"({_describe_batch(batch)}): {shown}; lower train.lr or set train.grad_clip"
            )
        return values

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
            self.stale_validations = 0
        else:
            self.stale_validations += 1
        return improved

    def _should_stop(self, validated: bool) -> bool:
        patience = self.config.train.patience
        return validated and patience is not None and self.stale_validations >= patience

    def _end_epoch(
        self, row: dict[str, Any], train_row: dict[str, float], validated: bool, improved: bool
    ) -> None:
        cfg = self.config.train
        losses = " ".join(
            f"{key.removeprefix('train/')} {value:.4f}"
            for key, value in train_row.items()
            if key.startswith("train/")
        )
        message = (
            f"epoch {self.epoch}/{cfg.epochs} {losses} lr {train_row['lr']:.3g} "
            f"{train_row['img_per_s']:.1f} img/s"
        )
        if validated:
            message += f" | val {self.task.describe(self.metrics)}"
        logger.info(message)
        if self.history is not None:
            self.history.append(row)
        if self.run is not None:
            checkpoint = self.checkpoint()
            save_checkpoint(checkpoint, self.run.last)
            if improved:
                save_checkpoint(checkpoint, self.run.best)

    def checkpoint(self) -> dict[str, Any]:
        """Everything needed to deploy the model or resume training exactly."""
        return {
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "config": config_to_dict(self.config),
            "classes": self.classes,
            "category_ids": self.category_ids,
            "epoch": self.epoch,
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": capture_rng_state(),
            "metrics": self.metrics,
            "best_metrics": self.best_metrics,
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "stale_validations": self.stale_validations,
            "callbacks": {callback.name: callback.state_dict() for callback in self.callbacks},
        }

    def resume(self, path: str | Path) -> None:
        """Continue from a ``last.pt`` checkpoint written by this trainer.

        Raises:
            CheckpointError: unreadable file, or state that does not fit this model/optimizer.
        """
        checkpoint = load_checkpoint(path, map_location=self.device)
        if "optimizer" not in checkpoint or "rng" not in checkpoint:
            raise CheckpointError(f"{path}: holds weights only; cannot resume training from it")
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
        if self.ema is not None and checkpoint.get("ema"):
            self.ema.load_state_dict(checkpoint["ema"])
        elif self.ema is not None:  # EMA switched on at resume: start it from the loaded weights
            self.ema = ModelEMA(self.model, self.config.train.ema_decay)
        restore_rng_state(checkpoint["rng"])
        self.epoch = int(checkpoint["epoch"])
        self.step = int(checkpoint["step"])
        self.metrics = dict(checkpoint.get("metrics") or {})
        self.best_metrics = dict(checkpoint.get("best_metrics") or {})
        self.best_score = float(checkpoint.get("best_score", -math.inf))
        self.best_epoch = int(checkpoint.get("best_epoch", 0))
        self.stale_validations = int(checkpoint.get("stale_validations", 0))
        states = checkpoint.get("callbacks") or {}
        for callback in self.callbacks:
            if callback.name in states:
                callback.load_state_dict(states[callback.name])
        if self.history is not None:
            self.history.resume(self.epoch)
        if self.is_main:
            logger.info("resumed from %s at epoch %d, step %d", path, self.epoch, self.step)

    def _seed_loader(self, epoch: int) -> None:
        """Make the epoch's shuffling and augmentation seeds a function of (seed, epoch)."""
        loader = self.train_loader
        sampler = getattr(loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        seed = self.config.seed * 100_003 + epoch
        for generator in (getattr(loader, "generator", None), getattr(sampler, "generator", None)):
            if isinstance(generator, torch.Generator):
                generator.manual_seed(seed)


def _describe_batch(batch: Any) -> str:
    images, targets = (
        batch if isinstance(batch, tuple | list) and len(batch) == 2 else (batch, None)
    )
    text = f"images {tuple(images.shape)}" if isinstance(images, torch.Tensor) else "batch"
    if isinstance(targets, list) and targets and isinstance(targets[0], dict):
        ids = [t.get("image_id") for t in targets]
        if any(i is not None for i in ids):
            text += f", image ids {[int(i) if torch.is_tensor(i) else i for i in ids]}"
    return text
