"""CSPDarknet, the YOLOv8-style backbone: strided 3×3 convolutions, C2f CSP blocks and SPPF.

A 3×3 stride-2 ``stem`` (stride 2), then four stages, each a 3×3 stride-2 conv-BN-SiLU and a
C2f block with residual bottlenecks: ``stage2`` (stride 4), ``stage3`` (8), ``stage4`` (16)
and ``stage5`` (32), which ends with spatial pyramid pooling (SPPF). The detection recipe reads
``out_features: [stage3, stage4, stage5]``. Sizes ``n``, ``s`` and ``m`` multiply the base
widths (64, 128, 256, 512, 1024; the last capped per size) and the base depths (3, 6, 6, 3
bottlenecks) as YOLOv8 does: ``cspdarknet_n`` has 16 to 256 channels and 1/2/2/1 bottlenecks.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor, nn

from cvkit.models.backbones.base import Backbone, StageInfo, scale_channels
from cvkit.models.backbones.registry import register_backbone

BASE_WIDTHS = (64, 128, 256, 512, 1024)
BASE_DEPTHS = (3, 6, 6, 3)


@dataclass(frozen=True)
class CSPSize:
    """Multipliers of one size: ``width`` on the channels, ``depth`` on the bottlenecks, and
    ``max_channels`` capping the base width before scaling."""

    width: float
    depth: float
    max_channels: int


SIZES = {
    "n": CSPSize(0.25, 0.33, 1024),
    "s": CSPSize(0.5, 0.33, 1024),
    "m": CSPSize(0.75, 0.67, 768),
}


class SPPF(nn.Module):
    """Fast spatial pyramid pooling: a 1×1 reduction to half the channels, three cascaded
    ``kernel``×``kernel`` stride-1 max-pools, the four maps concatenated and fused by a 1×1.

    Cascading ``k`` pools gives the max over a ``(k(kernel − 1) + 1)``-wide window, so the
    pyramid equals SPP's parallel pools of 5, 9 and 13 at ``kernel=5`` (see :meth:`pyramid`).

    Args:
        in_channels, out_channels: channels of the input and output.
        kernel: odd max-pool size.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int = 5) -> None:
        super().__init__()
        from cvkit.models.necks.pan import conv_bn_silu  # see CSPDarknet.__init__

        hidden = max(in_channels // 2, 1)
        self.reduce = conv_bn_silu(in_channels, hidden)
        self.pool = nn.MaxPool2d(kernel, stride=1, padding=kernel // 2)
        self.fuse = conv_bn_silu(4 * hidden, out_channels)

    def pyramid(self, x: Tensor) -> Tensor:
        """``Tensor[B, C, H, W]`` → ``Tensor[B, 4C, H, W]``: ``x`` and its 1, 2 and 3 times
        max-pooled maps (padding never wins a max)."""
        levels = [x]
        for _ in range(3):
            levels.append(self.pool(levels[-1]))
        return torch.cat(levels, 1)

    def forward(self, x: Tensor) -> Tensor:
        """``Tensor[B, in_channels, H, W]`` → ``Tensor[B, out_channels, H, W]``."""
        return self.fuse(self.pyramid(self.reduce(x)))


class CSPDarknet(Backbone):
    """CSPDarknet body; see the module docstring for stages.

    Args:
        size: ``n``, ``s`` or ``m`` (:data:`SIZES`).
        width_mult: multiplies every width on top of the size's own.
        in_channels: image channels.
    """

    stem_weight = "stem.0.weight"

    def __init__(self, size: str, width_mult: float = 1.0, in_channels: int = 3) -> None:
        super().__init__()
        # The PAN neck's blocks, imported here: the necks package imports the backbone
        # contract, so a module-level import would be circular.
        from cvkit.models.necks.pan import CSPBlock, conv_bn_silu

        multipliers = SIZES[size]
        widths = [
            scale_channels(min(base, multipliers.max_channels), multipliers.width * width_mult)
            for base in BASE_WIDTHS
        ]
        depths = [max(1, round(base * multipliers.depth)) for base in BASE_DEPTHS]
        self.stem = conv_bn_silu(in_channels, widths[0], 3, 2)
        stages: list[tuple[StageInfo, list[nn.Module]]] = [
            (StageInfo("stem", widths[0], 2), [self.stem])
        ]
        for index, depth in enumerate(depths):
            name = f"stage{index + 2}"
            layers = [
                conv_bn_silu(widths[index], widths[index + 1], 3, 2),
                CSPBlock(widths[index + 1], widths[index + 1], depth),
            ]
            if index == len(depths) - 1:
                layers.append(SPPF(widths[-1], widths[-1]))
            stage = nn.Sequential(*layers)
            self.add_module(name, stage)
            stages.append((StageInfo(name, widths[index + 1], 2 ** (index + 2)), [stage]))
        self._set_stages(stages)

    def iter_stages(self, x: Tensor) -> Iterator[tuple[str, Tensor]]:
        """Run the stem and the stages, yielding each output."""
        x = self.stem(x)
        yield "stem", x
        for name in self.stage_names[1:]:
            x = getattr(self, name)(x)
            yield name, x


for _size in SIZES:
    register_backbone(f"cspdarknet_{_size}")(partial(CSPDarknet, _size))
