"""Where an original image sits inside the network input, and how boxes map between the two.

This module is torch-free (numpy only) so that :mod:`cvkit.data`, :mod:`cvkit.models`,
:mod:`cvkit.engine` and the torch-free :mod:`cvkit.runtime` all use the same record and the same
arithmetic: ``input_xy = original_xy * scale + offset`` and
``original_xy = (input_xy - offset) / scale``.
"""

from __future__ import annotations

from dataclasses import dataclass

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

    def boxes_to_original(self, boxes: np.ndarray) -> np.ndarray:
        """``float [N, 4]`` xyxy input pixels → ``float32 [N, 4]`` original pixels, clipped to
        the original image."""
        sx, sy = self.scale
        ox, oy = self.offset
        height, width = self.orig_size
        offset = np.array([ox, oy, ox, oy], dtype=np.float32)
        scale = np.array([sx, sy, sx, sy], dtype=np.float32)
        out = (np.asarray(boxes, dtype=np.float32).reshape(-1, 4) - offset) / scale
        out[:, 0::2] = out[:, 0::2].clip(0, width)
        out[:, 1::2] = out[:, 1::2].clip(0, height)
        return out
