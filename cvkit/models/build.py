"""The model registry: config → ``nn.Module``.

A model family registers a builder once::

    @register_model("classifier")
    def build_classifier(config: Config, num_classes: int) -> nn.Module: ...

and :func:`build_model` looks the builder up by ``config.model.name``. Builders construct the
architecture only; initial weights from ``model.pretrained`` are applied by the training task,
so rebuilding a model from a checkpoint never needs the original weights file.

A model defined outside cvkit registers the same way, with its options class::

    class MyOptions(Section):           # the ``model.my_model:`` section of a YAML config
        hidden: int = 16

    @register_model("my_model", options=MyOptions)
    def build_my_model(config, num_classes):
        return MyModel(config.model.my_model.hidden, num_classes)

and an installed package can provide it through a ``cvkit.models`` entry point
(:mod:`cvkit.config.plugins`), imported when the name is first looked up.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from pydantic import BaseModel
from torch import nn

from cvkit.config import Config
from cvkit.config.model import register_model_options
from cvkit.config.plugins import MODEL_GROUP, load_plugin, plugin_names
from cvkit.errors import ConfigError

ModelBuilder = Callable[[Config, int], nn.Module]
_BUILDERS: dict[str, ModelBuilder] = {}

# Modules whose import registers each built-in model; imported on its first lookup, so that
# importing this module stays cheap and one model's dependencies never affect another's.
_BUILTIN_MODULES = {
    "classifier": "cvkit.models.classification",
    "ssd": "cvkit.models.detection.ssd",
    "faster_rcnn": "cvkit.models.detection.faster_rcnn",
    "mask_rcnn": "cvkit.models.detection.mask_rcnn",
    "fast_rcnn": "cvkit.models.detection.fast_rcnn",
    "rcnn": "cvkit.models.detection.rcnn",
    "yolov1": "cvkit.models.detection.yolov1",
    "yolo": "cvkit.models.detection.yolo",
    "fcn": "cvkit.models.segmentation.fcn",
    "style": "cvkit.models.style",
}


def register_model(
    name: str, options: type[BaseModel] | None = None
) -> Callable[[ModelBuilder], ModelBuilder]:
    """Register ``builder(config, num_classes) -> nn.Module`` under ``name`` (``model.name``).

    ``options``, a :class:`cvkit.config.base.Section` subclass, validates the model's own
    config section ``model.<name>`` (:func:`cvkit.config.model.register_model_options`); the
    builder reads it as ``config.model.<name>``.
    """

    def decorator(builder: ModelBuilder) -> ModelBuilder:
        if name in _BUILDERS and _BUILDERS[name] is not builder:
            raise ValueError(f"model {name!r} is registered twice")
        if options is not None:
            register_model_options(name, options)
        _BUILDERS[name] = builder
        return builder

    return decorator


def registered_models() -> list[str]:
    """Names accepted as ``model.name`` (built-in, registered so far and declared by
    ``cvkit.models`` entry points), sorted."""
    return sorted(set(_BUILDERS) | set(_BUILTIN_MODULES) | set(plugin_names(MODEL_GROUP)))


def build_model(config: Config, num_classes: int) -> nn.Module:
    """Build the model named by ``config.model.name`` for ``num_classes`` foreground classes.

    A name neither built in nor registered is looked up among the ``cvkit.models`` entry
    points.

    Raises:
        ConfigError: no model is registered under that name, or ``num_classes`` < 1.
    """
    name = config.model.name
    if name not in _BUILDERS and name in _BUILTIN_MODULES:
        importlib.import_module(_BUILTIN_MODULES[name])
    if name not in _BUILDERS:
        load_plugin(MODEL_GROUP, name)
    if name not in _BUILDERS:
        raise ConfigError(
            f"model.name: unknown model {name!r}; registered: {', '.join(registered_models())}"
        )
    if num_classes < 1:
        raise ConfigError(f"model.num_classes: need at least one class, got {num_classes}")
    return _BUILDERS[name](config, num_classes)
