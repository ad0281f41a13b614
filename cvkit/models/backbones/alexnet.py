"""AlexNet (Krizhevsky et al., 2012) in torchvision's single-GPU form and key names.

Five convolutions (11×11 stride 4, 5×5, three 3×3) with ReLU and three 3×3/2 max-pools, no
BatchNorm (as torchvision's, so ``alexnet-*.pth`` loads). Stages: ``conv1`` (stride 4),
``conv2`` (8), ``conv5`` (16, after the three 3×3 convolutions) and ``pool5`` (32).
"""

from __future__ import annotations

from torch import nn

from cvkit.models.backbones.base import PooledMLPHead, SequentialBackbone, StageInfo
from cvkit.models.backbones.base import scale_channels as scale
from cvkit.models.backbones.registry import register_backbone


class AlexNet(SequentialBackbone):
    """AlexNet body; see the module docstring for stages."""

    head_prefixes = ("classifier.",)
    stem_weight = "features.0.weight"

    def __init__(self, width_mult: float = 1.0, in_channels: int = 3) -> None:
        super().__init__()
        self.width_mult = width_mult
        c1, c2, c3, c4 = (scale(c, width_mult) for c in (64, 192, 384, 256))
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, 11, 4, 2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(c1, c2, 5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(c2, c3, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c3, c4, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c4, c4, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2),
        )
        self._set_sequential_stages(
            [
                (StageInfo("conv1", c1, 4), 1),
                (StageInfo("conv2", c2, 8), 4),
                (StageInfo("conv5", c4, 16), 11),
                (StageInfo("pool5", c4, 32), 12),
            ]
        )

    def build_head(self, num_classes: int, dropout: float | None = None) -> nn.Module:
        """torchvision's head: 6×6 pool, dropout before each of two 4096-wide ReLU layers."""
        hidden = scale(4096, self.width_mult)
        return PooledMLPHead(
            self.stage_info["pool5"].channels,
            pool_size=6,
            hidden=(hidden, hidden),
            num_classes=num_classes,
            dropout=0.5 if dropout is None else dropout,
            dropout_first=True,
        )


@register_backbone("alexnet", tiny_width=0.25)
def alexnet(width_mult: float = 1.0, in_channels: int = 3) -> AlexNet:
    """AlexNet: 2.5 M parameters in the body, 58 M in its own head at full width."""
    return AlexNet(width_mult, in_channels)
