"""Perceptual losses of neural style transfer: Gram matrices, content, style and TV terms.

Content is a deep layer's activations of a fixed loss network (VGG), style the Gram matrices
of several layers (Gatys et al., 2016). The same :class:`PerceptualLoss` drives the
optimisation of one image (:mod:`cvkit.style.gatys`) and the training of a feed-forward
stylizer (the ``style`` task). Images are RGB ``[B, 3, H, W]`` on the 0..1 scale; the loss
network applies the ImageNet normalization its weights expect.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cvkit.errors import CheckpointError, ConfigError
from cvkit.logs import get_logger

logger = get_logger("style")
CONTENT_LAYER = "relu4_2"
STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def gram_matrix(features: Tensor) -> Tensor:
    """Channel correlations ``G = F Fᵀ / (C·H·W)`` of feature maps.

    Args:
        features (Tensor[B, C, H, W]): activations of one layer.

    Returns:
        ``Tensor[B, C, C]``; normalising by ``C·H·W`` makes layers and image sizes comparable.
    """
    batch, channels, height, width = features.shape
    flat = features.reshape(batch, channels, height * width)
    return flat @ flat.transpose(1, 2) / (channels * height * width)


def content_loss(features: Tensor, target: Tensor) -> Tensor:
    """Mean squared difference of activations ``[B, C, H, W]`` (``target`` broadcasts)."""
    return F.mse_loss(features, target.expand_as(features))


def style_loss(features: Sequence[Tensor], target_grams: Sequence[Tensor]) -> Tensor:
    """Sum over layers of the mean squared difference between Gram matrices.

    Args:
        features: one ``Tensor[B, C_l, H_l, W_l]`` per style layer.
        target_grams: one ``Tensor[1 or B, C_l, C_l]`` per layer, in the same order.
    """
    if len(features) != len(target_grams):
        raise ValueError(f"{len(features)} feature maps for {len(target_grams)} Gram matrices")
    total = features[0].new_zeros(())
    for feature, target in zip(features, target_grams, strict=True):
        gram = gram_matrix(feature)
        total = total + F.mse_loss(gram, target.expand_as(gram))
    return total


def total_variation(images: Tensor) -> Tensor:
    """Mean squared difference of vertically and horizontally adjacent pixels (summed).

    Args:
        images (Tensor[B, C, H, W]).
    """
    vertical = (images[:, :, 1:, :] - images[:, :, :-1, :]).pow(2).mean()
    horizontal = (images[:, :, :, 1:] - images[:, :, :, :-1]).pow(2).mean()
    return vertical + horizontal


class LossNetwork(nn.Module):
    """A frozen VGG read at named layers; takes RGB ``[B, 3, H, W]`` in 0..1.

    Args:
        backbone: a VGG backbone (anything with ``taps(x, names)``).
    """

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone.eval().requires_grad_(False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def train(self, mode: bool = True) -> LossNetwork:
        """The loss network always stays in eval mode."""
        super().train(False)
        return self

    def forward(self, images: Tensor, layers: Sequence[str]) -> OrderedDict[str, Tensor]:
        """Activations ``name → Tensor[B, C, h, w]`` of ``layers`` for ``images`` in 0..1."""
        return self.backbone.taps((images - self.mean) / self.std, layers)


def build_loss_network(
    vgg: str | Path | None = None, depth: int | None = None, width_mult: float = 1.0
) -> LossNetwork:
    """The loss network: VGG-16/19 with weights from a torchvision file, or random weights.

    Args:
        vgg: a torchvision ``vgg16-*.pth`` / ``vgg19-*.pth`` state dict (never downloaded);
            ``None`` keeps random weights (results are texture-like, not the paper's).
        depth: 16 or 19; ``None`` reads it from the file (19 without a file).
        width_mult: channel multiplier (tests use small random networks).

    Raises:
        ConfigError: a depth other than 16 or 19.
        CheckpointError: the file is unreadable or is not a VGG-16/19 of that depth.
    """
    from cvkit.models.backbones import create_backbone, read_state_dict

    if vgg is not None and depth is None:
        state = read_state_dict(vgg)
        if "features.0.weight" not in state:
            raise CheckpointError(f"{vgg}: not a torchvision VGG state dict (no features.0.weight)")
        depth = 19 if "features.34.weight" in state else 16
    depth = 19 if depth is None else depth
    if depth not in (16, 19):
        raise ConfigError(f"style: the loss network is VGG-16 or VGG-19, got depth {depth}")
    backbone = create_backbone(f"vgg{depth}", pretrained=vgg, width_mult=width_mult)
    if vgg is None:
        logger.warning("loss network VGG-%d has random weights (no --vgg file given)", depth)
    return LossNetwork(backbone)


class PerceptualLoss(nn.Module):
    """Weighted content, style and total-variation losses against fixed style images.

    The style target of each layer is the blend ``Σ_s w_s G_l(style_s)`` of the style images'
    Gram matrices (weights normalised to sum 1), computed once here.

    Args:
        network: the :class:`LossNetwork`.
        style_images: RGB ``Tensor[1, 3, h_s, w_s]`` in 0..1 (sizes may differ); may be empty
            when ``style_weight`` is 0.
        style_blend: one weight per style image (default equal).
        content_layer, style_layers: tap names of the network.
        content_weight, style_weight, tv_weight: multipliers of the three terms.

    Raises:
        ConfigError: no style image with a positive style weight, or blend weights that do not
            match the images or are not positive.
    """

    def __init__(
        self,
        network: LossNetwork,
        style_images: Sequence[Tensor],
        style_blend: Sequence[float] | None = None,
        content_layer: str = CONTENT_LAYER,
        style_layers: Sequence[str] = STYLE_LAYERS,
        content_weight: float = 1.0,
        style_weight: float = 1e4,
        tv_weight: float = 0.0,
    ) -> None:
        super().__init__()
        self.network = network
        self.content_layer = content_layer
        self.style_layers = list(style_layers) if style_weight > 0 else []
        self.content_weight, self.style_weight, self.tv_weight = (
            content_weight,
            style_weight,
            tv_weight,
        )
        if style_weight > 0 and not style_images:
            raise ConfigError("style: style_weight > 0 needs at least one style image")
        blend = [1.0] * len(style_images) if style_blend is None else list(style_blend)
        if len(blend) != len(style_images) or any(weight <= 0 for weight in blend):
            raise ConfigError(
                f"style: --style-weights needs one positive weight per style image "
                f"({len(style_images)}), got {blend}"
            )
        targets = [torch.zeros(()) for _ in self.style_layers]
        with torch.no_grad():
            for image, weight in zip(style_images, blend, strict=True):
                if not self.style_layers:
                    break
                features = network(image, self.style_layers)
                for index, layer in enumerate(self.style_layers):
                    targets[index] = targets[index] + weight / sum(blend) * gram_matrix(
                        features[layer]
                    )
        for layer, target in zip(self.style_layers, targets, strict=True):
            self.register_buffer(f"gram_{layer}", target)

    @property
    def target_grams(self) -> list[Tensor]:
        """The blended style Gram matrices ``Tensor[1, C_l, C_l]``, one per style layer."""
        return [getattr(self, f"gram_{layer}") for layer in self.style_layers]

    def content_features(self, images: Tensor) -> Tensor:
        """The content target: ``content_layer`` activations of ``images`` (no gradient)."""
        with torch.no_grad():
            return self.network(images, [self.content_layer])[self.content_layer]

    def forward(self, images: Tensor, content_target: Tensor) -> dict[str, Tensor]:
        """The weighted terms for ``images [B, 3, H, W]`` in 0..1.

        Args:
            images: the stylised images (with gradient).
            content_target: :meth:`content_features` of the content images (``[1 or B, ...]``).

        Returns:
            ``{"content", "style", "tv"}`` scalars, already multiplied by their weights.
        """
        layers = list(dict.fromkeys([self.content_layer, *self.style_layers]))
        features = self.network(images, layers)
        losses = {
            "content": self.content_weight
            * content_loss(features[self.content_layer], content_target)
        }
        style_features = [features[layer] for layer in self.style_layers]
        losses["style"] = (
            self.style_weight * style_loss(style_features, self.target_grams)
            if style_features
            else images.new_zeros(())
        )
        losses["tv"] = self.tv_weight * total_variation(images)
        return losses
