"""The neck contract: named, strided feature maps in, the levels a head reads out.

A neck sits between a backbone and a head. It is built from the shapes of its inputs
(``input_shapes``: level name → :class:`ShapeSpec`, finest first, as a backbone's ``channels``
and ``strides`` describe them) and declares the shapes it returns (``output_shapes``), so a head
is sized from the neck alone and any head sits on any backbone.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from cvkit.errors import ConfigError
from cvkit.models.backbones.base import Backbone


@dataclass(frozen=True)
class ShapeSpec:
    """One feature level: ``channels`` and ``stride`` (input pixels per feature cell)."""

    channels: int
    stride: int


def backbone_shapes(backbone: Backbone) -> OrderedDict[str, ShapeSpec]:
    """The :class:`ShapeSpec` of each feature map ``backbone`` returns, in its order."""
    return OrderedDict(
        (name, ShapeSpec(channels, backbone.strides[name]))
        for name, channels in backbone.channels.items()
    )


class Neck(nn.Module):
    """Base class: maps named feature maps to the levels a head reads.

    Subclasses call ``super().__init__(input_shapes)``, set :attr:`output_shapes` and implement
    :meth:`forward_levels`; :meth:`forward` accepts a dict or a list of inputs.

    Args:
        input_shapes: level name → :class:`ShapeSpec` of every input, finest first.

    Raises:
        ConfigError: no inputs, or strides that decrease from one input to the next.
    """

    def __init__(self, input_shapes: Mapping[str, ShapeSpec]) -> None:
        super().__init__()
        strides = [shape.stride for shape in input_shapes.values()]
        if not strides or strides != sorted(strides):
            raise ConfigError(
                f"{type(self).__name__}: needs at least one input level, finest first; "
                f"got {dict(input_shapes)}"
            )
        self.input_shapes: OrderedDict[str, ShapeSpec] = OrderedDict(input_shapes)
        self.output_shapes: OrderedDict[str, ShapeSpec] = OrderedDict()

    def forward(self, features: Mapping[str, Tensor] | Sequence[Tensor]) -> dict[str, Tensor]:
        """Output levels of the neck.

        Args:
            features: ``Tensor[B, input_shapes[name].channels, ~H / stride, ~W / stride]`` per
                input level, as a dict holding every name of :attr:`input_shapes` (extra keys
                are ignored) or as a sequence in the order of :attr:`input_shapes`.

        Returns:
            ``OrderedDict`` name → ``Tensor[B, output_shapes[name].channels, ~H / stride,
            ~W / stride]`` in the order of :attr:`output_shapes` (finest first).

        Raises:
            ValueError: an input level is missing or the sequence has the wrong length.
        """
        names = list(self.input_shapes)
        if isinstance(features, Mapping):
            missing = [name for name in names if name not in features]
            if missing:
                raise ValueError(
                    f"{type(self).__name__}: missing input levels {missing}; got {list(features)}"
                )
            levels = [features[name] for name in names]
        else:
            levels = list(features)
            if len(levels) != len(names):
                raise ValueError(
                    f"{type(self).__name__}: expects {len(names)} input levels {names}, "
                    f"got {len(levels)}"
                )
        return self.forward_levels(OrderedDict(zip(names, levels, strict=True)))

    def forward_levels(self, features: OrderedDict[str, Tensor]) -> OrderedDict[str, Tensor]:
        """The neck's computation on its inputs, keyed and ordered as :attr:`input_shapes`."""
        raise NotImplementedError
