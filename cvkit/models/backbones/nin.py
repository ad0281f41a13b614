"""Network in Network (Lin et al., 2014): each block is a conv followed by two 1×1 convs.

The 1×1 convolutions act as a small per-pixel MLP. The original ends in a NiN block with one
channel per class and global average pooling instead of fully connected layers; that is
:meth:`NiN.build_head`. The first convolution is padded by 2 (as AlexNet's) so 64×64 inputs
keep a spatial extent. ``nin_bn`` adds BatchNorm after every convolution. Stages: ``block1``
(stride 4), ``block2`` (8), ``block3`` (16) and ``pool3`` (32).
"""

from __future__ import annotations

from functools import partial

from torch import Tensor, nn

from cvkit.models.backbones.base import SequentialBackbone, StageInfo
from cvkit.models.backbones.base import scale_channels as scale
from cvkit.models.backbones.registry import register_backbone


def nin_block(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    stride: int,
    padding: int,
    bn: bool,
    last_activation: bool = True,
) -> nn.Sequential:
    """``kernel_size`` conv then two 1×1 convs, each followed by (BN and) ReLU.

    ``last_activation=False`` ends with the bare last convolution (for logits).
    """
    layers: list[nn.Module] = []
    for index in range(3):
        kernel, step, pad = (kernel_size, stride, padding) if index == 0 else (1, 1, 0)
        source = in_channels if index == 0 else out_channels
        layers.append(nn.Conv2d(source, out_channels, kernel, step, pad))
        if index < 2 or last_activation:
            if bn:
                layers.append(nn.BatchNorm2d(out_channels))
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class NiNHead(nn.Module):
    """Dropout, a NiN block with ``num_classes`` channels, global average pool → logits."""

    def __init__(self, in_channels: int, num_classes: int, dropout: float, bn: bool) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        # No ReLU after the last convolution: the original's clips every logit at zero.
        self.block = nin_block(in_channels, num_classes, 3, 1, 1, bn, last_activation=False)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: Tensor) -> Tensor:
        """``Tensor[B, C, h, w]`` → logits ``Tensor[B, num_classes]``."""
        return self.pool(self.block(self.dropout(x))).flatten(1)


class NiN(SequentialBackbone):
    """NiN body; see the module docstring for stages."""

    def __init__(self, batch_norm: bool, width_mult: float = 1.0, in_channels: int = 3) -> None:
        super().__init__()
        self.batch_norm = batch_norm
        c1, c2, c3 = (scale(c, width_mult) for c in (96, 256, 384))
        self.features = nn.Sequential(
            nin_block(in_channels, c1, 11, 4, 2, batch_norm),
            nn.MaxPool2d(3, 2),
            nin_block(c1, c2, 5, 1, 2, batch_norm),
            nn.MaxPool2d(3, 2),
            nin_block(c2, c3, 3, 1, 1, batch_norm),
            nn.MaxPool2d(3, 2),
        )
        self._set_sequential_stages(
            [
                (StageInfo("block1", c1, 4), 0),
                (StageInfo("block2", c2, 8), 2),
                (StageInfo("block3", c3, 16), 4),
                (StageInfo("pool3", c3, 32), 5),
            ]
        )

    def build_head(self, num_classes: int, dropout: float | None = None) -> nn.Module:
        """The original's head: dropout 0.5, a class-channel NiN block, global average pool."""
        channels = self.stage_info["pool3"].channels
        return NiNHead(channels, num_classes, 0.5 if dropout is None else dropout, self.batch_norm)


register_backbone("nin", tiny_width=0.25)(partial(NiN, False))
register_backbone("nin_bn", tiny_width=0.25)(partial(NiN, True))
