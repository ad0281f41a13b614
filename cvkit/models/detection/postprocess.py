"""From decoded candidates to final detections: score filter, top-k, class-aware NMS.

Every cvkit detector exposes ``candidates(images) -> (boxes [B, N, 4], scores [B, N, C])``;
:func:`select_detections` turns those into the per-image ``{boxes, scores, labels}`` dicts of
the eval-mode forward, so all detectors share one post-processing path.
"""

from __future__ import annotations

import torch
from torch import Tensor

from cvkit.ops.nms import batched_nms


def select_detections(
    boxes: Tensor,
    scores: Tensor,
    score_threshold: float,
    iou_threshold: float,
    max_det: int,
    topk_candidates: int,
) -> list[dict[str, Tensor]]:
    """Filter, rank and suppress candidate boxes per image.

    Every (candidate, class) pair scoring above ``score_threshold`` competes; the best
    ``topk_candidates`` pairs go through NMS separately per class, and the ``max_det``
    highest-scoring survivors are returned.

    Args:
        boxes (Tensor[B, N, 4]): (x1, y1, x2, y2) in input-image pixels.
        scores (Tensor[B, N, C]): per-class probabilities in [0, 1] (no background column).
        score_threshold: minimum score of a kept detection.
        iou_threshold: NMS overlap above which the lower-scoring box of a class is removed.
        max_det: detections kept per image.
        topk_candidates: (candidate, class) pairs kept per image before NMS.

    Returns:
        One dict per image: ``boxes`` Tensor[K, 4] xyxy pixels, ``scores`` Tensor[K],
        ``labels`` Tensor[K] int64 in 0..C-1, sorted by decreasing score, K ≤ max_det.
    """
    num_classes = scores.shape[-1]
    detections = []
    for image_boxes, image_scores in zip(boxes, scores, strict=True):
        flat = image_scores.flatten()
        keep = torch.nonzero(flat > score_threshold).squeeze(1)
        if keep.numel() > topk_candidates:
            keep = keep[flat[keep].topk(topk_candidates).indices]
        kept_scores = flat[keep]
        labels = keep % num_classes
        kept_boxes = image_boxes[keep // num_classes]
        survivors = batched_nms(kept_boxes, kept_scores, labels, iou_threshold)[:max_det]
        detections.append(
            {
                "boxes": kept_boxes[survivors],
                "scores": kept_scores[survivors],
                "labels": labels[survivors],
            }
        )
    return detections
