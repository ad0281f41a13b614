"""Numpy/OpenCV pre-processing that reproduces cvkit's evaluation preset exactly.

An image (RGB ``uint8 [H, W, 3]``) goes through the resize policy recorded in the model's
metadata, then normalization, then batching into ``float32 [B, 3, H, W]``:

- ``letterbox``: resize with ``cv2.INTER_LINEAR`` keeping the aspect ratio so the image fits
  the input size (the longer side fills it), then pad bottom/right with zeros; the geometry is
  ``scale = (r, r)``, ``offset = (0, 0)``.
- ``resize``: stretch to the input size; ``scale = (W / w, H / h)``.

Predictions map back with ``original_xy = (input_xy - offset) / scale``, the data loader's
contract.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from cvkit.geometry import Geometry, fit, normalize
from cvkit.runtime.errors import InputError

ImageSource = str | Path | np.ndarray


def read_image(source: ImageSource) -> np.ndarray:
    """An image as RGB ``uint8 [H, W, 3]``, from a path or an array, treated alike.

    Gray (``[H, W]`` or ``[H, W, 1]``) is repeated to 3 channels and an alpha channel
    (``[H, W, 4]`` RGBA) is dropped, not composited: OpenCV reads gray and RGBA files the same
    way, so a file and the array of its pixels give the same image.

    Raises:
        InputError: unreadable file, or an array of another shape or dtype.
    """
    if isinstance(source, (str, Path)):
        image = cv2.imread(str(source), cv2.IMREAD_COLOR)
        if image is None:
            raise InputError(f"{source}: not a readable image file")
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if not isinstance(source, np.ndarray):
        raise InputError(f"expected an image path or a numpy array, got {type(source).__name__}")
    expected = "uint8 RGB [H, W, 3], RGBA [H, W, 4] or gray [H, W] / [H, W, 1]"
    if source.dtype != np.uint8:
        raise InputError(f"image arrays must be {expected}, got dtype {source.dtype}")
    if source.ndim == 2:
        source = source[:, :, None]
    if source.ndim != 3 or source.shape[2] not in (1, 3, 4) or min(source.shape[:2]) < 1:
        raise InputError(f"image arrays must be {expected}, got shape {source.shape}")
    if source.shape[2] == 1:
        return np.repeat(source, 3, axis=2)
    return source[:, :, :3] if source.shape[2] == 4 else source


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
