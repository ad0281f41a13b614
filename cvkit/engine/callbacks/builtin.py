"""The callbacks every training run gets from its config (:func:`default_callbacks`).

- :class:`NonFiniteLossStop`: a NaN/inf loss stops training at that batch, before any update.
- :class:`EMA`: ``train.ema`` keeps an exponential moving average of the weights
  (:class:`~cvkit.engine.ema.ModelEMA`); the trainer validates and deploys it.
- :class:`TimeBudget`: ``train.time`` minutes: the epochs and the LR schedule are re-fitted
  after every epoch so the run ends within the budget (Ultralytics' ``time=``).
- :class:`AdaptThreads`: after each epoch the compute threads follow the cores other
  processes left free during it (:mod:`cvkit.resources`); ``cvkit train`` adds it when
  ``train.threads`` and ``OMP_NUM_THREADS`` are unset.
- :class:`EarlyStopping`: ``train.patience`` validations without a better ``best_metric`` stop.
- :class:`MetricsLogger`: ``metrics.jsonl``/``metrics.csv`` rows and ``plots/curves.png``.
- :class:`Checkpointer`: ``weights/last.pt`` every epoch, ``weights/best.pt`` on improvement.

The trainer runs them around the user's callbacks: the loss check, EMA and time budget before,
the rest after, so the
checkpoint written at the end of an epoch holds every callback's state.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cvkit.engine import distributed
from cvkit.engine.callbacks import Callback
from cvkit.engine.checkpoint import save_checkpoint
from cvkit.engine.ema import ModelEMA
from cvkit.engine.history import MetricsHistory, plot_curves
from cvkit.errors import CvkitError
from cvkit.logs import get_logger
from cvkit.resources import LoadMonitor, threads_for

if TYPE_CHECKING:
    from cvkit.config import Config
    from cvkit.engine.rundir import RunDir
    from cvkit.engine.trainer import Trainer

logger = get_logger("train")


class NonFiniteLossError(CvkitError, FloatingPointError):
    """A training loss became NaN or infinite."""


class NonFiniteLossStop(Callback):
    """Raise :class:`NonFiniteLossError` naming the epoch, step, batch, its images and the
    values as soon as a batch's loss is NaN or infinite (before the optimizer step)."""

    name = "non_finite_loss"

    def on_batch_end(self, trainer: Trainer, batch_info: dict[str, Any]) -> None:
        """Check ``batch_info["losses"]`` (averaged over processes, so every rank agrees)."""
        values = batch_info["losses"]
        if all(math.isfinite(value) for value in values.values()):
            return
        shown = ", ".join(f"{key}={value:.6g}" for key, value in values.items())
        raise NonFiniteLossError(
            f"non-finite loss at epoch {batch_info['epoch'] + 1}, step {batch_info['step']}, "
            f"batch {batch_info['batch']} ({describe_batch(batch_info['inputs'])}): {shown}; "
            "lower train.lr or set train.grad_clip"
        )


