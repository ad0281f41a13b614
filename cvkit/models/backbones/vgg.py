"""VGG-11/13/16/19 (Simonyan & Zisserman, 2015), with or without BatchNorm, torchvision keys.

``features`` is torchvision's ``nn.Sequential`` (3×3 conv, optional BN, ReLU; 2×2 max-pools),
so ``vgg16-*.pth`` / ``vgg16_bn-*.pth`` files load. Stages are the outputs of each block's
last ReLU before its pool: ``conv1`` (stride 1), ``conv2`` (2), ``conv3`` (4), ``conv4`` (8,
SSD's ``conv4_3`` in VGG-16), ``conv5`` (16), and ``pool5`` (32) after the last pool.

Every layer can also be tapped by name (``backbone.taps(x, names)``,
the layers style-transfer losses read): ``conv{b}_{i}``, ``bn{b}_{i}`` (``_bn`` models) and
``relu{b}_{i}`` for convolution ``i`` of block ``b`` (both from 1), and ``pool{b}``; in
VGG-19 these run from ``conv1_1`` (``features[0]``) to ``relu5_4`` (``features[35]``) and
``pool5`` (``features[36]``), and ``conv4_2`` is ``features[21]``, as in torchvision.
"""

from __future__ import annotations

from functools import partial

from torch import nn

from cvkit.models.backbones.base import PooledMLPHead, SequentialBackbone, StageInfo
from cvkit.models.backbones.base import scale_channels as scale
from cvkit.models.backbones.registry import register_backbone

# Convolutions per block for each depth (channels 64, 128, 256, 512, 512).
BLOCK_DEPTHS = {11: (1, 1, 2, 2, 2), 13: (2, 2, 2, 2, 2), 16: (2, 2, 3, 3, 3), 19: (2, 2, 4, 4, 4)}
BLOCK_WIDTHS = (64, 128, 256, 512, 512)


class VGG(SequentialBackbone):
    """VGG body; see the module docstring for stages.

    Args:
        depth: 11, 13, 16 or 19.
        batch_norm: BatchNorm after every convolution (the ``_bn`` models).
        width_mult: multiplies every width.
        in_channels: image channels.
    """

    head_prefixes = ("classifier.",)
    stem_weight = "features.0.weight"

    def __init__(
        self, depth: int, batch_norm: bool, width_mult: float = 1.0, in_channels: int = 3
    ) -> None:
        super().__init__()
        self.width_mult = width_mult
        layers: list[nn.Module] = []
        names: list[str] = []
        stages = []
        channels = in_channels
        for block, (convs, width) in enumerate(zip(BLOCK_DEPTHS[depth], BLOCK_WIDTHS, strict=True)):
            width = scale(width, width_mult)
            for conv in range(1, convs + 1):
                layers.append(nn.Conv2d(channels, width, 3, padding=1))
                names.append(f"conv{block + 1}_{conv}")
                if batch_norm:
                    layers.append(nn.BatchNorm2d(width))
                    names.append(f"bn{block + 1}_{conv}")
                layers.append(nn.ReLU(inplace=True))
                names.append(f"relu{block + 1}_{conv}")
                channels = width
            stages.append((StageInfo(f"conv{block + 1}", width, 2**block), len(layers) - 1))
            layers.append(nn.MaxPool2d(2, 2))
            names.append(f"pool{block + 1}")
        stages.append((StageInfo("pool5", channels, 32), len(layers) - 1))
        self.features = nn.Sequential(*layers)
        self._set_sequential_stages(stages)
        self._set_layer_names(names)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def build_head(self, num_classes: int, dropout: float | None = None) -> nn.Module:
        """torchvision's head: 7×7 pool, two 4096-wide ReLU layers with dropout 0.5, output."""
        hidden = scale(4096, self.width_mult)
        head = PooledMLPHead(
            self.stage_info["pool5"].channels,
            pool_size=7,
            hidden=(hidden, hidden),
            num_classes=num_classes,
            dropout=0.5 if dropout is None else dropout,
        )
        for module in head.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0, 0.01)
                nn.init.zeros_(module.bias)
        return head


for _depth in BLOCK_DEPTHS:
    register_backbone(f"vgg{_depth}", tiny_width=0.25)(partial(VGG, _depth, False))
    register_backbone(f"vgg{_depth}_bn", tiny_width=0.25)(partial(VGG, _depth, True))
