"""Reading images: the one decoder that datasets, ``cvkit predict`` and the runtime share.

Torch-free (OpenCV and numpy) like :mod:`cvkit.geometry`, so :mod:`cvkit.data` and the
torch-free :mod:`cvkit.runtime` turn the same file into the same pixels: a model is trained,
evaluated and served on identical input.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from cvkit.errors import ImageError

ImageSource = str | Path | np.ndarray
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def read_image(source: ImageSource) -> np.ndarray:
    """An image as RGB ``uint8 [H, W, 3]``, from a path or an array, treated alike.

    Gray (``[H, W]`` or ``[H, W, 1]``) is repeated to 3 channels and an alpha channel
    (``[H, W, 4]`` RGBA) is dropped, not composited: OpenCV reads gray and RGBA files the same
    way, so a file and the array of its pixels give the same image.

    Raises:
        ImageError: a missing or undecodable file, or an array of another shape or dtype.
    """
    if isinstance(source, (str, Path)):
        image = cv2.imread(str(source), cv2.IMREAD_COLOR)
        if image is None:
            what = "not a readable image" if Path(source).exists() else "image file is missing"
            raise ImageError(f"{source}: {what}")
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if not isinstance(source, np.ndarray):
        raise ImageError(f"expected an image path or a numpy array, got {type(source).__name__}")
    expected = "uint8 RGB [H, W, 3], RGBA [H, W, 4] or gray [H, W] / [H, W, 1]"
    if source.dtype != np.uint8:
        raise ImageError(f"image arrays must be {expected}, got dtype {source.dtype}")
    if source.ndim == 2:
        source = source[:, :, None]
    if source.ndim != 3 or source.shape[2] not in (1, 3, 4) or min(source.shape[:2]) < 1:
        raise ImageError(f"image arrays must be {expected}, got shape {source.shape}")
    if source.shape[2] == 1:
        return np.repeat(source, 3, axis=2)
    return source[:, :, :3] if source.shape[2] == 4 else source
