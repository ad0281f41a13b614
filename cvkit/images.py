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
    way, so a file and the array of its pixels give the same image. A file is turned upright by
    its EXIF orientation (JPEG, PNG, WebP, TIFF), as photo viewers show it; 16-bit files keep
    their top 8 bits.

    Raises:
        ImageError: a missing, empty, truncated or undecodable file, or an array of another
            shape or dtype.
    """
    if isinstance(source, (str, Path)):
        return decode_image_bytes(_read_file(Path(source)), str(source))
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


def decode_image_bytes(data: bytes, name: str) -> np.ndarray:
    """An encoded image file's bytes as RGB ``uint8 [H, W, 3]``, read as :func:`read_image`
    reads the file (EXIF orientation applied, gray repeated, alpha dropped).

    ``cv2.imdecode``, not ``cv2.imread``: OpenCV 5.1's ``imread`` turns a JPEG cut short into a
    full-size image with garbage below the cut (printing only a warning) and fails on TIFFs
    whose orientation swaps width and height; ``imdecode`` refuses the first and reads the
    second.

    Raises:
        ImageError: empty or undecodable bytes (a truncated file included); the message
            names ``name``.
    """
    if not data:
        raise ImageError(f"{name}: empty file")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ImageError(f"{name}: not a readable image ({len(data)} bytes)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ImageError(f"{path}: image file is missing") from None
    except OSError as exc:
        raise ImageError(f"{path}: cannot read the file ({exc.strerror})") from None
