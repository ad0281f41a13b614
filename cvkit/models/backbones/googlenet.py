"""GoogLeNet / Inception v1 (Szegedy et al., 2015) with BatchNorm, in torchvision's key names.

Each Inception block runs four branches in parallel (1×1; 1×1→3×3; 1×1→3×3; 3×3 max-pool→1×1)
and concatenates them. The third branch uses a 3×3 kernel where the paper has 5×5: torchvision
kept that slip so its published weights stay valid, and we match it so ``googlenet-*.pth``
loads. Its auxiliary classifiers (``aux1``, ``aux2``) are training-time heads of the original,
not part of the body; their keys in a torchvision file are skipped. Stages: ``stem`` (stride 4),
``inception3`` (8), ``inception4`` (16), ``inception5`` (32). torchvision's ImageNet weights
expect inputs normalized to [-1, 1] (its ``transform_input``); fine-tuning absorbs the shift.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor, nn

from cvkit.models.backbones.base import Backbone, PoolLinearHead, StageInfo
from cvkit.models.backbones.base import scale_channels as scale
from cvkit.models.backbones.registry import register_backbone

# Inception blocks: name -> (1×1, 3×3 reduce, 3×3, "5×5" reduce, "5×5", pool projection).
INCEPTION = {
    "inception3a": (64, 96, 128, 16, 32, 32),
    "inception3b": (128, 128, 192, 32, 96, 64),
    "inception4a": (192, 96, 208, 16, 48, 64),
    "inception4b": (160, 112, 224, 24, 64, 64),
    "inception4c": (128, 128, 256, 24, 64, 64),
    "inception4d": (112, 144, 288, 32, 64, 64),
    "inception4e": (256, 160, 320, 32, 128, 128),
    "inception5a": (256, 160, 320, 32, 128, 128),
    "inception5b": (384, 192, 384, 48, 128, 128),
}


class BasicConv2d(nn.Module):
    """Convolution without bias, BatchNorm (eps 1e-3, as torchvision), ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, **kwargs: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        """``Tensor[B, in, H, W]`` → ``Tensor[B, out, H', W']``."""
        return torch.relu(self.bn(self.conv(x)))


class Inception(nn.Module):
    """Four parallel branches concatenated along channels (see the module docstring)."""

    def __init__(self, in_channels: int, widths: tuple[int, ...]) -> None:
        super().__init__()
        ch1, ch3_red, ch3, ch5_red, ch5, pool_proj = widths
        self.out_channels = ch1 + ch3 + ch5 + pool_proj
        self.branch1 = BasicConv2d(in_channels, ch1, 1)
        self.branch2 = nn.Sequential(
            BasicConv2d(in_channels, ch3_red, 1), BasicConv2d(ch3_red, ch3, 3, padding=1)
        )
        self.branch3 = nn.Sequential(
            BasicConv2d(in_channels, ch5_red, 1), BasicConv2d(ch5_red, ch5, 3, padding=1)
        )
        self.branch4 = nn.Sequential(
            nn.MaxPool2d(3, 1, padding=1, ceil_mode=True), BasicConv2d(in_channels, pool_proj, 1)
        )

    def forward(self, x: Tensor) -> Tensor:
        """``Tensor[B, in, H, W]`` → ``Tensor[B, out_channels, H, W]``."""
        branches = (self.branch1, self.branch2, self.branch3, self.branch4)
        return torch.cat([branch(x) for branch in branches], dim=1)


class GoogLeNet(Backbone):
    """GoogLeNet body; see the module docstring for stages."""

    head_prefixes = ("fc.",)
    ignored_prefixes = ("aux1.", "aux2.")
    stem_weight = "conv1.conv.weight"

    def __init__(self, width_mult: float = 1.0, in_channels: int = 3) -> None:
        super().__init__()
        c1, c2, c3 = (scale(c, width_mult) for c in (64, 64, 192))
        self.conv1 = BasicConv2d(in_channels, c1, 7, stride=2, padding=3)
        self.maxpool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = BasicConv2d(c1, c2, 1)
        self.conv3 = BasicConv2d(c2, c3, 3, padding=1)
        self.maxpool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.maxpool3 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.maxpool4 = nn.MaxPool2d(2, 2, ceil_mode=True)
        channels = c3
        stages = [(StageInfo("stem", c3, 4), [self.conv1, self.maxpool1, self.conv2, self.conv3])]
        for level, pool in ((3, self.maxpool2), (4, self.maxpool3), (5, self.maxpool4)):
            group: list[nn.Module] = [pool]
            for name, widths in INCEPTION.items():
                if name.startswith(f"inception{level}"):
                    block = Inception(channels, tuple(scale(w, width_mult) for w in widths))
                    setattr(self, name, block)
                    group.append(block)
                    channels = block.out_channels
            stages.append((StageInfo(f"inception{level}", channels, 2**level), group))
        self._set_stages(stages)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.trunc_normal_(module.weight, std=0.01, a=-2, b=2)

    def iter_stages(self, x: Tensor) -> Iterator[tuple[str, Tensor]]:
        """Yield ``stem`` and ``inception3`` … ``inception5`` feature maps."""
        for name in self.stage_names:
            for module in self._stage_modules[name]:
                x = module(x)
            yield name, x

    def build_head(self, num_classes: int, dropout: float | None = None) -> nn.Module:
        """torchvision's head: global average pool, dropout 0.2, ``fc``."""
        head = PoolLinearHead(
            self.stage_info["inception5"].channels,
            num_classes,
            0.2 if dropout is None else dropout,
        )
        nn.init.trunc_normal_(head.fc.weight, std=0.01, a=-2, b=2)
        return head


@register_backbone("googlenet", tiny_width=0.25)
def googlenet(width_mult: float = 1.0, in_channels: int = 3) -> GoogLeNet:
    """GoogLeNet: 5.6 M parameters in the body, 1024 output channels at full width."""
    return GoogLeNet(width_mult, in_channels)
