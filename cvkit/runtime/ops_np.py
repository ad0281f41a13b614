"""Box ops in plain numpy for the torch-free runtime: IoU, NMS, class-aware NMS, box decoding.

They return the same values as their ``cvkit.ops`` counterparts: ``box_iou`` and the NMS
functions bit for bit (same float32 operations in the same order, same threshold rule), and
``decode_boxes`` up to the last bit of ``exp`` (numpy's and torch's ``exp`` may differ by one
unit in the last place). Boxes are ``float32 [N, 4]`` ``(x1, y1, x2, y2)`` arrays.

NMS follows the same plan as the torch version, written for numpy: boxes sorted along x are
compared only with the band of boxes that start before they end (read through a sliding-window
view), the pairs above the threshold become "higher score suppresses lower score" edges, and
one pass over those edges in score order yields the greedy result.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

# Elements of one [rows, band] block: 1 MiB float32 buffers (numpy runs on one thread, so
# unlike cvkit.ops there is no thread-barrier cost to keep blocks below).
_BLOCK_ELEMENTS = 1 << 18
_BAND_MARGIN = 1e-5


def _as_boxes(boxes: np.ndarray, name: str = "boxes") -> np.ndarray:
    array = np.asarray(boxes)
    if array.ndim != 2 or array.shape[1] != 4:
        raise ValueError(f"{name} must have shape [N, 4], got {array.shape}")
    if not np.issubdtype(array.dtype, np.floating):
        array = array.astype(np.float32)
    return array


def _areas(boxes: np.ndarray) -> np.ndarray:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def _iou(first: tuple[np.ndarray, ...], second: tuple[np.ndarray, ...]) -> np.ndarray:
    """IoU of broadcast ``(x1, y1, x2, y2, area)`` arrays, in torchvision's operation order."""
    x1a, y1a, x2a, y2a, area_a = first
    x1b, y1b, x2b, y2b, area_b = second
    inter = np.minimum(x2a, x2b)
    inter -= np.maximum(x1a, x1b)
    np.maximum(inter, 0, out=inter)
    height = np.minimum(y2a, y2b)
    height -= np.maximum(y1a, y1b)
    np.maximum(height, 0, out=height)
    inter *= height
    union = area_a + area_b
    union -= inter
    return np.divide(inter, union, out=union)


def box_iou(boxes1: np.ndarray, boxes2: np.ndarray) -> np.ndarray:
    """Pairwise IoU: ``[N, 4]`` and ``[M, 4]`` → ``[N, M]`` (0 / 0 = NaN for two empty boxes)."""
    boxes1, boxes2 = _as_boxes(boxes1, "boxes1"), _as_boxes(boxes2, "boxes2")
    with np.errstate(invalid="ignore", divide="ignore"):
        return _iou(
            (*(c[:, None] for c in boxes1.T), _areas(boxes1)[:, None]),
            (*boxes2.T, _areas(boxes2)),
        )


def _threshold(iou_threshold: float, dtype: np.dtype) -> float:
    """``t`` of ``dtype`` with ``x > t`` ⇔ ``x > iou_threshold`` for all ``x`` of ``dtype``."""
    if dtype != np.float32:
        return iou_threshold
    rounded = np.float32(iou_threshold)
    if float(rounded) > iou_threshold:
        rounded = np.nextafter(rounded, np.float32(-np.inf))
    return rounded


