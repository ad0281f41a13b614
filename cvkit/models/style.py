"""The feed-forward stylizer of Johnson et al. (2016), with instance normalization.

``TransformerNet`` maps an RGB image ``[B, 3, H, W]`` in 0..1 to its stylised version of the
same size, in 0..1: a 9×9 convolution, two stride-2 3×3 convolutions, residual blocks, two
nearest-neighbour upsamplings each followed by a 3×3 convolution (Odena et al.'s fix for the
checkerboard of transposed convolutions) and a 9×9 convolution, then a sigmoid. Every
convolution pads by reflection; instance normalization (Ulyanov et al.) follows all but the
last. Each upsampling returns exactly to the size of the matching encoder map, so any height
and width work (odd ones too) and an ONNX export keeps them dynamic.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from cvkit.config import Config
from cvkit.models.build import register_model


def _conv(in_channels: int, out_channels: int, kernel: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.ReflectionPad2d(kernel // 2), nn.Conv2d(in_channels, out_channels, kernel, stride)
    )


def _block(in_channels: int, out_channels: int, kernel: int, stride: int = 1) -> nn.Sequential:
    """Reflection-padded convolution, instance norm (affine), ReLU."""
    return nn.Sequential(
        _conv(in_channels, out_channels, kernel, stride),
        nn.InstanceNorm2d(out_channels, affine=True),
        nn.ReLU(),
    )


class ResidualBlock(nn.Module):
    """``x + IN(conv(ReLU(IN(conv(x)))))`` at constant width and size."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _block(channels, channels, 3),
            _conv(channels, channels, 3),
            nn.InstanceNorm2d(channels, affine=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        """``Tensor[B, C, h, w]`` → same shape."""
        return x + self.body(x)


class TransformerNet(nn.Module):
    """Johnson et al.'s image transformation network.

    Args:
        channels: width of the first layer (32 in the paper); the encoder doubles it twice.
        residual_blocks: residual blocks at the lowest resolution (5 in the paper).
    """

    def __init__(self, channels: int = 32, residual_blocks: int = 5) -> None:
        super().__init__()
        wide = 4 * channels
        self.conv1 = _block(3, channels, 9)
        self.conv2 = _block(channels, 2 * channels, 3, stride=2)
        self.conv3 = _block(2 * channels, wide, 3, stride=2)
        self.residuals = nn.Sequential(*(ResidualBlock(wide) for _ in range(residual_blocks)))
        self.up1 = _block(wide, 2 * channels, 3)
        self.up2 = _block(2 * channels, channels, 3)
        self.out = _conv(channels, 3, 9)

    def forward(self, images: Tensor) -> Tensor:
        """``images (Tensor[B, 3, H, W])`` RGB in 0..1 → stylised ``Tensor[B, 3, H, W]`` in 0..1."""
        full = self.conv1(images)
        half = self.conv2(full)
        x = self.residuals(self.conv3(half))
        x = self.up1(F.interpolate(x, size=half.shape[-2:], mode="nearest"))
        x = self.up2(F.interpolate(x, size=full.shape[-2:], mode="nearest"))
        return self.out(x).sigmoid()


@register_model("style")
def build_stylizer(config: Config, num_classes: int) -> TransformerNet:
    """The ``model.style`` transformer network (``num_classes`` is unused: one style)."""
    options = config.model.style
    return TransformerNet(options.channels, options.residual_blocks)
