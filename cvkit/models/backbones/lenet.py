"""LeNet-5 (LeCun et al., 1998) in its original and its modern form.

``lenet_classic``: 5×5 convolutions (6, then 16 channels) with sigmoid activations and 2×2
average pooling, as in the paper's era. ``lenet``: the same layout with BatchNorm, ReLU and
max-pooling, which trains far faster. Stages: ``conv1`` (stride 2) and ``conv2`` (stride 4,
5×5 cells on a 28×28 input). The head is the 120-84-classes MLP on a 5×5 pooled grid.
"""

from __future__ import annotations

from functools import partial

from torch import nn

from cvkit.models.backbones.base import PooledMLPHead, SequentialBackbone, StageInfo, scale_channels
from cvkit.models.backbones.registry import register_backbone


class LeNet(SequentialBackbone):
    """LeNet body.

    Args:
        modern: BatchNorm + ReLU + max-pool (``lenet``) instead of sigmoid + average pool.
        width_mult: multiplies the channel counts (6, 16) and the head's widths (120, 84).
        in_channels: image channels.
    """

    def __init__(self, modern: bool, width_mult: float = 1.0, in_channels: int = 3) -> None:
        super().__init__()
        self.modern = modern
        self.width_mult = width_mult
        c1, c2 = (scale_channels(c, width_mult, divisor=2) for c in (6, 16))
        layers: list[nn.Module] = []
        stages = []
        for name, (cin, cout, padding) in (("conv1", (in_channels, c1, 2)), ("conv2", (c1, c2, 0))):
            layers.append(nn.Conv2d(cin, cout, 5, padding=padding))
            if modern:
                layers += [nn.BatchNorm2d(cout), nn.ReLU(inplace=True), nn.MaxPool2d(2, 2)]
            else:
                layers += [nn.Sigmoid(), nn.AvgPool2d(2, 2)]
            stages.append((StageInfo(name, cout, 2 * len(stages) + 2), len(layers) - 1))
        self.features = nn.Sequential(*layers)
        self._set_sequential_stages(stages)

    def build_head(self, num_classes: int, dropout: float | None = None) -> nn.Module:
        """Pool to 5×5, then 120 and 84 hidden units (ReLU or sigmoid), then the output."""
        return PooledMLPHead(
            self.stage_info["conv2"].channels,
            pool_size=5,
            hidden=[scale_channels(c, self.width_mult, divisor=2) for c in (120, 84)],
            num_classes=num_classes,
            activation=nn.ReLU if self.modern else nn.Sigmoid,
            dropout=dropout or 0.0,
        )


register_backbone("lenet")(partial(LeNet, True))
register_backbone("lenet_classic")(partial(LeNet, False))
