"""Box regression of anchor-free YOLO heads: distances to the sides as distributions.

A head predicts, at each anchor point, the distances ``(left, top, right, bottom)`` from the
point to the box sides in units of the level's stride, each as a discrete distribution over
the bins ``0, 1, ..., reg_max`` (Li et al. 2020, Generalized Focal Loss); the distance is the
distribution's expectation. Two losses train it: the distribution focal loss
(:func:`distribution_focal_loss`), which puts the mass on the two bins around the target
distance, and ``1 − CIoU`` of the decoded box (:func:`~cvkit.ops.iou.complete_box_iou_loss`),
both weighted by the assigner's soft class targets (:func:`box_losses`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from cvkit.ops.iou import complete_box_iou_loss


def boxes_to_distances(points: Tensor, boxes: Tensor, strides: Tensor, reg_max: int) -> Tensor:
    """Distances from points to the sides of boxes, in strides, clamped to the bins.

    Args:
        points (Tensor[N, 2]): (x, y) in pixels.
        boxes (Tensor[N, 4]): (x1, y1, x2, y2) in pixels.
        strides (Tensor[N]): stride of each point's level in pixels.
        reg_max: the last bin; distances are clamped to ``[0, reg_max − 0.01]`` so that the
            upper bin of every target exists.

    Returns:
        Tensor[N, 4]: (left, top, right, bottom) in strides.
    """
    left_top = points - boxes[:, :2]
    right_bottom = boxes[:, 2:] - points
    distances = torch.cat([left_top, right_bottom], 1) / strides[:, None]
    return distances.clamp(0, reg_max - 0.01)


def distances_to_boxes(points: Tensor, distances: Tensor, strides: Tensor) -> Tensor:
    """Boxes from point-to-side distances (inverse of :func:`boxes_to_distances`).

    Args:
        points (Tensor[..., N, 2]): (x, y) in pixels (broadcast over leading dimensions).
        distances (Tensor[..., N, 4]): (left, top, right, bottom) in strides.
        strides (Tensor[N]): stride of each point's level in pixels.

    Returns:
        Tensor[..., N, 4]: (x1, y1, x2, y2) in pixels.
    """
    scaled = distances * strides[:, None]
    return torch.cat([points - scaled[..., :2], points + scaled[..., 2:]], -1)


def expected_distances(logits: Tensor) -> Tensor:
    """The expectation of each side's distribution.

    Args:
        logits (Tensor[..., 4, reg_max + 1]): bin logits of the four sides.

    Returns:
        Tensor[..., 4]: distances in strides, in [0, reg_max].
    """
    bins = torch.arange(logits.shape[-1], device=logits.device, dtype=logits.dtype)
    return (logits.softmax(-1) * bins).sum(-1)


def distribution_focal_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """DFL: cross-entropy to the two bins around each target, weighted by closeness.

    For a target ``y`` between bins ``i = ⌊y⌋`` and ``i + 1`` the loss of a side is
    ``−((i + 1 − y) log p_i + (y − i) log p_{i+1})`` with ``p`` the softmax of its logits; it is
    smallest when the distribution's expectation is ``y``.

    Args:
        logits (Tensor[N, 4, reg_max + 1]): bin logits of the four sides.
        targets (Tensor[N, 4]): distances in strides, in ``[0, reg_max)``.

    Returns:
        Tensor[N]: the loss of each box, the mean over its four sides.
    """
    lower = targets.floor().long()
    upper_weight = targets - lower
    log_probs = logits.log_softmax(-1)
    lower_term = log_probs.gather(-1, lower[..., None])[..., 0]
    upper_term = log_probs.gather(-1, (lower + 1)[..., None])[..., 0]
    return -((1 - upper_weight) * lower_term + upper_weight * upper_term).mean(-1)


def box_losses(
    logits: Tensor,
    pred_boxes: Tensor,
    target_boxes: Tensor,
    points: Tensor,
    strides: Tensor,
    weights: Tensor,
    normalizer: Tensor | float,
) -> dict[str, Tensor]:
    """CIoU and DFL of the positive points, weighted and normalized.

    Args:
        logits (Tensor[P, 4, reg_max + 1]): bin logits of the ``P`` positive points.
        pred_boxes (Tensor[P, 4]): their decoded boxes (x1, y1, x2, y2) in pixels.
        target_boxes (Tensor[P, 4]): their assigned ground truth, same format.
        points (Tensor[P, 2]): their anchor points in pixels.
        strides (Tensor[P]): their levels' strides.
        weights (Tensor[P]): per-point weight (the sum of its soft class targets).
        normalizer: divides both sums (the sum of all soft class targets, at least 1).

    Returns:
        ``{"iou": Tensor[], "dfl": Tensor[]}``.
    """
    ciou = complete_box_iou_loss(pred_boxes, target_boxes)
    reg_max = logits.shape[-1] - 1
    dfl = distribution_focal_loss(
        logits, boxes_to_distances(points, target_boxes, strides, reg_max)
    )
    return {
        "iou": (ciou * weights).sum() / normalizer,
        "dfl": (dfl * weights).sum() / normalizer,
    }


def class_loss(logits: Tensor, target_scores: Tensor, normalizer: Tensor | float) -> Tensor:
    """Binary cross-entropy of every (point, class) against the soft targets, summed and
    divided by ``normalizer``. ``logits`` and ``target_scores`` are ``Tensor[..., C]``."""
    bce = F.binary_cross_entropy_with_logits(logits, target_scores, reduction="sum")
    return bce / normalizer