class EMA(Callback):
    """An exponential moving average of the trained weights, updated after each step.

    Its state is the checkpoint's top-level ``ema`` (``{"module", "updates"}``), which
    :func:`cvkit.models.loading.inference_state_dict` deploys.

    Args:
        decay: ``train.ema_decay``.
    """

    name = "ema"
    checkpoint_key = "ema"

    def __init__(self, decay: float) -> None:
        self.decay = decay
        self.ema: ModelEMA | None = None

    def setup(self, trainer: Trainer) -> None:
        """Start the average from the trainer's (unwrapped) model."""
        self.ema = ModelEMA(trainer.model, self.decay)

    def on_step_end(self, trainer: Trainer, step_info: dict[str, Any]) -> None:
        """Blend the new weights in."""
        self.ema.update(trainer.model)

    def state_dict(self) -> dict[str, Any]:
        """The averaged weights and update count."""
        return self.ema.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the average (a run resumed with EMA newly on keeps the fresh copy)."""
        if state:
            self.ema.load_state_dict(state)


class TimeBudget(Callback):
    """Fit the run into ``minutes`` of wall-clock time.

    After each epoch the mean epoch time of this session predicts how many more epochs fit in
    what is left of the budget; the trainer's epoch count and LR schedule are re-fitted to that
    (:meth:`~cvkit.engine.trainer.Trainer.set_epochs`), and training stops once the budget is
    spent. The plan is made before each epoch's validation, so the epoch the budget ends is
    validated (and can become ``best.pt``).
    The time already used is saved, so a resumed run keeps to the same budget. Rank 0's clock
    decides for every process.

    Args:
        minutes: ``train.time``.
        clock: seconds as a float (default :func:`time.monotonic`; tests pass a fake one).
    """

    name = "time_budget"

    def __init__(self, minutes: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.budget = minutes * 60.0
        self.clock = clock
        self.used = 0.0
        self.planned: int | None = None
        self.start = 0.0
        self.first_epoch = 0

    def on_train_start(self, trainer: Trainer) -> None:
        """Start this session's clock (and re-apply a resumed run's planned epochs)."""
        self.start = self.clock()
        self.first_epoch = trainer.epoch
        if self.planned is not None:
            trainer.set_epochs(self.planned)

    def on_train_epoch_end(self, trainer: Trainer, train_row: dict[str, float]) -> None:
        """Re-fit the number of epochs to the time left, before this epoch's validation (so
        the epoch the budget ends is validated)."""
        session = self.clock() - self.start
        spent = self.used + session
        per_epoch = session / max(trainer.epoch - self.first_epoch, 1)
        left = max(self.budget - spent, 0.0)
        planned = trainer.epoch + (int(left // per_epoch) if per_epoch > 0 else 0)
        planned = int(distributed.broadcast_object(planned))
        if planned != trainer.epochs:
            logger.info(
                "train.time: %.1f of %.1f min used, %.1f s/epoch: %d epochs in total",
                spent / 60,
                self.budget / 60,
                per_epoch,
                planned,
            )
            trainer.set_epochs(planned)
        self.planned = planned

    def state_dict(self) -> dict[str, Any]:
        """Seconds used so far and the planned epoch count."""
        return {"used": self.used + self.clock() - self.start, "planned": self.planned}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the used time and the plan."""
        self.used = float(state.get("used", 0.0))
        planned = state.get("planned")
        self.planned = None if planned is None else int(planned)


class AdaptThreads(Callback):
    """Keep torch's compute threads to the cores other processes leave free.

    After each training epoch the cores other processes used during it
    (:class:`~cvkit.resources.LoadMonitor`) give the thread count for the next one
    (:func:`~cvkit.resources.threads_for`): a second CPU-bound job started beside training
    costs it one core, not every parallel op's speed. Threads change only between epochs.
    Float reductions round differently on another thread count, so a run resumed on another
    count is not bit-identical to an uninterrupted one: set ``train.threads`` for that.
    """

    name = "adapt_threads"

    def __init__(self) -> None:
        self.monitor: LoadMonitor | None = None

    def on_train_start(self, trainer: Trainer) -> None:
        """Start measuring."""
        self.monitor = LoadMonitor()

    def on_train_epoch_end(self, trainer: Trainer, train_row: dict[str, float]) -> None:
        """Re-plan the thread count from the load of the epoch that ended."""
        import torch

        busy = self.monitor.sample() if self.monitor is not None else None
        if busy is None:
            return
        # the loader's workers run beside the compute threads on the free cores
        threads = max(1, threads_for(busy) - trainer.train_loader.num_workers)
        if threads != torch.get_num_threads():
            logger.info(
                "other processes kept %.1f cores busy: training on %d threads", busy, threads
            )
            torch.set_num_threads(threads)


