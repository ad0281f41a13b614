"""The model registry: config → ``nn.Module``.

A model family registers a builder once::

    @register_model("classifier")
    def build_classifier(config: Config, num_classes: int) -> nn.Module: ...

and :func:`build_model` looks the builder up by ``config.model.name``. Builders construct the
architecture only; initial weights from ``model.pretrained`` are applied by the training task,
so rebuilding a model from a checkpoint never needs the original weights file.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from torch import nn

from cvkit.config import Config
from cvkit.errors import ConfigError

ModelBuilder = Callable[[Config, int], nn.Module]
_BUILDERS: dict[str, ModelBuilder] = {}

# Packages whose import registers the built-in models; imported on the first lookup so that
# importing this module stays cheap and free of cycles.
_BUILTIN_PACKAGES = (
    "cvkit.models.classification",
    "cvkit.models.detection",
    "cvkit.models.segmentation",
)


def register_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Register ``builder(config, num_classes) -> nn.Module`` under ``name`` (``model.name``)."""

    def decorator(builder: ModelBuilder) -> ModelBuilder:
        if name in _BUILDERS and _BUILDERS[name] is not builder:
            raise ValueError(f"model {name!r} is registered twice")
        _BUILDERS[name] = builder
        return builder

    return decorator


def _import_builtin_models() -> None:
    for package in _BUILTIN_PACKAGES:
        try:
            importlib.import_module(package)
        except ModuleNotFoundError as exc:
            if exc.name != package:
                raise


def registered_models() -> list[str]:
    """Names accepted as ``model.name``, sorted."""
    _import_builtin_models()
    return sorted(_BUILDERS)


def build_model(config: Config, num_classes: int) -> nn.Module:
    """Build the model named by ``config.model.name`` for ``num_classes`` foreground classes.

    Raises:
        ConfigError: no model is registered under that name, or ``num_classes`` < 1.
    """
    name = config.model.name
    if name not in _BUILDERS:
        _import_builtin_models()
    if name not in _BUILDERS:
        raise ConfigError(
            f"model.name: unknown model {name!r}; registered: {', '.join(sorted(_BUILDERS))}"
        )
    if num_classes < 1:
        raise ConfigError(f"model.num_classes: need at least one class, got {num_classes}")
    return _BUILDERS[name](config, num_classes)
