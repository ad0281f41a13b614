"""SSD's extra blocks as a neck: the backbone levels, then coarser levels made from the last.

Each extra block halves the resolution of the previous last level (1×1 conv to half width,
stride-2 3×3 conv, BN + ReLU after each), giving SSD its small-resolution levels for large
objects. The blocks are the neck's children ``0``, ``1``, ... so that, as ``SSD.extras``, their
state-dict keys stay ``extras.<i>.*``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Mapping

from torch import Tensor, nn

from cvkit.errors import ConfigError
from cvkit.models.necks.base import Neck, ShapeSpec
from cvkit.models.necks.registry import register_neck


def extra_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """1×1 conv to half width, then a stride-2 3×3 conv: halves the resolution (BN + ReLU).

    ``Tensor[B, in_channels, h, w]`` → ``Tensor[B, out_channels, ceil(h / 2), ceil(w / 2)]``.
    """
    mid = max(out_channels // 2, 8)
    return nn.Sequential(
        nn.Conv2d(in_channels, mid, 1, bias=False),
        nn.BatchNorm2d(mid),
        nn.ReLU(inplace=True),
        nn.Conv2d(mid, out_channels, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


@register_neck("ssd_extras")
class SSDExtras(Neck):
    """The input levels unchanged, then ``num_blocks`` levels ``extra0``, ``extra1``, ...

    Block ``i`` reads the previous last level and returns ``Tensor[B, channels, ceil(h / 2),
    ceil(w / 2)]`` at twice its stride.

    Args:
        input_shapes: level name → :class:`ShapeSpec` of the backbone outputs, finest first.
        num_blocks: extra blocks (0 passes the inputs through).
        channels: output channels of every extra block.

    Raises:
        ConfigError: a negative ``num_blocks`` or a non-positive ``channels``.
    """

    def __init__(
        self, input_shapes: Mapping[str, ShapeSpec], num_blocks: int = 2, channels: int = 256
    ) -> None:
        super().__init__(input_shapes)
        if num_blocks < 0 or channels <= 0:
            raise ConfigError(
                f"ssd_extras: num_blocks must be >= 0 and channels > 0, "
                f"got num_blocks={num_blocks}, channels={channels}"
            )
        self.output_shapes = OrderedDict(self.input_shapes)
        last = next(reversed(self.input_shapes.values()))
        for index in range(num_blocks):
            self.add_module(str(index), extra_block(last.channels, channels))
            last = ShapeSpec(channels, last.stride * 2)
            self.output_shapes[f"extra{index}"] = last

    def __len__(self) -> int:
        """Number of extra blocks."""
        return len(self._modules)

    def __iter__(self) -> Iterator[nn.Module]:
        """The extra blocks in order, each taking the previous block's output."""
        return iter(self._modules.values())

    def forward_levels(self, features: OrderedDict[str, Tensor]) -> OrderedDict[str, Tensor]:
        """Inputs, then each block applied to the level before it."""
        levels = OrderedDict(features)
        last = next(reversed(levels.values()))
        for name, block in zip(list(self.output_shapes)[len(features) :], self, strict=True):
            last = block(last)
            levels[name] = last
        return levels
