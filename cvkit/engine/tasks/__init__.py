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
a task overrides only what differs.

A task also owns its life after training, through class methods that need no config: the
ONNX metadata (:meth:`Task.export_metadata`), the exported graph, its outputs and dynamic axes
and how it is compared with torch (``export_*``), the ``.pt`` predictor
(:meth:`Task.checkpoint_predictor`) and what ``cvkit predict`` writes
(:meth:`Task.predict_folder`). The defaults fit a model whose ``model(images)`` returns
logits; the runtime side is a :func:`cvkit.runtime.predictors.register_predictor` of the same
name. ``get_task(name)`` imports the built-in task modules
lazily; a task defined outside cvkit registers with the decorator in the running process, or
is provided by an installed package through a ``cvkit.tasks`` entry point
(:mod:`cvkit.config.plugins`), so adding a task needs no edit here.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from cvkit.config import Config
from cvkit.config.plugins import TASK_GROUP, load_plugin, plugin_names
from cvkit.config.schema import BUILTIN_TASKS
from cvkit.errors import ConfigError, NotBuiltError
from cvkit.logs import get_logger

if TYPE_CHECKING:
    from cvkit.config.export import ExportConfig
    from cvkit.data.records import ClassMap
    from cvkit.runtime.metadata import ModelMetadata

Batch = Any
_REGISTRY: dict[str, type[Task]] = {}
_BUILTIN = BUILTIN_TASKS


