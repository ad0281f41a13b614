"""Instance masks in plain numpy for the torch-free runtime: RoI-resolution masks → image pixels.

An exported Mask R-CNN returns one ``M × M`` mask per detection (``M = 28``), in the frame of
its box. :func:`paste_masks` resizes each into its box on an image canvas exactly as
:func:`cvkit.models.detection.mask_heads.paste_masks_in_image` (and torchvision's
``paste_masks_in_image``) does — one zero pixel of padding, the box widened to match and
truncated to integers, bilinear resizing with half-pixel centres — in float32, so the
probabilities agree with torch's to rounding and the thresholded masks agree pixel for pixel
away from the threshold. :func:`masks_to_original` maps them on into an original image as the
torch models' :meth:`~cvkit.structures.Instances.to_original` does.
"""

from __future__ import annotations

import numpy as np

from cvkit.geometry import Geometry

MASK_THRESHOLD = 0.5
"""Probability above which a pasted pixel belongs to the instance."""


def _linear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices ``i0, i1 [out]`` and weight ``w1 [out]`` of 1-D linear resizing with
    half-pixel centres (``align_corners=False``), as torch computes them in float32."""
    scale = np.float32(in_size) / np.float32(out_size)
    source = scale * (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5)
    source = np.maximum(source, np.float32(0))
    first = source.astype(np.int64)
    second = np.minimum(first + 1, in_size - 1)
    return first, second, source - first.astype(np.float32)


def resize_bilinear(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``float32 [H, W]`` → ``float32 [h, w]`` bilinear, half-pixel centres, no antialiasing
    (``torch.nn.functional.interpolate(..., mode="bilinear", align_corners=False)``)."""
    rows0, rows1, row_weight = _linear_taps(image.shape[0], size[0])
    cols0, cols1, col_weight = _linear_taps(image.shape[1], size[1])
    one = np.float32(1)
    left = (one - row_weight)[:, None] * image[rows0][:, cols0] + row_weight[:, None] * image[
        rows1
    ][:, cols0]
    right = (one - row_weight)[:, None] * image[rows0][:, cols1] + row_weight[:, None] * image[
        rows1
    ][:, cols1]
    return (one - col_weight) * left + col_weight * right


def paste_masks(
    masks: np.ndarray,
    boxes: np.ndarray,
    image_size: tuple[int, int],
    padding: int = 1,
    threshold: float | None = MASK_THRESHOLD,
) -> np.ndarray:
    """Resize each RoI-resolution mask into its box of an ``image_size`` canvas.

    Args:
        masks: ``float32 [K, M, M]`` per-detection probabilities.
        boxes: ``float32 [K, 4]`` ``(x1, y1, x2, y2)`` in the canvas's pixels.
        image_size: ``(h, w)`` of the canvas.
        padding: zero pixels added around each mask before resizing (torchvision: 1).
        threshold: pixels strictly above it are the instance; None returns probabilities.

    Returns:
        ``bool [K, h, w]`` (or ``float32 [K, h, w]`` when ``threshold`` is None), empty
        outside each clipped box.

    Raises:
        ValueError: ``masks`` is not ``[K, M, M]`` or ``boxes`` not ``[K, 4]``.
    """
    masks = np.asarray(masks, dtype=np.float32)
    boxes = np.asarray(boxes, dtype=np.float32)
    if masks.ndim != 3 or masks.shape[1] != masks.shape[2]:
        raise ValueError(f"paste_masks: masks must be [K, M, M], got {masks.shape}")
    if boxes.shape != (masks.shape[0], 4):
        raise ValueError(f"paste_masks: boxes must be [{masks.shape[0]}, 4], got {boxes.shape}")
    height, width = int(image_size[0]), int(image_size[1])
    side = masks.shape[-1]
    padded = np.pad(masks, ((0, 0), (padding, padding), (padding, padding)))
    scale = np.float32((side + 2 * padding) / side)
    centres = (boxes[:, :2] + boxes[:, 2:]) * np.float32(0.5)
    halves = (boxes[:, 2:] - boxes[:, :2]) * np.float32(0.5) * scale
    corners = np.concatenate([centres - halves, centres + halves], axis=1).astype(np.int64)
    canvas = np.zeros((masks.shape[0], height, width), np.float32)
    for slot, mask, (x1, y1, x2, y2) in zip(canvas, padded, corners.tolist(), strict=True):
        left, right = max(x1, 0), min(x2 + 1, width)
        top, bottom = max(y1, 0), min(y2 + 1, height)
        if left >= right or top >= bottom:
            continue
        resized = resize_bilinear(mask, (max(y2 - y1 + 1, 1), max(x2 - x1 + 1, 1)))
        slot[top:bottom, left:right] = resized[top - y1 : bottom - y1, left - x1 : right - x1]
    return canvas if threshold is None else canvas > threshold


def masks_to_original(
    masks: np.ndarray,
    boxes: np.ndarray,
    input_size: tuple[int, int],
    geometry: Geometry,
    threshold: float = MASK_THRESHOLD,
) -> np.ndarray:
    """RoI-resolution masks of detections in network-input pixels → ``bool [K, H, W]`` masks
    of the original image, as the torch models return them (pasted into the input, the
    original's region cropped and resized bilinearly to its size:
    :meth:`cvkit.structures.Instances.to_original`), then thresholded.

    Args:
        masks: ``float32 [K, M, M]`` probabilities.
        boxes: ``float32 [K, 4]`` xyxy network-input pixels.
        input_size: ``(h, w)`` of the network input.
        geometry: where the original image sits in the input.
        threshold: original pixels strictly above it are the instance.
    """
    height, width = geometry.orig_size
    (sx, sy), (ox, oy) = geometry.scale, geometry.offset
    pasted = paste_masks(masks, boxes, input_size, threshold=None)
    valid = pasted[:, round(oy) : round(oy + height * sy), round(ox) : round(ox + width * sx)]
    out = np.zeros((len(valid), height, width), bool)
    for slot, mask in zip(out, valid, strict=True):
        slot[:] = resize_bilinear(mask, (height, width)) > threshold
    return out
