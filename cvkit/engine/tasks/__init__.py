"""Tasks: what the one :class:`~cvkit.engine.trainer.Trainer` needs to know about a problem.

A task (detection, segmentation, classification) subclasses :class:`Task` and registers itself
under the name used in the config's ``task:`` key::

    @register_task("segment")
    class SegmentTask(Task):
        best_metric = "mIoU"

        def loss(self, model, batch):
            images, targets = batch
            logits = model(images)
            return {"ce": cross_entropy(logits, stack_semantic(targets), ignore_index=255)}

        def evaluate(self, model, loader, device):
            ...  # returns {"mIoU": 0.71, "pixel_acc": 0.93}

The defaults build datasets and loaders with :mod:`cvkit.data`, the model with
:func:`cvkit.models.build.build_model`, and move ``(images, targets)`` batches to the device;
a task overrides only what differs. ``get_task(name)`` imports the built-in task modules
lazily, so registering needs no edit here beyond the module name in ``_BUILTIN``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from cvkit.config import Config
from cvkit.config.schema import BUILTIN_TASKS
from cvkit.errors import ConfigError, NotBuiltError
from cvkit.logs import get_logger

Batch = Any
_REGISTRY: dict[str, type[Task]] = {}
_BUILTIN = BUILTIN_TASKS


class Task:
    """Base class of a training task; subclasses implement :meth:`loss` and :meth:`evaluate`.

    Attributes:
        name: the config's ``task:`` value (set by :func:`register_task`).
        best_metric: the key of :meth:`evaluate`'s result that selects ``best.pt``
            (higher is better).
    """

    name: ClassVar[str] = ""
    best_metric: ClassVar[str] = ""

    def __init__(self, config: Config) -> None:
        self.config = config

    def build_dataset(self, split: str) -> Dataset:
        """The ``train`` or ``val`` dataset, checked by :mod:`cvkit.data` (a broken dataset
        raises :class:`~cvkit.errors.DatasetError`); it exposes ``classes`` and
        ``category_ids``."""
        from cvkit.data import build_dataset

        return build_dataset(self.config.data, split, self.name, seed=self.config.seed)

    def build_loader(self, dataset: Dataset, train: bool, distributed: bool = False) -> DataLoader:
        """A loader over ``dataset`` (shuffled, augmented batches when ``train``)."""
        from cvkit.data import build_loader

        return build_loader(
            dataset, self.config.data, train, distributed=distributed, seed=self.config.seed
        )

    def build_model(self, num_classes: int) -> nn.Module:
        """The model named by ``config.model``, with ``num_classes`` outputs.

        ``model.pretrained`` (a torchvision classifier ``.pth`` or a cvkit checkpoint)
        initializes the model's ``backbone``; only the backbone part of the file is loaded,
        strictly (every key, equal shapes).

        Raises:
            ConfigError: ``model.pretrained`` is set but the model has no ``backbone``.
            CheckpointError: the file is unreadable or its backbone does not fit.
        """
        from cvkit.models.build import build_model

        model = build_model(self.config, num_classes)
        path = self.config.model.pretrained
        if path is not None:
            from cvkit.models.backbones.weights import load_backbone_weights

            backbone = getattr(model, "backbone", None)
            if backbone is None:
                raise ConfigError(
                    f"model.pretrained: {self.config.model.name!r} has no backbone to load "
                    f"{path} into"
                )
            load_backbone_weights(backbone, path)
            get_logger("tasks").info("backbone initialized from %s", path)
        return model

    def to_device(self, batch: Batch, device: torch.device) -> Batch:
        """Move an ``(images, targets)`` batch to ``device``.

        ``targets`` is a tensor or a list of per-image records with a
        ``to(device, non_blocking=...)`` method (:class:`~cvkit.structures.Target`) or of
        dicts (their tensor values move).
        """
        images, targets = batch
        non_blocking = device.type == "cuda"
        images = images.to(device, non_blocking=non_blocking)
        if isinstance(targets, torch.Tensor):
            return images, targets.to(device, non_blocking=non_blocking)
        return images, [_target_to(target, device, non_blocking) for target in targets]

    def batch_size(self, batch: Batch) -> int:
        """Number of images in ``batch`` (for images/s)."""
        return len(batch[0])

    def loss(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        """Named scalar losses of ``model`` (in train mode, maybe DDP-wrapped) on ``batch``.

        The Trainer optimises their sum and logs each one.
        """
        raise NotImplementedError

    def evaluate(
        self, model: nn.Module, loader: DataLoader, device: torch.device
    ) -> dict[str, float]:
        """Validation metrics of ``model`` (unwrapped, in eval mode) over ``loader``.

        Must contain :attr:`best_metric`. Only rank 0 calls it, over the whole val split.
        """
        raise NotImplementedError

    def describe(self, metrics: dict[str, Any]) -> str:
        """A human-readable report of :meth:`evaluate`'s result (for logs and the CLI)."""
        return " ".join(
            f"{key} {value:.4f}" for key, value in metrics.items() if isinstance(value, float)
        )


def _target_to(target: Any, device: torch.device, non_blocking: bool) -> Any:
    """One image's target on ``device``: a record with ``.to`` or a dict of tensors/values."""
    if isinstance(target, dict):
        return {
            key: value.to(device, non_blocking=non_blocking)
            if isinstance(value, torch.Tensor)
            else value
            for key, value in target.items()
        }
    return target.to(device, non_blocking=non_blocking)


def register_task(name: str) -> Callable[[type[Task]], type[Task]]:
    """Class decorator registering a :class:`Task` subclass under ``name``."""

    def decorate(cls: type[Task]) -> type[Task]:
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def get_task(name: str) -> type[Task]:
    """The task class registered under ``name`` (importing built-in task modules on demand).

    Raises:
        ConfigError: no task of that name exists.
        NotBuiltError: the task's module has not landed yet.
    """
    if name not in _REGISTRY and name in _BUILTIN:
        try:
            importlib.import_module(_BUILTIN[name])
        except ModuleNotFoundError as exc:
            if exc.name != _BUILTIN[name]:
                raise
            raise NotBuiltError(f"task {name!r}: {_BUILTIN[name]} has not landed yet") from None
    if name not in _REGISTRY:
        known = sorted(set(_REGISTRY) | set(_BUILTIN))
        raise ConfigError(f"task: unknown task {name!r}; known tasks: {', '.join(known)}")
    return _REGISTRY[name]
