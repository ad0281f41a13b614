"""One registry of backbones and the factory :func:`create_backbone`.

Adding an architecture is one decorated builder::

    @register_backbone("resnet18", tiny_width=0.25)  # also registers resnet18_tiny

Builders take ``width_mult`` and ``in_channels`` and return a :class:`Backbone`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from cvkit.errors import ConfigError
from cvkit.models.backbones.base import Backbone
from cvkit.models.backbones.weights import load_backbone_weights

BackboneBuilder = Callable[..., Backbone]
_REGISTRY: dict[str, tuple[BackboneBuilder, float]] = {}


def register_backbone(
    name: str, tiny_width: float | None = None
) -> Callable[[BackboneBuilder], BackboneBuilder]:
    """Register ``builder(width_mult, in_channels) -> Backbone`` under ``name``.

    With ``tiny_width`` the same builder is also registered as ``<name>_tiny`` at that width
    (a model small enough to train on a laptop CPU in minutes).
    """

    def decorator(builder: BackboneBuilder) -> BackboneBuilder:
        for key, width in ((name, 1.0), (f"{name}_tiny", tiny_width)):
            if width is None:
                continue
            if key in _REGISTRY:
                raise ValueError(f"backbone {key!r} is registered twice")
            _REGISTRY[key] = (builder, width)
        return builder

    return decorator


def list_backbones() -> list[str]:
    """Names accepted by :func:`create_backbone`, sorted."""
    return sorted(_REGISTRY)


def create_backbone(
    name: str,
    pretrained: str | Path | None = None,
    out_features: Sequence[str] | None = None,
    width_mult: float = 1.0,
    in_channels: int = 3,
) -> Backbone:
    """Build a registered backbone.

    Args:
        name: e.g. ``resnet18``, ``resnet18_tiny``, ``vgg16_bn``, ``googlenet``, ``lenet``
            (see :func:`list_backbones`).
        pretrained: a local weights file: a torchvision ``.pth`` state dict or a cvkit
            checkpoint (its ``backbone.*`` keys). Never downloaded.
        out_features: stages to return (see ``backbone.stage_names``); default the last one.
        width_mult: channel multiplier on top of the variant's own (``_tiny`` is 0.25).
        in_channels: image channels; pretrained RGB stems are adapted to it.

    Returns:
        A :class:`Backbone`: ``forward(Tensor[B, in_channels, H, W])`` returns an
        ``OrderedDict`` of feature maps; ``.channels`` and ``.strides`` describe them.

    Raises:
        ConfigError: unknown name, unknown stage, or a non-positive width or channel count.
        CheckpointError: the pretrained file is missing, corrupt, or does not fit.
    """
    if name not in _REGISTRY:
        raise ConfigError(
            f"model.backbone: unknown backbone {name!r}; available: {', '.join(list_backbones())}"
        )
    if width_mult <= 0:
        raise ConfigError(f"model.width_mult: must be positive, got {width_mult}")
    if in_channels <= 0:
        raise ConfigError(f"model.in_channels: must be positive, got {in_channels}")
    builder, base_width = _REGISTRY[name]
    backbone = builder(width_mult=base_width * width_mult, in_channels=in_channels)
    backbone.set_out_features(out_features)
    if pretrained is not None:
        load_backbone_weights(backbone, pretrained)
    return backbone
