"""Module forms of the RoI ops, with torchvision's names and signatures: ``RoIAlign``,
``RoIPool`` and ``MultiScaleRoIAlign``.

Each module holds only its settings (no parameters, no buffers) and calls the function of
:mod:`cvkit.ops.roi` in ``forward``, so code written against ``torchvision.ops`` runs after
changing the import. ``torch.fx`` symbolic tracing sees each forward as one call node, as it
sees torchvision's; TorchScript is not supported (cvkit.ops functions are not scriptable).
Boxes are ``(x1, y1, x2, y2)`` in input-image pixels throughout.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.fx
from torch import Tensor, nn

from cvkit.ops.boxes import BoxError, BoxShapeError
from cvkit.ops.roi import multiscale_roi_align, roi_align, roi_pool

# Symbolic tracing records these calls as single nodes instead of tracing into them (the box
# list checks inside cannot run on proxies).
torch.fx.wrap("roi_align")
torch.fx.wrap("roi_pool")


class RoIPool(nn.Module):
    """Max-pool each box's region of a feature map into a fixed grid (see :func:`roi_pool`).

    Args:
        output_size: ``(height, width)`` of the pooled grid, or one int for a square grid.
        spatial_scale: feature-map pixels per input pixel (``1 / stride``).

    Forward:
        input (Tensor[B, C, H, W]): feature maps.
        rois: ``Tensor[K, 5]`` ``(image_index, x1, y1, x2, y2)``, or a list with one
            ``Tensor[k_i, 4]`` ``(x1, y1, x2, y2)`` per image; input-image pixels, same dtype
            as ``input``.
        Returns ``Tensor[K, C, height, width]``, rows in the order of the boxes.
    """

    def __init__(self, output_size: int | Sequence[int], spatial_scale: float) -> None:
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale

    def forward(self, input: Tensor, rois: Tensor | list[Tensor]) -> Tensor:
        return roi_pool(input, rois, self.output_size, self.spatial_scale)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(output_size={self.output_size}, "
            f"spatial_scale={self.spatial_scale})"
        )


class RoIAlign(nn.Module):
    """Bilinearly sample each box's region of a feature map on a fixed grid (see
    :func:`roi_align`).

    Args:
        output_size: ``(height, width)`` of the output grid, or one int for a square grid.
        spatial_scale: feature-map pixels per input pixel (``1 / stride``).
        sampling_ratio: samples per bin side; ``-1`` picks ``ceil(bin size)`` per box.
        aligned: shift boxes by half a pixel so that pixel centres line up (Detectron2's
            corrected variant); ``False`` is the original Mask R-CNN behaviour.

    Forward:
        input (Tensor[B, C, H, W]): feature maps.
        rois: as in :class:`RoIPool`.
        Returns ``Tensor[K, C, height, width]``, rows in the order of the boxes.
    """

    def __init__(
        self,
        output_size: int | Sequence[int],
        spatial_scale: float,
        sampling_ratio: int,
        aligned: bool = False,
    ) -> None:
        super().__init__()
        self.output_size, self.spatial_scale = output_size, spatial_scale
        self.sampling_ratio, self.aligned = sampling_ratio, aligned

    def forward(self, input: Tensor, rois: Tensor | list[Tensor]) -> Tensor:
        return roi_align(
            input, rois, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(output_size={self.output_size}, "
            f"spatial_scale={self.spatial_scale}, sampling_ratio={self.sampling_ratio}, "
            f"aligned={self.aligned})"
        )


def feature_strides(
    features: Sequence[Tensor], image_shapes: Sequence[tuple[int, int]]
) -> list[float]:
    """Stride of each feature map in input pixels, a power of two inferred from its height.

    Args:
        features: ``Tensor[B, C, H_l, W_l]`` per level.
        image_shapes: ``(height, width)`` of each image before the backbone; the tallest one
            is the reference (a padded batch is as tall as its tallest image).

    Returns:
        ``2 ** round(log2(max_height / H_l))`` per level.
    """
    if not image_shapes:
        raise BoxError("image_shapes is empty: pass the (height, width) of each image")
    height = max(shape[0] for shape in image_shapes)
    return [2.0 ** round(math.log2(height / feature.shape[-2])) for feature in features]


@torch.fx.wrap
def _pool_named_levels(
    x: Mapping[str, Tensor],
    boxes: list[Tensor],
    image_shapes: list[tuple[int, int]],
    featmap_names: Sequence[str],
    output_size: tuple[int, int],
    sampling_ratio: int,
    canonical_scale: float,
    canonical_level: int,
) -> Tensor:
    # Levels are taken in the order of ``x`` (as torchvision does), not of ``featmap_names``.
    features = [feature for name, feature in x.items() if name in featmap_names]
    if not features:
        raise BoxShapeError(f"no feature map named {list(featmap_names)} among {list(x)}")
    return multiscale_roi_align(
        features,
        boxes,
        output_size,
        feature_strides(features, image_shapes),
        sampling_ratio,
        canonical_size=canonical_scale,
        canonical_level=canonical_level,
    )


class MultiScaleRoIAlign(nn.Module):
    """RoI align over named FPN levels, each box reading the level that matches its size.

    A box of side ``s = sqrt(area)`` reads level ``floor(canonical_level + log2(s /
    canonical_scale))``, clamped to the levels given (FPN paper, eq. 1; see
    :func:`~cvkit.ops.roi.fpn_levels`). Each level's stride is inferred at every call from its
    height and the tallest image (:func:`feature_strides`); torchvision infers the strides at
    the first call and keeps them, which gives the same result as long as they do not change.

    Args:
        featmap_names: names of the levels to pool from, finest to coarsest; other entries of
            the feature dict are ignored.
        output_size: ``(height, width)`` of the output grid, or one int for a square grid.
        sampling_ratio: samples per bin side; ``-1`` picks ``ceil(bin size)`` per box.
        canonical_scale, canonical_level: a box of side ``canonical_scale`` pixels reads level
            ``canonical_level`` (the level of stride ``2 ** canonical_level``).

    Forward:
        x (dict[str, Tensor[B, C, H_l, W_l]]): feature maps by name, finest first; every level
            has the same ``C``.
        boxes: one ``Tensor[k_i, 4]`` ``(x1, y1, x2, y2)`` per image, in input-image pixels,
            same dtype as the features.
        image_shapes: ``(height, width)`` of each image before the backbone.
        Returns ``Tensor[K, C, height, width]``, ``K = sum(k_i)``, rows in the order of
        ``torch.cat(boxes)``.
    """

    def __init__(
        self,
        featmap_names: list[str],
        output_size: int | Sequence[int],
        sampling_ratio: int,
        *,
        canonical_scale: int = 224,
        canonical_level: int = 4,
    ) -> None:
        super().__init__()
        self.featmap_names = featmap_names
        size = (output_size, output_size) if isinstance(output_size, int) else output_size
        self.output_size = tuple(size)
        self.sampling_ratio = sampling_ratio
        self.canonical_scale = canonical_scale
        self.canonical_level = canonical_level

    def forward(
        self,
        x: dict[str, Tensor],
        boxes: list[Tensor],
        image_shapes: list[tuple[int, int]],
    ) -> Tensor:
        return _pool_named_levels(
            x,
            boxes,
            image_shapes,
            self.featmap_names,
            self.output_size,
            self.sampling_ratio,
            self.canonical_scale,
            self.canonical_level,
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(featmap_names={self.featmap_names}, "
            f"output_size={self.output_size}, sampling_ratio={self.sampling_ratio})"
        )
