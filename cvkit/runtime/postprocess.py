"""Numpy post-processing: graph outputs → per-image results in original image pixels.

Detectors exported with NMS in the graph return padded ``boxes [B, K, 4]``, ``scores [B, K]``,
``labels [B, K]``, ``num_dets [B]``; only the first ``num_dets[b]`` rows of image ``b`` are
real. Detectors exported with ``--no-nms`` return candidates ``boxes [B, N, 4]`` and
``scores [B, N, C]``; :func:`select_detections` applies the score threshold, class-aware NMS
(:func:`cvkit.runtime.ops_np.batched_nms`) and ``max_det`` as the torch model does.
"""

from __future__ import annotations

import cv2
import numpy as np

from cvkit.runtime.ops_np import batched_nms
from cvkit.runtime.preprocess import Geometry
from cvkit.runtime.results import Classification, Segmentation


def select_detections(
    boxes: np.ndarray,
    scores: np.ndarray,
    score_threshold: float,
    iou_threshold: float,
    max_det: int,
    topk_candidates: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidates of one image → its detections, as cvkit's torch detectors select them.

    Args:
        boxes: ``float32 [N, 4]`` (x1, y1, x2, y2) in input pixels shared by all classes, or
            per-class ``[N, C, 4]``.
        scores: ``float32 [N, C]`` per-class scores in [0, 1].
        score_threshold: keep (candidate, class) pairs scoring strictly above this.
        iou_threshold: class-aware NMS threshold.
        max_det: keep at most this many, highest scores first.
        topk_candidates: before NMS, keep only the best this many (candidate, class) pairs
            (None: all).

    Returns:
        ``boxes [K, 4]``, ``scores [K]``, ``labels int64 [K]`` sorted by decreasing score.
    """
    num_classes = scores.shape[1]
    flat = scores.reshape(-1)
    keep = np.flatnonzero(flat > score_threshold)
    if topk_candidates is not None and keep.size > topk_candidates:
        best = np.argsort(-flat[keep], kind="stable")[:topk_candidates]
        keep = keep[best]
    kept_scores = flat[keep]
    labels = (keep % num_classes).astype(np.int64)
    kept_boxes = boxes.reshape(-1, 4)[keep] if boxes.ndim == 3 else boxes[keep // num_classes]
    survivors = batched_nms(kept_boxes, kept_scores, labels, iou_threshold)[:max_det]
    return kept_boxes[survivors], kept_scores[survivors], labels[survivors]


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax along ``axis``."""
    shifted = np.exp(logits - logits.max(axis=axis, keepdims=True))
    return shifted / shifted.sum(axis=axis, keepdims=True)


def classification(logits: np.ndarray, classes: tuple[str, ...]) -> Classification:
    """``logits [C]`` of one image → its :class:`Classification`."""
    probabilities = softmax(logits.astype(np.float32))
    return Classification(probabilities, list(classes))


def segmentation(logits: np.ndarray, geometry: Geometry, classes: tuple[str, ...]) -> Segmentation:
    """``logits [C, H, W]`` of one image → class mask at its original size.

    The valid (unpadded) region is resized back with bilinear interpolation of the logits,
    then the arg-max class is taken per pixel.
    """
    height, width = geometry.orig_size
    sx, sy = geometry.scale
    ox, oy = geometry.offset
    valid_h = min(logits.shape[1], round(oy + height * sy))
    valid_w = min(logits.shape[2], round(ox + width * sx))
    region = logits[:, round(oy) : valid_h, round(ox) : valid_w].astype(np.float32)
    channels_last = np.ascontiguousarray(region.transpose(1, 2, 0))
    resized = cv2.resize(channels_last, (width, height), interpolation=cv2.INTER_LINEAR)
    if resized.ndim == 2:
        resized = resized[:, :, None]
    return Segmentation(resized.argmax(axis=2).astype(np.int64), list(classes))