def _overlap_edges(
    ranked: np.ndarray, groups: np.ndarray | None, threshold
) -> tuple[np.ndarray, np.ndarray]:
    """Edges ``(i, j)``, ``i < j``, of rows of score-ordered ``ranked`` with IoU > threshold."""
    n = ranked.shape[0]
    # Band bound as in cvkit.ops.nms: IoU > t needs the x-overlap to exceed t * width.
    x1, x2 = ranked[:, 0].astype(np.float64), ranked[:, 2].astype(np.float64)
    key = x1
    query = x2 - (float(threshold) * (1 - _BAND_MARGIN)) * (x2 - x1)
    if groups is not None and n:
        low = min(x1.min(), x2.min())
        offsets = groups * (2 * (max(x1.max(), x2.max()) - low) + 1)
        key = offsets + (x1 - low)
        query = offsets + (query - low)
    if n:
        query += 8 * np.finfo(np.float64).eps * np.abs(query).max()
    sweep = np.argsort(key, kind="stable")
    band_end = np.searchsorted(key[sweep], query[sweep], side="right")
    bands = np.maximum(band_end - np.arange(1, n + 1), 0)
    widest = int(bands.max(initial=0))
    sources, targets = [], []
    if widest:
        padded = np.concatenate([ranked[sweep], np.zeros((widest, 4), ranked.dtype)])
        columns = (*padded.T, _areas(padded))
        labels = None
        if groups is not None:
            labels = np.concatenate([groups[sweep], np.full(widest, groups.min() - 1)])
        rows = max(16, _BLOCK_ELEMENTS // max(1, 2 * int(bands.mean())))
        for start in range(0, n, rows):
            stop = min(start + rows, n)
            band = int(bands[start:stop].max())
            if band == 0:
                continue
            window = slice(start + 1, stop + 1)
            hit = (
                _iou(
                    tuple(c[start:stop, None] for c in columns),
                    tuple(sliding_window_view(c, band)[window] for c in columns),
                )
                > threshold
            )
            if labels is not None:
                hit &= labels[start:stop, None] == sliding_window_view(labels, band)[window]
            row, offset = np.nonzero(hit)
            row += start
            sources.append(sweep[row])
            targets.append(sweep[row + offset + 1])
    if not sources:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    first, second = np.concatenate(sources), np.concatenate(targets)
    return np.minimum(first, second), np.maximum(first, second)


def _greedy(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, groups) -> np.ndarray:
    boxes = _as_boxes(boxes)
    scores = np.asarray(scores)
    if scores.shape != (boxes.shape[0],):
        raise ValueError(f"scores must have shape [{boxes.shape[0]}], got {scores.shape}")
    if not 0.0 <= iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in [0, 1], got {iou_threshold}")
    # Decreasing score, ties in input order (a stable sort of the negated scores).
    order = np.argsort(-scores, kind="stable")
    ranked = boxes[order]
    # Non-finite boxes have IoU 0 or NaN with everything: always kept, never suppress.
    finite = np.flatnonzero(np.isfinite(ranked).all(axis=1))
    ranked_groups = None if groups is None else np.asarray(groups)[order][finite]
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        source, target = _overlap_edges(
            ranked[finite], ranked_groups, _threshold(iou_threshold, boxes.dtype)
        )
    source, target = finite[source], finite[target]
    keep = np.ones(boxes.shape[0], dtype=bool)
    by_source = np.argsort(source, kind="stable")
    source, target = source[by_source], target[by_source]
    heads, starts = np.unique(source, return_index=True)
    stops = np.append(starts[1:], source.size)[: starts.size]
    for head, lo, hi in zip(heads.tolist(), starts.tolist(), stops.tolist(), strict=True):
        if keep[head]:
            keep[target[lo:hi]] = False
    return order[keep]


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy NMS: ``boxes [N, 4]``, ``scores [N]`` → kept indices ``int64 [K]``.

    Same indices in the same order (decreasing score, ties in input order) as
    ``cvkit.ops.nms`` and ``torchvision.ops.nms``.
    """
    return _greedy(boxes, scores, iou_threshold, None)


def batched_nms(
    boxes: np.ndarray, scores: np.ndarray, idxs: np.ndarray, iou_threshold: float
) -> np.ndarray:
    """Class-aware NMS: boxes with different ``idxs [N]`` never suppress each other.

    Returns kept indices ``int64 [K]`` by decreasing score, equal scores in input order: the
    boxes and order of ``cvkit.ops.batched_nms``, except that above 1000 boxes that one orders
    equal scores as torchvision's unstable sort does.
    """
    idxs = np.asarray(idxs)
    if idxs.shape != (np.asarray(boxes).shape[0],):
        raise ValueError(f"idxs must have shape [N] matching boxes, got {idxs.shape}")
    return _greedy(boxes, scores, iou_threshold, idxs.astype(np.int64))


def multiclass_nms(
    boxes: np.ndarray,
    scores: np.ndarray,
    iou_threshold: float = 0.5,
    score_threshold: float = 0.05,
    max_detections: int = 100,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's detections from shared boxes and per-class scores (no padding).

    The numpy twin of one image of ``cvkit.ops.nms.batched_nms_padded``: every (box, class)
    pair scoring above ``score_threshold`` enters class-aware NMS, and the ``max_detections``
    best survivors are returned.

    Args:
        boxes: ``[N, 4]`` ``(x1, y1, x2, y2)``.
        scores: ``[N, C]`` class scores.

    Returns:
        ``(boxes [K, 4], scores [K], labels [K] int64)`` by decreasing score.
    """
    boxes = _as_boxes(boxes)
    scores = np.asarray(scores)
    if scores.ndim != 2 or scores.shape[0] != boxes.shape[0]:
        raise ValueError(
            f"scores must have shape [N, C] with N = {boxes.shape[0]}, got {scores.shape}"
        )
    # Class-major order, as torch.nonzero on the [C, N] table gives it.
    class_major = scores.T
    labels, box_idx = np.nonzero(class_major > score_threshold)
    candidate_scores = scores[box_idx, labels]
    keep = batched_nms(boxes[box_idx], candidate_scores, labels, iou_threshold)[:max_detections]
    return boxes[box_idx[keep]], candidate_scores[keep], labels[keep].astype(np.int64)


def decode_boxes(
    deltas: np.ndarray,
    anchors: np.ndarray,
    means: Sequence[float] = (0.0, 0.0, 0.0, 0.0),
    stds: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
    max_log_scale: float = math.log(1000.0 / 16),
) -> np.ndarray:
    """Boxes from ``(dx, dy, dw, dh)`` regression outputs, as ``cvkit.ops.decode_boxes``.

    Args:
        deltas: ``[..., 4]``, e.g. ``[B, A, 4]``.
        anchors: ``[..., 4]`` ``(x1, y1, x2, y2)``, broadcastable to ``deltas``.
        means, stds: the normalization used when encoding.
        max_log_scale: clamp of the log-size terms before ``exp``.

    Returns:
        ``[..., 4]`` ``(x1, y1, x2, y2)``, the dtype of ``deltas``.
    """
    deltas = np.asarray(deltas)
    anchors = np.asarray(anchors, dtype=deltas.dtype)
    if deltas.shape[-1] != 4 or anchors.shape[-1] != 4:
        raise ValueError(
            f"deltas and anchors must end in 4, got {deltas.shape} and {anchors.shape}"
        )
    codes = deltas * np.asarray(stds, deltas.dtype) + np.asarray(means, deltas.dtype)
    widths = anchors[..., 2] - anchors[..., 0]
    heights = anchors[..., 3] - anchors[..., 1]
    cx = codes[..., 0] * widths + (anchors[..., 0] + deltas.dtype.type(0.5) * widths)
    cy = codes[..., 1] * heights + (anchors[..., 1] + deltas.dtype.type(0.5) * heights)
    limit = deltas.dtype.type(max_log_scale)
    half_w = deltas.dtype.type(0.5) * np.exp(np.minimum(codes[..., 2], limit)) * widths
    half_h = deltas.dtype.type(0.5) * np.exp(np.minimum(codes[..., 3], limit)) * heights
    return np.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=-1)
