"""Fully convolutional network (Long, Shelhamer & Darrell, 2015) on any cvkit backbone.

The backbone's classifier is dropped; a 1×1 convolution turns its deepest feature map (stride
``S``, 32 for ResNet) into per-class scores, and transposed convolutions upsample the scores
back to the input resolution:

* **FCN-32s** upsamples the stride-``S`` scores by ``S`` in one step.
* **FCN-16s** upsamples them ×(S/16), adds 1×1 scores of the stride-16 stage, then ×16.
* **FCN-8s** also adds the stride-8 stage's scores before the final ×8.

Every transposed convolution upsamples exactly ×f with kernel ``2f``, stride ``f`` and padding
``f/2`` (``n' = s·n + k − 2p − s = f·n``) and starts as bilinear interpolation
(:func:`bilinear_kernel`); skip scores start at zero, so an untrained FCN-8s computes the same
as FCN-32s. Inputs whose sides are not multiples of ``S`` are zero-padded bottom/right to the
next multiple and the logits cropped back, so every stage lines up exactly at any input size.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cvkit.config import Config
from cvkit.errors import ConfigError
from cvkit.models.backbones import Backbone, create_backbone
from cvkit.models.build import register_model
from cvkit.models.transfer import body_head_groups

Variant = Literal["32s", "16s", "8s"]
SKIP_STRIDES: dict[str, tuple[int, ...]] = {"32s": (), "16s": (16,), "8s": (16, 8)}


def bilinear_kernel(in_channels: int, out_channels: int, kernel_size: int) -> Tensor:
    """Weights that make a ``ConvTranspose2d`` perform bilinear upsampling.

    With ``kernel_size = 2f``, stride ``f`` and padding ``f // 2`` (``f`` even, or ``f = 1``),
    the layer equals ``F.interpolate(scale_factor=f, mode="bilinear", align_corners=False)``
    away from the border (the outer ``f // 2`` pixels differ, where interpolation clamps and the
    transposed convolution sees zeros).

    Args:
        in_channels: input channels of the layer.
        out_channels: output channels; channel ``i`` is interpolated from input channel ``i``
            (the other weights are zero).
        kernel_size: side of the square kernel.

    Returns:
        ``Tensor[in_channels, out_channels, kernel_size, kernel_size]`` (``ConvTranspose2d``
        weight layout).
    """
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    position = torch.arange(kernel_size, dtype=torch.float32)
    profile = 1 - (position - center).abs() / factor
    weight = torch.zeros(in_channels, out_channels, kernel_size, kernel_size)
    channels = torch.arange(min(in_channels, out_channels))
    weight[channels, channels] = profile[:, None] * profile[None, :]
    return weight


def upsampling_layer(channels: int, factor: int) -> nn.ConvTranspose2d:
    """A transposed convolution that upsamples ``channels`` maps exactly ×``factor``.

    Kernel ``2·factor``, stride ``factor``, padding ``factor // 2``, no bias, initialized to
    bilinear interpolation (:func:`bilinear_kernel`).
    """
    layer = nn.ConvTranspose2d(
        channels, channels, 2 * factor, stride=factor, padding=factor // 2, bias=False
    )
    with torch.no_grad():
        layer.weight.copy_(bilinear_kernel(channels, channels, 2 * factor))
    return layer


def _last_stage_at_stride(backbone: Backbone, stride: int) -> str | None:
    names = [name for name, info in backbone.stage_info.items() if info.stride == stride]
    return names[-1] if names else None


class FCN(nn.Module):
    """FCN-32s/16s/8s: backbone, 1×1 class scores, transposed-convolution upsampling.

    Args:
        backbone: any :class:`Backbone` whose stage strides are powers of two; its deepest
            stage gives the coarse scores, and the ``16s``/``8s`` variants also read its last
            stages at stride 16 (and 8).
        num_classes: output classes ``C`` (background included, if the dataset has one).
        variant: ``32s``, ``16s`` or ``8s``.
        head_channels: width of an optional 3×3 conv-BN-ReLU block on the deepest features
            before the 1×1 scores (0 for none, as in the paper).
        body_lr_mult: learning-rate multiplier of the backbone's parameters.
        head_lr_mult: learning-rate multiplier of everything else.

    Raises:
        ConfigError: the backbone has no stage at a stride the variant needs.
    """

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int,
        variant: Variant = "8s",
        head_channels: int = 0,
        body_lr_mult: float = 1.0,
        head_lr_mult: float = 1.0,
    ) -> None:
        super().__init__()
        deepest = backbone.stage_names[-1]
        self.stride = backbone.stage_info[deepest].stride
        skips = []
        for stride in SKIP_STRIDES[variant]:
            name = _last_stage_at_stride(backbone, stride)
            if name is None or stride >= self.stride:
                strides = {n: info.stride for n, info in backbone.stage_info.items()}
                raise ConfigError(
                    f"model.fcn.variant: FCN-{variant} needs a stage at stride {stride} below "
                    f"the deepest stride {self.stride}; {type(backbone).__name__} has {strides}"
                )
            skips.append(name)
        backbone.set_out_features([*skips, deepest])
        self.backbone = backbone
        self.deepest = deepest
        self.skips = skips
        self.variant = variant
        self.num_classes = num_classes
        self.body_lr_mult = body_lr_mult
        self.head_lr_mult = head_lr_mult

        in_channels = backbone.channels[deepest]
        head: list[nn.Module] = []
        if head_channels:
            head = [
                nn.Conv2d(in_channels, head_channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(head_channels),
                nn.ReLU(inplace=True),
            ]
            in_channels = head_channels
        self.head = nn.Sequential(*head, nn.Conv2d(in_channels, num_classes, 1))
        self.skip_scores = nn.ModuleList()
        for name in skips:
            score = nn.Conv2d(backbone.channels[name], num_classes, 1)
            nn.init.zeros_(score.weight)
            nn.init.zeros_(score.bias)
            self.skip_scores.append(score)
        factors = list(pairwise([self.stride, *SKIP_STRIDES[variant], 1]))
        if any(coarse % (2 * fine) for coarse, fine in factors):
            raise ConfigError(
                f"model.backbone: FCN needs power-of-two strides of at least 2 for exact "
                f"upsampling; {type(backbone).__name__} ends at stride {self.stride}"
            )
        self.upsample = nn.ModuleList(
            upsampling_layer(num_classes, coarse // fine) for coarse, fine in factors
        )

    def forward(self, images: Tensor) -> Tensor:
        """Per-pixel class logits.

        Args:
            images: ``Tensor[B, 3, H, W]`` normalized images, any ``H`` and ``W``.

        Returns:
            ``Tensor[B, C, H, W]`` logits (argmax over ``C`` is the predicted mask).
        """
        height, width = images.shape[-2:]
        pad_bottom = (self.stride - height % self.stride) % self.stride
        pad_right = (self.stride - width % self.stride) % self.stride
        features = self.backbone(F.pad(images, (0, pad_right, 0, pad_bottom)))
        scores = self.head(features[self.deepest])
        for name, skip_score, upsample in zip(
            self.skips, self.skip_scores, self.upsample, strict=False
        ):
            scores = upsample(scores) + skip_score(features[name])
        scores = self.upsample[-1](scores)
        return scores[:, :, :height, :width]

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Body (backbone) and head parameter groups with their ``lr_mult``, frozen ones dropped.

        Used by :func:`cvkit.engine.optim.build_optimizer`: each group trains at
        ``train.lr * lr_mult``.
        """
        return body_head_groups(self, self.body_lr_mult, self.head_lr_mult)


@register_model("fcn")
def build_fcn(config: Config, num_classes: int) -> FCN:
    """The FCN that ``model:`` describes (``backbone``, ``width_mult``, ``fcn.variant`` ...).

    Stages up to ``model.freeze_at`` are frozen; ``model.pretrained`` is applied by the
    training task, not here.
    """
    cfg = config.model
    backbone = create_backbone(cfg.backbone, width_mult=cfg.width_mult, in_channels=cfg.in_channels)
    backbone.freeze(cfg.freeze_at)
    return FCN(
        backbone,
        num_classes,
        variant=cfg.fcn.variant,
        head_channels=cfg.fcn.head_channels,
        body_lr_mult=cfg.body_lr_mult,
        head_lr_mult=cfg.head_lr_mult,
    )
