"""Trainer callbacks: extend the training loop without editing :mod:`cvkit.engine.trainer`.

Subclass :class:`Callback`, override the hooks you need and pass an instance to
``Trainer(..., callbacks=[...])`` (or ``cvkit.train(cfg, callbacks=[...])``). Hooks run on
every process in this order: ``setup`` when the trainer is built (and again on resume, after
the weights are loaded), ``on_train_start`` once, then per epoch ``on_epoch_start``,
``on_batch_end`` after each batch's loss (before its backward pass), ``on_step_end`` after
each optimizer step,
``on_validation_end`` after a validation (rank 0), ``on_epoch_end``; finally ``on_train_end``.
A callback's :meth:`Callback.state_dict` is saved in ``last.pt``/``best.pt`` under
``callbacks[<name>]`` and restored by ``Trainer.resume``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from cvkit.engine.trainer import Trainer


class Callback:
    """Base class of trainer callbacks; every hook does nothing by default.

    ``name`` keys the callback's state in checkpoints (default: the class name); two callbacks
    of one trainer must have different names. ``checkpoint_key`` (built-ins only, e.g. the EMA's
    ``ema``) stores the state at the checkpoint's top level instead of under ``callbacks``.
    """

    checkpoint_key: ClassVar[str | None] = None

    @property
    def name(self) -> str:
        """The checkpoint key of this callback's state."""
        return type(self).__name__

    def setup(self, trainer: Trainer) -> None:
        """When the trainer is built, and again by ``Trainer.resume`` once the weights are
        loaded (before :meth:`load_state_dict`)."""

    def on_train_start(self, trainer: Trainer) -> None:
        """Before the first remaining epoch (after a resume, if any)."""

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        """Before epoch ``epoch`` (0-based) starts."""

    def on_batch_end(self, trainer: Trainer, batch_info: dict[str, Any]) -> None:
        """After a batch's forward pass and loss, before its backward pass (every batch, also
        those that only accumulate gradients); raising here stops training with the weights
        untouched.

        ``batch_info`` holds ``epoch`` (0-based), ``batch`` (index in the epoch), ``step``
        (optimizer steps so far), ``losses`` (name → float, averaged over processes, ``loss``
        is their sum) and ``inputs`` (the batch on the device).
        """

    def on_step_end(self, trainer: Trainer, step_info: dict[str, Any]) -> None:
        """After an optimizer step.

        ``step_info`` holds ``epoch`` (0-based), ``step`` (optimizer steps so far), ``batch``
        (index in the epoch), ``lr`` and ``losses`` (name → float, averaged over processes,
        ``loss`` is their sum, for the step's last batch).
        """

    def on_train_epoch_end(self, trainer: Trainer, train_row: dict[str, float]) -> None:
        """After an epoch's training (``trainer.epoch`` already counts it), before its
        validation: a change of ``trainer.epochs`` here (``trainer.set_epochs``) still decides
        whether this epoch is the last, and so validated."""

    def on_validation_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        """After a validation on rank 0, with the task's metrics."""

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        """After an epoch; ``row`` is the epoch's ``metrics.jsonl`` row (``epoch`` 1-based)."""

    def on_train_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        """After the last epoch (or an early stop), with what ``fit`` returns."""

    def state_dict(self) -> dict[str, Any]:
        """What resuming needs (saved in checkpoints); plain tensors, numbers, lists, dicts."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


__all__ = ["Callback"]
