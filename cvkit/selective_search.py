"""Selective-search region proposals (OpenCV ximgproc), torch-free.

R-CNN and Fast R-CNN (:mod:`cvkit.models.detection.proposals`) and the torch-free runtime
(:class:`cvkit.runtime.Detector` on an exported Fast R-CNN) both call :func:`selective_search`,
so a checkpoint and its ``.onnx`` propose the same boxes for the same pixels.
:class:`SearchSettings` is what an export records of ``model.<name>.proposals`` (the settings
the boxes depend on, without the cache folder). It needs OpenCV's contrib build
(``pip install 'cvkit[rcnn]'``), imported only when a search runs.

OpenCV ranks its regions with a random number per call, so the same image gives the same set
of boxes in a different order each time; the set is returned in a fixed (sorted) order, and
when it holds more than ``max_proposals`` boxes a random subset is kept, drawn from a generator
seeded by the image itself, so proposals are reproducible.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np

from cvkit.errors import ConfigError

if TYPE_CHECKING:
    from cvkit.config.model import ProposalConfig

INSTALL_HINT = "pip install 'cvkit[rcnn]' (opencv-contrib-python-headless)"
SEARCH_MODES = ("fast", "quality", "single")


@dataclass(frozen=True)
class SearchSettings:
    """The selective-search settings that decide the boxes (see ``ProposalConfig``).

    Attributes:
        mode: ``fast`` or ``quality`` (segmentations from ``base_k`` up by ``inc_k``, smoothing
            ``sigma``) or ``single`` (one segmentation at ``base_k``, ``sigma``).
        base_k, inc_k, sigma: the graph segmentation parameters.
        min_size: boxes narrower or lower than this many pixels are dropped.
        max_proposals: at most this many boxes are kept.

    Raises:
        ValueError: ``mode`` is not one of :data:`SEARCH_MODES`.
    """

    mode: str
    base_k: int
    inc_k: int
    sigma: float
    min_size: float
    max_proposals: int

    def __post_init__(self) -> None:
        if self.mode not in SEARCH_MODES:
            raise ValueError(
                f"selective search mode must be one of {SEARCH_MODES}, not {self.mode!r}"
            )

    @classmethod
    def of(cls, options: Any) -> SearchSettings:
        """The settings of ``options`` (any object with these attributes, e.g. a
        ``ProposalConfig``)."""
        return cls(**{field.name: getattr(options, field.name) for field in fields(cls)})


def segmentation_module() -> Any:
    """``cv2.ximgproc.segmentation``, or a :class:`ConfigError` saying how to install it."""
    import cv2

    ximgproc = getattr(cv2, "ximgproc", None)
    if ximgproc is None:
        raise ConfigError(
            f"selective search needs OpenCV's contrib build (cv2.ximgproc), which cv2 "
            f"{cv2.__version__} lacks: {INSTALL_HINT} at the version of opencv-python-headless"
        )
    return ximgproc.segmentation


def selective_search(
    image: np.ndarray, options: SearchSettings | ProposalConfig | None = None
) -> np.ndarray:
    """Selective-search boxes of one image.

    Args:
        image: ``uint8 [H, W, 3]`` RGB.
        options: strategy, segmentation parameters, ``min_size`` and ``max_proposals``
            (default: ``ProposalConfig()``'s, the schema's defaults).

    Returns:
        ``float32 [P, 4]`` ``(x1, y1, x2, y2)`` pixels within ``[0, W] x [0, H]``, unique,
        sorted by ``(x1, y1, x2, y2)``, each side at least ``min_size``; ``P <=
        max_proposals``.

    Raises:
        ValueError: ``image`` is not ``uint8 [H, W, 3]``.
        ConfigError: OpenCV has no ximgproc module (install the contrib build).
    """
    if options is None:
        from cvkit.config.model import ProposalConfig

        options = ProposalConfig()
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"selective_search expects a uint8 [H, W, 3] RGB image, got {image.dtype} "
            f"{tuple(image.shape)}"
        )
    search = segmentation_module().createSelectiveSearchSegmentation()
    # OpenCV's strategies are tuned on its BGR channel order.
    search.setBaseImage(np.ascontiguousarray(image[..., ::-1]))
    if options.mode == "fast":
        search.switchToSelectiveSearchFast(options.base_k, options.inc_k, options.sigma)
    elif options.mode == "quality":
        search.switchToSelectiveSearchQuality(options.base_k, options.inc_k, options.sigma)
    else:
        search.switchToSingleStrategy(options.base_k, options.sigma)
    rects = search.process().reshape(-1, 4).astype(np.float32)
    boxes = np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:]], axis=1)
    height, width = image.shape[:2]
    boxes = np.clip(boxes, 0, [width, height, width, height]).astype(np.float32)
    sides = boxes[:, 2:] - boxes[:, :2]
    boxes = np.unique(boxes[(sides >= options.min_size).all(axis=1)], axis=0)
    if len(boxes) > options.max_proposals:
        seed = int.from_bytes(hashlib.blake2b(image.tobytes(), digest_size=8).digest(), "little")
        keep = np.random.default_rng(seed).choice(len(boxes), options.max_proposals, replace=False)
        boxes = boxes[np.sort(keep)]
    return boxes.reshape(-1, 4)
