"""Where an original image sits inside the network input, and how boxes map between the two.

This module is torch-free (numpy and OpenCV) so that :mod:`cvkit.data`, :mod:`cvkit.models`,
:mod:`cvkit.engine` and the torch-free :mod:`cvkit.runtime` all use the same record and the same
arithmetic: ``input_xy = original_xy * scale + offset`` and
``original_xy = (input_xy - offset) / scale``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Geometry:
    """How one original image was placed into the network input.

    Attributes:
        orig_size: ``(h, w)`` of the original image in pixels.
        scale: ``(sx, sy)`` from original to input pixels.
        offset: ``(ox, oy)`` input pixels added after scaling (padding before the image).
    """

    orig_size: tuple[int, int]
    scale: tuple[float, float]
    offset: tuple[float, float] = (0.0, 0.0)

    def _box_affine(self) -> tuple[np.ndarray, np.ndarray]:
        """``float32 [4]`` scale and offset of xyxy boxes: ``input = original * scale + offset``."""
        sx, sy = self.scale
        ox, oy = self.offset
        return (
            np.array([sx, sy, sx, sy], dtype=np.float32),
            np.array([ox, oy, ox, oy], dtype=np.float32),
        )

    def boxes_to_input(self, boxes: np.ndarray) -> np.ndarray:
        """``float [N, 4]`` xyxy original pixels → ``float32 [N, 4]`` input pixels (not
        clipped)."""
        scale, offset = self._box_affine()
        return np.asarray(boxes, dtype=np.float32).reshape(-1, 4) * scale + offset

    def boxes_to_original(self, boxes: np.ndarray) -> np.ndarray:
        """``float [N, 4]`` xyxy input pixels → ``float32 [N, 4]`` original pixels, clipped to
        the original image."""
        height, width = self.orig_size
        scale, offset = self._box_affine()
        out = (np.asarray(boxes, dtype=np.float32).reshape(-1, 4) - offset) / scale
        out[:, 0::2] = out[:, 0::2].clip(0, width)
        out[:, 1::2] = out[:, 1::2].clip(0, height)
        return out


def fit(
    image: np.ndarray,
    input_size: tuple[int, int],
    policy: str,
    fill: int = 0,
    interpolation: int = cv2.INTER_LINEAR,
) -> tuple[np.ndarray, Geometry]:
    """Place ``image [h, w, ...]`` into ``input_size (H, W)`` as the eval preset does.

    - ``letterbox``: resize keeping the aspect ratio (``r = min(H / h, W / w)``, the longer
      side fills the input), pad bottom/right with ``fill``; ``scale = (r, r)``.
    - ``resize``: stretch to ``(H, W)``; ``scale = (W / w, H / h)``.

    The offset is always ``(0, 0)``. Training, evaluation and the runtime all call this.

    Returns:
        ``[H, W, ...]`` array of ``image``'s dtype and its :class:`Geometry`.
    """
    height, width = image.shape[:2]
    target_h, target_w = input_size
    if policy == "resize":
        resized = cv2.resize(image, (target_w, target_h), interpolation=interpolation)
        return resized, Geometry((height, width), (target_w / width, target_h / height))
    ratio = min(target_h / height, target_w / width)
    geometry = Geometry((height, width), (ratio, ratio))
    new_w = min(target_w, max(1, round(width * ratio)))
    new_h = min(target_h, max(1, round(height * ratio)))
    resized = image
    if (new_h, new_w) != (height, width):
        resized = cv2.resize(image, (new_w, new_h), interpolation=interpolation)
    if (new_h, new_w) == (target_h, target_w):
        return resized, geometry
    canvas = np.full((target_h, target_w, *image.shape[2:]), fill, dtype=image.dtype)
    canvas[:new_h, :new_w] = resized.reshape(new_h, new_w, *image.shape[2:])
    return canvas, geometry


def normalization(mean: Sequence[float], std: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """``float32 [C]`` ``(255 * mean, 1 / (255 * std))``: a pixel normalizes as
    ``(pixel - 255 * mean) * (1 / (255 * std))``, i.e. ``(pixel / 255 - mean) / std``."""
    mean_array = np.asarray(mean, dtype=np.float32) * 255.0
    inv_std = 1.0 / (np.asarray(std, dtype=np.float32) * 255.0)
    return mean_array, inv_std


def normalize(
    images: np.ndarray,
    mean: Sequence[float],
    std: Sequence[float],
    dtype: type = np.float32,
) -> np.ndarray:
    """``uint8 [B, H, W, 3]`` → ``[B, 3, H, W]`` as ``(pixel / 255 - mean) / std``."""
    mean_array, inv_std = normalization(mean, std)
    batch = (images.astype(np.float32) - mean_array) * inv_std
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2), dtype=dtype)


def denormalize(batch: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """``[B, 3, H, W]`` normalized as :func:`normalize` does (float32 or float16) → ``uint8
    [B, H, W, 3]``: the inverse ``value / (1 / (255 * std)) + 255 * mean``, rounded, so the
    pixels come back exactly."""
    mean_array, inv_std = normalization(mean, std)
    pixels = np.asarray(batch, dtype=np.float32).transpose(0, 2, 3, 1) / inv_std + mean_array
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