class Task:
    """Base class of a training task; subclasses implement :meth:`loss` and :meth:`evaluate`.

    Attributes:
        name: the config's ``task:`` value (set by :func:`register_task`).
        best_metric: the key of :meth:`evaluate`'s result that selects ``best.pt``
            (higher is better).
        exports_nms: the exported graph can end in NMS (``export.nms``), as detectors' do.
    """

    name: ClassVar[str] = ""
    best_metric: ClassVar[str] = ""
    exports_nms: ClassVar[bool] = False

    def __init__(self, config: Config) -> None:
        self.config = config

    def build_dataset(self, split: str, reference: ClassMap | None = None) -> Dataset:
        """The ``train`` or ``val`` dataset, checked by :mod:`cvkit.data` (a broken dataset
        raises :class:`~cvkit.errors.DatasetError`); it exposes ``classes`` and
        ``category_ids``. A COCO split is numbered as ``reference`` numbers classes
        (:func:`cvkit.data.build_dataset`)."""
        from cvkit.data import build_dataset

        return build_dataset(
            self.config.data, split, self.name, seed=self.config.seed, reference=reference
        )

    def build_val_dataset(self, reference: ClassMap) -> Dataset:
        """The ``val`` dataset numbered as ``reference`` (the train split's or a checkpoint's
        classes), so a COCO val file may list only some of their categories.

        A task whose :meth:`build_dataset` takes no ``reference`` (its own class lists:
        classification's folders, a custom task's dataset) builds the split as it does.
        """
        if "reference" in inspect.signature(self.build_dataset).parameters:
            return self.build_dataset("val", reference=reference)
        return self.build_dataset("val")

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

    @classmethod
    def export_metadata(cls, config: Config, classes: list[str]) -> ModelMetadata:
        """What an ``.onnx`` of a model trained with ``config`` carries: this task's name,
        ``classes``, the eval preset (``data.image_size``, ``data.resize``,
        ``data.mean``/``data.std``) and the ``eval:`` thresholds; ``topk_candidates`` and the
        selective-search settings (``proposals``, of R-CNN and Fast R-CNN) come from the model's
        own section (``model.<name>``) when it has them."""
        from cvkit import __version__
        from cvkit.runtime.metadata import ModelMetadata
        from cvkit.selective_search import SearchSettings

        size = config.data.image_size
        own_section = getattr(config.model, config.model.name, None)
        proposals = getattr(own_section, "proposals", None)
        return ModelMetadata(
            task=cls.name,
            classes=tuple(classes),
            input_size=(size, size),
            mean=tuple(config.data.mean),
            std=tuple(config.data.std),
            resize=config.data.resize,
            nms_in_graph=cls.exports_nms,
            score_threshold=config.eval.score_threshold,
            iou_threshold=config.eval.iou_threshold,
            max_det=config.eval.max_det,
            topk_candidates=getattr(own_section, "topk_candidates", None),
            proposals=None if proposals is None else SearchSettings.of(proposals),
            model_name=config.model.name,
            cvkit_version=__version__,
        )

    @classmethod
    def export_graph(
        cls, model: nn.Module, metadata: ModelMetadata, options: ExportConfig
    ) -> nn.Module:
        """The module traced to ONNX for a model that builds none itself (a model's own
        ``model.export_graph(metadata, options)`` takes precedence, see
        :func:`cvkit.export.onnx.build_graph`); default: ``model(images)`` as float32 logits
        (:class:`cvkit.export.onnx.LogitsGraph`). ``model`` is already in eval mode (and
        float16 when ``options.half``)."""
        from cvkit.export.onnx import LogitsGraph

        return LogitsGraph(model, options.half)

    @classmethod
    def export_outputs(cls, metadata: ModelMetadata) -> tuple[str, ...]:
        """Names of the exported graph's outputs, in :meth:`export_graph`'s order, for a model
        that declares none itself (a model's ``export_output_names(metadata)`` takes
        precedence, see :func:`cvkit.export.onnx.export_output_names`)."""
        return ("logits",)

    @classmethod
    def export_dynamic_axes(
        cls, input_name: str, outputs: tuple[str, ...]
    ) -> dict[str, dict[int, str]]:
        """Dynamic axes of a ``--dynamic`` export of the images input and ``outputs``; default:
        the batch axis of everything. Inputs a model declares after the images carry their own
        (:func:`cvkit.export.onnx.export_inputs`)."""
        from cvkit.export.onnx import dynamic_axes

        return dynamic_axes((input_name, *outputs))

    @classmethod
    def compare_exported(
        cls,
        expected: list[Any],
        got: list[Any],
        metadata: ModelMetadata,
        tolerances: Any,
        label: str,
    ) -> dict[str, float]:
        """Parity of onnxruntime's outputs ``got`` with torch's ``expected`` (numpy arrays in
        the graph's output order, :func:`cvkit.export.onnx.export_output_names`); returns the
        largest difference per checked output and raises :class:`~cvkit.errors.ExportError`
        beyond ``tolerances`` (:class:`cvkit.export.onnx.Tolerances`).

        Default: :func:`cvkit.export.onnx.compare_logits`.
        """
        from cvkit.export.onnx import compare_logits

        return compare_logits(expected, got, tolerances, label)

    @classmethod
    def checkpoint_predictor(cls, weights: str | Path, device: str = "auto") -> Any:
        """A callable ``(list of RGB uint8 [H, W, 3]) -> list of results`` over a ``.pt``
        checkpoint of this task, with ``classes`` and ``batch_size`` attributes.

        Raises:
            ConfigError: the task has no checkpoint predictor (export it and use the .onnx).
        """
        raise ConfigError(
            f"{weights}: task {cls.name!r} has no checkpoint predictor; export it with "
            "`cvkit export` and use the .onnx"
        )

    @classmethod
    def predict_folder(
        cls,
        paths: list[Path],
        weights: str | Path,
        out: str | Path,
        score_threshold: float | None = None,
    ) -> Path:
        """``cvkit predict``: run ``weights`` (``.pt`` through :meth:`checkpoint_predictor`,
        or ``.onnx`` through the runtime) on ``paths`` and write each result's drawing and one
        ``predictions.json`` to ``out``; returns the JSON path. ``score_threshold`` is for
        detectors."""
        from cvkit.engine.predict import ResultWriter, open_model, write_results

        model = open_model(weights, cls.checkpoint_predictor)
        writer = ResultWriter(out, model.classes)
        json_path = write_results(paths, model, writer)
        print(f"{writer.summary('predicted')}; drawings and JSON in {json_path.parent}")
        return json_path


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
    """The task class registered under ``name`` (importing built-in task modules, or the
    ``cvkit.tasks`` entry point of that name, on demand).

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
        load_plugin(TASK_GROUP, name)
    if name not in _REGISTRY:
        known = sorted(set(_REGISTRY) | set(_BUILTIN) | set(plugin_names(TASK_GROUP)))
        raise ConfigError(f"task: unknown task {name!r}; known tasks: {', '.join(known)}")
    return _REGISTRY[name]
