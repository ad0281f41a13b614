"""One registry of necks and the factory :func:`build_neck`.

Adding a neck is one decorated class (or builder) taking the input shapes first::

    @register_neck("fpn")
    class FPN(Neck):
        def __init__(self, input_shapes, out_channels=256, extra_max_pool=False): ...

``build_neck("fpn", backbone_shapes(backbone), out_channels=128)`` then builds it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from cvkit.errors import ConfigError
from cvkit.models.necks.base import Neck, ShapeSpec

NeckBuilder = Callable[..., Neck]
_REGISTRY: dict[str, NeckBuilder] = {}


def register_neck(name: str) -> Callable[[NeckBuilder], NeckBuilder]:
    """Register ``builder(input_shapes, **options) -> Neck`` (usually a Neck class) as ``name``."""

    def decorator(builder: NeckBuilder) -> NeckBuilder:
        if name in _REGISTRY:
            raise ValueError(f"neck {name!r} is registered twice")
        _REGISTRY[name] = builder
        return builder

    return decorator


def list_necks() -> list[str]:
    """Names accepted by :func:`build_neck`, sorted."""
    return sorted(_REGISTRY)


def build_neck(name: str, input_shapes: Mapping[str, ShapeSpec], **options: Any) -> Neck:
    """Build a registered neck.

    Args:
        name: e.g. ``fpn`` or ``ssd_extras`` (see :func:`list_necks`).
        input_shapes: level name → :class:`ShapeSpec` of the feature maps it will receive,
            finest first (:func:`~cvkit.models.necks.base.backbone_shapes` of a backbone).
        options: the neck's own keyword arguments (``out_channels`` for ``fpn``, ...).

    Returns:
        A :class:`Neck` whose ``output_shapes`` describe the levels it returns.

    Raises:
        ConfigError: unknown name, an option the neck does not take, or a bad value.
    """
    if name not in _REGISTRY:
        raise ConfigError(f"neck: unknown neck {name!r}; available: {', '.join(list_necks())}")
    builder = _REGISTRY[name]
    try:
        inspect.signature(builder).bind(input_shapes, **options)
    except TypeError as exc:
        raise ConfigError(f"neck {name!r}: {exc}") from None
    return builder(input_shapes, **options)