class EarlyStopping(Callback):
    """Stop after ``patience`` validations in a row without a better ``best_metric``.

    Args:
        patience: ``train.patience``.
    """

    name = "early_stopping"

    def __init__(self, patience: int) -> None:
        self.patience = patience
        self.stale = 0

    def on_validation_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        """Count stale validations; ask the trainer to stop once there are ``patience``."""
        self.stale = 0 if trainer.improved else self.stale + 1
        if self.stale >= self.patience:
            logger.info(
                "early stop: no better %s for %d validations", trainer.task.best_metric, self.stale
            )
            trainer.stop_requested = True

    def state_dict(self) -> dict[str, Any]:
        """Validations since the last improvement."""
        return {"stale": self.stale}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the count."""
        self.stale = int(state.get("stale", 0))


class MetricsLogger(Callback):
    """One row per epoch in ``metrics.jsonl`` and ``metrics.csv``; ``plots/curves.png`` at
    the end (``train.plots``) with the losses and the validation ``best_metric``.

    Args:
        run: the run folder.
        plots: draw the curves.
    """

    name = "metrics"

    def __init__(self, run: RunDir, plots: bool = True) -> None:
        self.run = run
        self.plots = plots
        self.history = MetricsHistory(run.metrics_jsonl, run.metrics_csv)

    def on_train_start(self, trainer: Trainer) -> None:
        """After a resume, keep only the rows of the epochs the checkpoint holds."""
        if trainer.epoch:
            self.history.resume(trainer.epoch)

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        """Append the epoch's row (rank 0)."""
        if trainer.is_main:
            self.history.append(row)

    def on_train_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        """Draw the curves (rank 0)."""
        if not (self.plots and trainer.is_main):
            return
        best = f"val/{trainer.task.best_metric}"
        names = sorted(
            {
                key
                for row in self.history.rows
                for key in row
                if key.startswith(best) and key.count("/") == 1
            }
        )
        plot_curves(self.history.rows, self.run.plots / "curves.png", names)


class Checkpointer(Callback):
    """Write ``last.pt`` after every epoch and ``best.pt`` when validation improved, atomically
    (rank 0). It runs after every other callback, so their states are in the file.

    Args:
        run: the run folder.
    """

    name = "checkpointer"

    def __init__(self, run: RunDir) -> None:
        self.run = run

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        """Save the trainer's :meth:`~cvkit.engine.trainer.Trainer.checkpoint`."""
        if not trainer.is_main:
            return
        checkpoint = trainer.checkpoint()
        save_checkpoint(checkpoint, self.run.last)
        if trainer.improved:
            save_checkpoint(checkpoint, self.run.best)


def describe_batch(batch: Any) -> str:
    """``images (B, 3, H, W), image ids [...]`` of an ``(images, targets)`` batch."""
    images, targets = (
        batch if isinstance(batch, tuple | list) and len(batch) == 2 else (batch, None)
    )
    shape = getattr(images, "shape", None)
    text = f"images {tuple(shape)}" if shape is not None else "batch"
    if isinstance(targets, list) and targets:
        ids = [
            target.get("image_id")
            if isinstance(target, dict)
            else getattr(target, "image_id", None)
            for target in targets
        ]
        if any(i is not None for i in ids):
            text += f", image ids {[int(i) if hasattr(i, 'item') else i for i in ids]}"
    return text


def default_callbacks(config: Config, run: RunDir | None, user: list[Callback]) -> list[Callback]:
    """The run's callbacks in calling order: loss check, EMA (``train.ema``), time budget
    (``train.time``), ``user``, early
    stopping (``train.patience``), metrics files and checkpoints (when there is a run folder)."""
    cfg = config.train
    callbacks: list[Callback] = [NonFiniteLossStop()]
    if cfg.ema:
        callbacks.append(EMA(cfg.ema_decay))
    if cfg.time is not None:
        callbacks.append(TimeBudget(cfg.time))
    callbacks += user
    if cfg.patience is not None:
        callbacks.append(EarlyStopping(cfg.patience))
    if run is not None:
        callbacks += [MetricsLogger(run, cfg.plots), Checkpointer(run)]
    return callbacks
