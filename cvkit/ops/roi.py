"""Region-of-interest pooling: RoI pool, RoI align, and multi-scale RoI align over FPN levels.

The kernels are torchvision's (CPU and CUDA, autograd, ONNX); this module validates inputs,
accepts boxes per image, and assigns each box to an FPN level by its size (FPN paper, eq. 1).
Boxes are ``(x1, y1, x2, y2)`` in input-image pixels; ``spatial_scale`` (or the level stride)
maps them to feature-map coordinates.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torchvision
from torch import Tensor

from cvkit.ops.boxes import BoxDtypeError, BoxError, BoxShapeError, box_area, check_boxes


def boxes_to_rois(boxes: Tensor | Sequence[Tensor]) -> Tensor:
    """RoIs ``Tensor[K, 5]`` ``(image_index, x1, y1, x2, y2)`` from boxes per image.

    Args:
        boxes: a list with one ``Tensor[k_i, 4]`` per image, or a ready ``Tensor[K, 5]``.
    """
    if isinstance(boxes, Tensor):
        if boxes.ndim != 2 or boxes.shape[1] != 5:
            raise BoxShapeError(
                f"RoIs must be [K, 5] (image_index, x1, y1, x2, y2), got {tuple(boxes.shape)}"
            )
        return boxes
    for i, per_image in enumerate(boxes):
        check_boxes(per_image, f"boxes[{i}]")
    if not boxes:
        raise BoxError("boxes is an empty list: pass one Tensor[k, 4] per image")
    index = torch.cat([torch.full_like(b[:, :1], i) for i, b in enumerate(boxes)])
    return torch.cat([index, torch.cat(list(boxes))], dim=1)


def _check_features(features: Tensor, rois: Tensor, name: str = "input") -> None:
    if features.ndim != 4:
        raise BoxShapeError(f"{name} must be [B, C, H, W], got {tuple(features.shape)}")
    if rois.dtype != features.dtype:
        raise BoxDtypeError(f"boxes dtype {rois.dtype} differs from {name} dtype {features.dtype}")


def roi_pool(
    input: Tensor,
    boxes: Tensor | Sequence[Tensor],
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
) -> Tensor:
    """Max-pool each box's region of ``input`` into a fixed grid (Fast R-CNN RoI pooling).

    Args:
        input (Tensor[B, C, H, W]): feature maps (torchvision's name).
        boxes: one ``Tensor[k_i, 4]`` ``(x1, y1, x2, y2)`` per image, or ``Tensor[K, 5]`` RoIs
            ``(image_index, x1, y1, x2, y2)``, in input-image pixels; same dtype as ``input``.
        output_size: ``(height, width)`` of the pooled grid (or one int).
        spatial_scale: feature-map pixels per input pixel (``1 / stride``).

    Returns:
        Tensor[K, C, height, width].
    """
    rois = boxes_to_rois(boxes)
    _check_features(input, rois)
    return torchvision.ops.roi_pool(input, rois, output_size, spatial_scale)


def roi_align(
    input: Tensor,
    boxes: Tensor | Sequence[Tensor],
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """Bilinearly sample each box's region of ``input`` on a fixed grid (Mask R-CNN RoI align).

    Args:
        input (Tensor[B, C, H, W]): feature maps (torchvision's name).
        boxes: as in :func:`roi_pool`.
        output_size: ``(height, width)`` of the output grid (or one int).
        spatial_scale: feature-map pixels per input pixel (``1 / stride``).
        sampling_ratio: samples per bin side; ``-1`` adapts to the box size.
        aligned: shift boxes by -0.5 pixel so pixel centres line up (the corrected variant);
            ``False`` reproduces the original and torchvision's Faster R-CNN.

    Returns:
        Tensor[K, C, height, width].
    """
    rois = boxes_to_rois(boxes)
    _check_features(input, rois)
    return torchvision.ops.roi_align(
        input, rois, output_size, spatial_scale, sampling_ratio, aligned
    )


def fpn_levels(
    boxes: Tensor,
    min_level: int,
    max_level: int,
    canonical_size: float = 224.0,
    canonical_level: int = 4,
    eps: float = 1e-6,
) -> Tensor:
    """FPN level of each box: ``floor(canonical_level + log2(sqrt(area) / canonical_size))``.

    Args:
        boxes (Tensor[K, 4]): ``(x1, y1, x2, y2)`` in input pixels.
        min_level, max_level: levels available (a level-``k`` map has stride ``2**k``).
        canonical_size, canonical_level: a box of side ``canonical_size`` maps to this level.
        eps: added before ``floor`` so exact powers of two are not pushed down by rounding.

    Returns:
        Tensor[K] int64: index into the levels, ``level - min_level``, in ``[0, max - min]``.
    """
    check_boxes(boxes)
    side = box_area(boxes).clamp(min=0).sqrt()
    level = torch.floor(canonical_level + torch.log2(side / canonical_size) + eps)
    return (level.clamp(min=min_level, max=max_level) - min_level).to(torch.int64)


def multiscale_roi_align(
    features: Sequence[Tensor],
    boxes: Sequence[Tensor],
    output_size: int | tuple[int, int],
    strides: Sequence[int],
    sampling_ratio: int = 2,
    canonical_size: float = 224.0,
    canonical_level: int = 4,
    aligned: bool = False,
) -> Tensor:
    """RoI align where each box reads the FPN level that matches its size.

    Args:
        features: one ``Tensor[B, C, H_l, W_l]`` per level, finest first.
        boxes: one ``Tensor[k_i, 4]`` per image, ``(x1, y1, x2, y2)`` input pixels.
        output_size: ``(height, width)`` of the output grid (or one int).
        strides: stride of each level in input pixels, powers of two (e.g. ``[4, 8, 16, 32]``).
        sampling_ratio, aligned: as in :func:`roi_align`.
        canonical_size, canonical_level: as in :func:`fpn_levels`.

    Returns:
        Tensor[K, C, height, width], boxes in the order of ``torch.cat(boxes)``.
    """
    if len(features) != len(strides) or not features:
        raise BoxError(f"{len(features)} feature levels but {len(strides)} strides")
    levels_log2 = [math.log2(s) for s in strides]
    if any(s <= 0 or not v.is_integer() for s, v in zip(strides, levels_log2, strict=True)):
        raise BoxError(f"strides must be powers of two, got {list(strides)}")
    output_size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    rois = boxes_to_rois(boxes)
    first = features[0]
    _check_features(first, rois, "features[0]")
    if len(features) == 1:
        return roi_align(first, rois, output_size, 1.0 / strides[0], sampling_ratio, aligned)
    levels = fpn_levels(
        rois[:, 1:], int(levels_log2[0]), int(levels_log2[-1]), canonical_size, canonical_level
    )
    if torch.jit.is_tracing():
        # A traced (exported) graph must not depend on which levels held boxes at trace time:
        # pool every box on every level and keep each box's own level.
        result = None
        for level, (feature, stride) in enumerate(zip(features, strides, strict=True)):
            pooled = roi_align(feature, rois, output_size, 1.0 / stride, sampling_ratio, aligned)
            mine = (levels == level)[:, None, None, None]
            result = torch.where(mine, pooled, pooled.new_zeros(()) if result is None else result)
        return result
    result = first.new_zeros((rois.shape[0], first.shape[1], *output_size))
    for level, (feature, stride) in enumerate(zip(features, strides, strict=True)):
        index = torch.nonzero(levels == level).flatten()
        # Written even when no box reads this level, so that the result is part of the
        # autograd graph (zero gradients to every level) when there are no boxes at all.
        result[index] = roi_align(
            feature, rois[index], output_size, 1.0 / stride, sampling_ratio, aligned
        )
    return result
