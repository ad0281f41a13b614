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

from cvkit.geometry import Geometry, denormalize, fit, normalize
from cvkit.runtime.errors import InputError
from cvkit.selective_search import SearchSettings, selective_search


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


def padded_proposals(
    proposals: Sequence[np.ndarray],
    geometries: Sequence[Geometry],
    batch_size: int,
    min_rows: int = 1,
) -> np.ndarray:
    """Per-image proposals in original pixels → the padded ``proposals`` input of a graph that
    takes them (Fast R-CNN).

    Args:
        proposals: one ``[P_i, 4]`` array per image, xyxy original-image pixels (e.g. from
            selective search, computed by the caller).
        geometries: the images' :class:`Geometry` from :func:`preprocess`.
        batch_size: rows of the batch (images past ``len(proposals)`` get padding only).
        min_rows: the least ``P`` the graph needs (``topk_candidates // C + 1``).

    Returns:
        ``float32 [batch_size, P, 4]`` xyxy input pixels (:meth:`Geometry.boxes_to_input`),
        ``P = max(P_i, min_rows, 1)``; each image's boxes first, then zero rows, which the
        graph reads as padding (as it does any box of zero width or height).

    Raises:
        InputError: not one array per image, or an array that is not ``[P, 4]``.
    """
    if len(proposals) != len(geometries):
        raise InputError(f"{len(proposals)} proposal arrays for {len(geometries)} images")
    arrays = [np.asarray(boxes, dtype=np.float32) for boxes in proposals]
    for index, boxes in enumerate(arrays):
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise InputError(
                f"proposals of image {index}: expected [P, 4] xyxy pixels, got {list(boxes.shape)}"
            )
    mapped = [
        geometry.boxes_to_input(boxes) for boxes, geometry in zip(arrays, geometries, strict=True)
    ]
    return pad_proposal_rows(mapped, batch_size, min_rows)


def pad_proposal_rows(
    proposals: Sequence[np.ndarray], batch_size: int, min_rows: int = 1
) -> np.ndarray:
    """Per-image ``float32 [P_i, 4]`` xyxy input-pixel boxes → ``float32 [batch_size, P, 4]``,
    ``P = max(P_i, min_rows, 1)``: each image's boxes first, then zero rows (padding to the
    graph, as is any box of zero width or height); images past ``len(proposals)`` get padding
    only."""
    rows = max(min_rows, 1, *(len(boxes) for boxes in proposals))
    padded = np.zeros((batch_size, rows, 4), dtype=np.float32)
    for slot, boxes in zip(padded, proposals, strict=False):
        slot[: len(boxes)] = boxes
    return padded


def search_proposals(
    batch: np.ndarray,
    count: int,
    mean: Sequence[float],
    std: Sequence[float],
    options: SearchSettings,
) -> list[np.ndarray]:
    """Selective-search proposals of the first ``count`` images of a network batch, on the
    pixels the checkpoint's Fast R-CNN searches at predict time.

    The torch model un-normalizes its input batch back to ``uint8`` pixels and searches each
    image's valid region, which for a batch of whole network inputs (``cvkit predict`` and
    validation on a ``.pt``) is the whole input, letterbox padding included; this does the
    same with the same arithmetic (:func:`cvkit.geometry.denormalize`), so the proposals are
    equal.

    Args:
        batch: ``[B, 3, H, W]`` normalized as :func:`preprocess` returns it (float32 or float16).
        count: the real images at the front of ``batch`` (the rest pad a static batch).
        mean, std: the metadata's normalization.
        options: the metadata's selective-search settings.

    Returns:
        ``count`` arrays ``float32 [P_i, 4]`` xyxy input pixels.

    Raises:
        ConfigError: OpenCV lacks the contrib build (``pip install 'cvkit[rcnn]'``).
    """
    pixels = denormalize(batch[:count], mean, std)
    return [selective_search(image, options) for image in pixels]
