"""Numpy/OpenCV pre-processing that reproduces cvkit's evaluation preset exactly.

An image (RGB ``uint8 [H, W, 3]``) goes through the resize policy recorded in the model's
metadata, then normalization, then batching into ``float32 [B, 3, H, W]``:

- ``letterbox``: resize with ``cv2.INTER_LINEAR`` keeping the aspect ratio so the image fits
  the input size (the longer side fills it), then pad bottom/right with zeros; the geometry is
  ``scale = (r, r)``, ``offset = (0, 0)``.
- ``resize``: stretch to the input size; ``scale = (W / w, H / h)``.

Predictions map back with ``original_xy = (input_xy - offset) / scale``, the data loader's
contract. Files and arrays are read by :func:`cvkit.images.read_image`, as datasets read them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cvkit.geometry import Geometry, fit, normalize


def letterbox(image: np.ndarray, input_size: tuple[int, int]) -> tuple[np.ndarray, Geometry]:
    """Fit ``image [h, w, 3]`` into ``input_size (H, W)`` keeping its aspect ratio.

    Returns:
        ``uint8 [H, W, 3]`` with the resized image at the top-left and zeros elsewhere, and its
        :class:`Geometry` (``scale = (r, r)``, ``offset = (0, 0)``); see :func:`cvkit.geometry.fit`.
    """
    return fit(image, input_size, "letterbox")


def stretch(image: np.ndarray, input_size: tuple[int, int]) -> tuple[np.ndarray, Geometry]:
    """Resize ``image [h, w, 3]`` to ``input_size (H, W)`` ignoring its aspect ratio."""
    return fit(image, input_size, "resize")


def preprocess(
    images: Sequence[np.ndarray],
    input_size: tuple[int, int],
    resize: str,
    mean: Sequence[float],
    std: Sequence[float],
    dtype: type = np.float32,
) -> tuple[np.ndarray, list[Geometry]]:
    """RGB ``uint8`` images → the network batch ``[B, 3, H, W]`` and each image's geometry."""
    placed = [fit(image, input_size, resize) for image in images]
    stacked = np.stack([canvas for canvas, _ in placed])
    return normalize(stacked, mean, std, dtype), [geometry for _, geometry in placed]
