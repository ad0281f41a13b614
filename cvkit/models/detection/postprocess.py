"""From decoded candidates to final detections: score filter, top-k, class-aware NMS.

Every cvkit detector exposes ``candidates(images)`` returning boxes (shared ``[B, N, 4]`` or
per-class ``[B, N, C, 4]``) and scores ``[B, N, C]``; :func:`select_detections` turns those into
the per-image :class:`~cvkit.structures.Instances` of the eval-mode forward, so all detectors
share one post-processing path.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from cvkit.ops.boxes import clip_boxes
from cvkit.ops.nms import batched_nms
from cvkit.structures import Instances


def select_detections(
    boxes: Tensor,
    scores: Tensor,
    image_sizes: Sequence[tuple[int, int]],
    score_threshold: float,
    iou_threshold: float,
    max_det: int,
    topk_candidates: int,
) -> list[Instances]:
    """Filter, rank and suppress candidate boxes per image.

    Every (candidate, class) pair scoring above ``score_threshold`` competes; the best
    ``topk_candidates`` pairs go through NMS separately per class, and the ``max_det``
    highest-scoring survivors are returned.

    Args:
        boxes (Tensor[B, N, 4] or Tensor[B, N, C, 4]): (x1, y1, x2, y2) in input-image pixels,
            one box per candidate shared by all classes, or one per (candidate, class) as
            two-stage heads regress them.
        scores (Tensor[B, N, C]): per-class probabilities in [0, 1] (no background column).
        image_sizes: ``(h, w)`` of each image's valid (unpadded) region: kept boxes are clipped
            to it and it is recorded in the results.
        score_threshold: minimum score of a kept detection.
        iou_threshold: NMS overlap above which the lower-scoring box of a class is removed.
        max_det: detections kept per image.
        topk_candidates: (candidate, class) pairs kept per image before NMS.

    Returns:
        One :class:`~cvkit.structures.Instances` per image: ``boxes`` [K, 4] xyxy pixels,
        ``scores`` [K], ``labels`` [K] int64 in 0..C-1, sorted by decreasing score,
        K ≤ max_det.
    """
    num_classes = scores.shape[-1]
    per_class = boxes.dim() == 4
    detections = []
    for image_boxes, image_scores, size in zip(boxes, scores, image_sizes, strict=True):
        flat = image_scores.flatten()
        keep = torch.nonzero(flat > score_threshold).squeeze(1)
        if keep.numel() > topk_candidates:
            keep = keep[flat[keep].topk(topk_candidates).indices]
        kept_scores = flat[keep]
        labels = keep % num_classes
        kept_boxes = (
            image_boxes.reshape(-1, 4)[keep] if per_class else image_boxes[keep // num_classes]
        )
        kept_boxes = clip_boxes(kept_boxes, (int(size[0]), int(size[1])))
        survivors = batched_nms(kept_boxes, kept_scores, labels, iou_threshold)[:max_det]
        detections.append(
            Instances(
                kept_boxes[survivors],
                kept_scores[survivors],
                labels[survivors],
                (int(size[0]), int(size[1])),
            )
        )
    return detections
