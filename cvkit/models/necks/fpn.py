"""Feature pyramid network (Lin et al., 2017) as a neck, equivalent to torchvision's.

Every input level gets a 1×1 lateral convolution to ``out_channels``; from the coarsest level
down, the running top-down map is upsampled (nearest, to the finer level's exact size, so odd
sizes work) and added to the next lateral; a 3×3 convolution then smooths each sum. With
``extra_max_pool`` a ``pool`` level (torchvision's ``LastLevelMaxPool``, P6 for Faster R-CNN's
RPN) subsamples the coarsest output by 2.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping

import torch.nn.functional as F
from torch import Tensor, nn

from cvkit.errors import ConfigError
from cvkit.models.necks.base import Neck, ShapeSpec
from cvkit.models.necks.registry import register_neck


@register_neck("fpn")
class FPN(Neck):
    """Lateral 1×1 + top-down nearest upsampling + 3×3 output convolutions.

    Outputs keep the input names (finest first), each ``Tensor[B, out_channels, h, w]`` at the
    input's size and stride, plus ``pool`` (``ceil(h / 2) × ceil(w / 2)`` of the last level,
    twice its stride) with ``extra_max_pool``.

    Weights map one to one onto ``torchvision.ops.FeaturePyramidNetwork``: its
    ``inner_blocks.<i>.0.*`` are ``lateral.<i>.*`` here and ``layer_blocks.<i>.0.*`` are
    ``output.<i>.*`` (``weight`` and ``bias``); initialization is the same
    (``kaiming_uniform_(a=1)``, zero bias).

    Args:
        input_shapes: level name → :class:`ShapeSpec`, finest first.
        out_channels: channels of every output level.
        extra_max_pool: append the ``pool`` level.

    Raises:
        ConfigError: a non-positive ``out_channels``.
    """

    def __init__(
        self,
        input_shapes: Mapping[str, ShapeSpec],
        out_channels: int = 256,
        extra_max_pool: bool = False,
    ) -> None:
        super().__init__(input_shapes)
        if out_channels <= 0:
            raise ConfigError(f"fpn: out_channels must be positive, got {out_channels}")
        self.extra_max_pool = extra_max_pool
        shapes = list(self.input_shapes.values())
        self.lateral = nn.ModuleList(nn.Conv2d(s.channels, out_channels, 1) for s in shapes)
        self.output = nn.ModuleList(
            nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in shapes
        )
        for conv in [*self.lateral, *self.output]:
            nn.init.kaiming_uniform_(conv.weight, a=1)
            nn.init.zeros_(conv.bias)
        self.output_shapes = OrderedDict(
            (name, ShapeSpec(out_channels, s.stride)) for name, s in self.input_shapes.items()
        )
        if extra_max_pool:
            self.output_shapes["pool"] = ShapeSpec(out_channels, shapes[-1].stride * 2)

    def forward_levels(self, features: OrderedDict[str, Tensor]) -> OrderedDict[str, Tensor]:
        """Top-down pathway from the coarsest input to the finest, then the extra level."""
        inputs = list(features.values())
        top_down = self.lateral[-1](inputs[-1])
        results = [self.output[-1](top_down)]
        for index in range(len(inputs) - 2, -1, -1):
            lateral = self.lateral[index](inputs[index])
            top_down = lateral + F.interpolate(top_down, size=lateral.shape[-2:], mode="nearest")
            results.insert(0, self.output[index](top_down))
        if self.extra_max_pool:
            results.append(F.max_pool2d(results[-1], kernel_size=1, stride=2))
        return OrderedDict(zip(self.output_shapes, results, strict=True))
