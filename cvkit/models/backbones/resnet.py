"""ResNet-18/34/50 (He et al., 2016) with torchvision's module names.

Basic blocks (two 3×3 convolutions) for 18/34, bottleneck blocks (1×1, 3×3, 1×1, stride on the
3×3 as in torchvision's "v1.5") for 50. Stages: ``stem`` (conv, BN, ReLU, max-pool; stride 4),
``layer1`` (4), ``layer2`` (8), ``layer3`` (16), ``layer4`` (32). State-dict keys and shapes
equal torchvision's at ``width_mult=1``, so its ``resnet*.pth`` files load.
"""

from __future__ import annotations

from collections.abc import Iterator

from torch import Tensor, nn

from cvkit.models.backbones.base import Backbone, PoolLinearHead, StageInfo, scale_channels
from cvkit.models.backbones.registry import register_backbone


class BasicBlock(nn.Module):
    """Two 3×3 conv-BN layers with an identity (or 1×1 projection) shortcut."""

    expansion = 1

    def __init__(self, in_channels: int, width: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.downsample = _projection(in_channels, width * self.expansion, stride)

    def forward(self, x: Tensor) -> Tensor:
        """``Tensor[B, in, H, W]`` → ``Tensor[B, width, H / stride, W / stride]``."""
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + shortcut)


class Bottleneck(nn.Module):
    """1×1 reduce, 3×3 (strided), 1×1 expand ×4, with a projection shortcut when needed."""

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int = 1) -> None:
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _projection(in_channels, out_channels, stride)

    def forward(self, x: Tensor) -> Tensor:
        """``Tensor[B, in, H, W]`` → ``Tensor[B, 4 * width, H / stride, W / stride]``."""
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + shortcut)


def _projection(in_channels: int, out_channels: int, stride: int) -> nn.Module | None:
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
        nn.BatchNorm2d(out_channels),
    )


class ResNet(Backbone):
    """ResNet body; see the module docstring for stages and strides.

    Args:
        block: :class:`BasicBlock` or :class:`Bottleneck`.
        depths: blocks per stage, e.g. ``(2, 2, 2, 2)`` for ResNet-18.
        width_mult: multiplies every width (64, 128, 256, 512).
        in_channels: image channels.
    """

    head_prefixes = ("fc.",)
    stem_weight = "conv1.weight"

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        depths: tuple[int, int, int, int],
        width_mult: float = 1.0,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        widths = [scale_channels(c, width_mult) for c in (64, 128, 256, 512)]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages = [(StageInfo("stem", widths[0], 4), [self.conv1, self.bn1])]
        channels = widths[0]
        for index, (width, depth) in enumerate(zip(widths, depths, strict=True)):
            stride = 1 if index == 0 else 2
            blocks = []
            for position in range(depth):
                blocks.append(block(channels, width, stride if position == 0 else 1))
                channels = width * block.expansion
            layer = nn.Sequential(*blocks)
            setattr(self, f"layer{index + 1}", layer)
            stages.append((StageInfo(f"layer{index + 1}", channels, 4 * 2**index), [layer]))
        self._set_stages(stages)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def iter_stages(self, x: Tensor) -> Iterator[tuple[str, Tensor]]:
        """Yield ``stem``, ``layer1`` … ``layer4`` feature maps."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        yield "stem", x
        for name in self.stage_names[1:]:
            x = getattr(self, name)(x)
            yield name, x

    def build_head(self, num_classes: int, dropout: float | None = None) -> nn.Module:
        """torchvision's head: global average pool and ``fc`` (no dropout by default)."""
        return PoolLinearHead(self.stage_info["layer4"].channels, num_classes, dropout or 0.0)


@register_backbone("resnet18", tiny_width=0.25)
def resnet18(width_mult: float = 1.0, in_channels: int = 3) -> ResNet:
    """ResNet-18: basic blocks (2, 2, 2, 2); 11.2 M parameters in the body at full width."""
    return ResNet(BasicBlock, (2, 2, 2, 2), width_mult, in_channels)


@register_backbone("resnet34", tiny_width=0.25)
def resnet34(width_mult: float = 1.0, in_channels: int = 3) -> ResNet:
    """ResNet-34: basic blocks (3, 4, 6, 3)."""
    return ResNet(BasicBlock, (3, 4, 6, 3), width_mult, in_channels)


@register_backbone("resnet50", tiny_width=0.25)
def resnet50(width_mult: float = 1.0, in_channels: int = 3) -> ResNet:
    """ResNet-50: bottleneck blocks (3, 4, 6, 3), 2048 output channels at full width."""
    return ResNet(Bottleneck, (3, 4, 6, 3), width_mult, in_channels)
