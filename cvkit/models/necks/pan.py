"""Path aggregation network (Liu et al., 2018) with CSP blocks, the neck of modern YOLOs.

Each input level is first projected by a 1×1 convolution to ``channels``. A top-down path
(coarsest to finest: nearest upsampling to the finer level's exact size, concatenation with
its projection, a CSP block) spreads semantics to the fine levels; a bottom-up path (a 3×3
stride-2 convolution, concatenation with the top-down map of the next level, a CSP block)
brings localization back to the coarse ones. Every output has ``channels`` and its input's
stride.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cvkit.errors import ConfigError
from cvkit.models.necks.base import Neck, ShapeSpec
from cvkit.models.necks.registry import register_neck


def conv_bn_silu(
    in_channels: int, out_channels: int, kernel: int = 1, stride: int = 1
) -> nn.Module:
    """Convolution (no bias, "same" padding for odd kernels), BatchNorm and SiLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.SiLU(inplace=True),
    )


class Bottleneck(nn.Module):
    """Two 3×3 conv-BN-SiLU with a residual connection, at constant width."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            conv_bn_silu(channels, channels, 3), conv_bn_silu(channels, channels, 3)
        )

    def forward(self, x: Tensor) -> Tensor:
        """``Tensor[B, C, H, W]`` → same shape."""
        return x + self.body(x)


class CSPBlock(nn.Module):
    """Cross-stage partial block: a 1×1 convolution splits the input into two halves, one goes
    through ``depth`` bottlenecks, every intermediate map is concatenated and fused by a 1×1
    convolution (YOLOv8's C2f arrangement).

    Args:
        in_channels, out_channels: channels of the input and of the output.
        depth: bottlenecks (0 gives a plain split-and-fuse).
    """

    def __init__(self, in_channels: int, out_channels: int, depth: int) -> None:
        super().__init__()
        self.hidden = max(out_channels // 2, 1)
        self.split = conv_bn_silu(in_channels, 2 * self.hidden)
        self.blocks = nn.ModuleList(Bottleneck(self.hidden) for _ in range(depth))
        self.fuse = conv_bn_silu((2 + depth) * self.hidden, out_channels)

    def forward(self, x: Tensor) -> Tensor:
        """``Tensor[B, in_channels, H, W]`` → ``Tensor[B, out_channels, H, W]``."""
        parts = list(self.split(x).chunk(2, 1))
        for block in self.blocks:
            parts.append(block(parts[-1]))
        return self.fuse(torch.cat(parts, 1))


@register_neck("pan")
class PAN(Neck):
    """Top-down then bottom-up fusion of two or more levels with CSP blocks.

    Outputs keep the input names (finest first), each ``Tensor[B, channels, h, w]`` at the
    input's size and stride.

    Args:
        input_shapes: level name → :class:`ShapeSpec`, finest first (at least two levels).
        channels: channels of every output level.
        depth: bottlenecks in each CSP block.

    Raises:
        ConfigError: fewer than two levels, non-positive ``channels`` or negative ``depth``.
    """

    def __init__(
        self, input_shapes: Mapping[str, ShapeSpec], channels: int = 128, depth: int = 1
    ) -> None:
        super().__init__(input_shapes)
        if len(self.input_shapes) < 2 or channels <= 0 or depth < 0:
            raise ConfigError(
                f"pan: needs two or more input levels, channels > 0 and depth >= 0; got "
                f"{len(self.input_shapes)} levels, channels={channels}, depth={depth}"
            )
        levels = len(self.input_shapes)
        self.project = nn.ModuleList(
            conv_bn_silu(shape.channels, channels) for shape in self.input_shapes.values()
        )
        self.top_down = nn.ModuleList(
            CSPBlock(2 * channels, channels, depth) for _ in range(levels - 1)
        )
        self.downsample = nn.ModuleList(
            conv_bn_silu(channels, channels, 3, 2) for _ in range(levels - 1)
        )
        self.bottom_up = nn.ModuleList(
            CSPBlock(2 * channels, channels, depth) for _ in range(levels - 1)
        )
        self.output_shapes = OrderedDict(
            (name, ShapeSpec(channels, shape.stride)) for name, shape in self.input_shapes.items()
        )

    def forward_levels(self, features: OrderedDict[str, Tensor]) -> OrderedDict[str, Tensor]:
        """Top-down from the coarsest level, then bottom-up from the finest."""
        projected = [conv(x) for conv, x in zip(self.project, features.values(), strict=True)]
        fused = [projected[-1]]
        for index in range(len(projected) - 2, -1, -1):
            finer = projected[index]
            up = F.interpolate(fused[0], size=finer.shape[-2:], mode="nearest")
            fused.insert(0, self.top_down[index](torch.cat([up, finer], 1)))
        outputs = [fused[0]]
        for index in range(1, len(fused)):
            down = self.downsample[index - 1](outputs[-1])
            down = down[..., : fused[index].shape[-2], : fused[index].shape[-1]]
            outputs.append(self.bottom_up[index - 1](torch.cat([down, fused[index]], 1)))
        return OrderedDict(zip(self.output_shapes, outputs, strict=True))
