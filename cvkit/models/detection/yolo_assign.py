"""The task-aligned assigner (TAL, Feng et al. 2021, TOOD) of anchor-free YOLO heads.

Every prediction sits at an anchor *point* (a feature-map cell centre in input pixels). For a
ground-truth box ``g`` of class ``c`` and a point ``p`` the alignment metric is
``t = s^α · u^β``, with ``s`` the predicted probability of ``c`` at ``p`` and ``u`` the IoU of
the box predicted at ``p`` with ``g``: a point is a good positive when it both classifies and
localizes the object well. Each ground truth takes as positives the ``topk`` points of highest
metric among the points lying inside it; a point taken by several ground truths keeps the one
it overlaps most (highest IoU). The class target of a positive is soft: its metric, rescaled
so that the best positive of each ground truth gets that ground truth's best IoU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from cvkit.ops.iou import box_iou


@dataclass(frozen=True)
class TaskAlignedTargets:
    """What :func:`task_aligned_assign` gives one image's ``N`` points.

    Attributes:
        matched (Tensor[N] int64): index of the assigned ground truth, -1 for a negative.
        scores (Tensor[N, C]): soft class targets in [0, 1]; zero rows for negatives.
        boxes (Tensor[N, 4]): the assigned ground-truth box (x1, y1, x2, y2) in input pixels;
            zeros for negatives.
    """

    matched: Tensor
    scores: Tensor
    boxes: Tensor

    @property
    def positive(self) -> Tensor:
        """Tensor[N] bool: the points with a ground truth."""
        return self.matched >= 0


def points_inside(points: Tensor, boxes: Tensor) -> Tensor:
    """Which points lie strictly inside which boxes.

    Args:
        points (Tensor[N, 2]): (x, y) in pixels.
        boxes (Tensor[M, 4]): (x1, y1, x2, y2) in pixels.

    Returns:
        Tensor[M, N] bool.
    """
    x, y = points[None, :, 0], points[None, :, 1]
    return (
        (x > boxes[:, None, 0])
        & (x < boxes[:, None, 2])
        & (y > boxes[:, None, 1])
        & (y < boxes[:, None, 3])
    )


@torch.no_grad()
def task_aligned_assign(
    scores: Tensor,
    pred_boxes: Tensor,
    points: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    topk: int = 10,
    alpha: float = 0.5,
    beta: float = 6.0,
    eps: float = 1e-9,
) -> TaskAlignedTargets:
    """Assign one image's ground truth to its anchor points (no gradient).

    Args:
        scores (Tensor[N, C]): predicted class probabilities (after the sigmoid).
        pred_boxes (Tensor[N, 4]): predicted (x1, y1, x2, y2) in input pixels.
        points (Tensor[N, 2]): anchor points (x, y) in input pixels.
        gt_boxes (Tensor[M, 4]): ground truth (x1, y1, x2, y2) in input pixels; M may be 0.
        gt_labels (Tensor[M] int64): classes in 0..C-1.
        topk: positives at most per ground truth.
        alpha, beta: exponents of the classification score and of the IoU in the metric.
        eps: keeps the rescaling of the soft targets finite.

    Returns:
        :class:`TaskAlignedTargets` of the ``N`` points.
    """
    num_points = len(scores)
    matched = torch.full((num_points,), -1, dtype=torch.int64, device=scores.device)
    if len(gt_boxes) == 0:
        return TaskAlignedTargets(matched, torch.zeros_like(scores), torch.zeros_like(pred_boxes))
    gt_boxes = gt_boxes.to(pred_boxes.dtype)
    inside = points_inside(points, gt_boxes)  # [M, N]
    ious = box_iou(gt_boxes, pred_boxes).clamp(min=0) * inside
    class_scores = scores.T[gt_labels]  # [M, N]: score of each ground truth's class
    metric = class_scores.pow(alpha) * ious.pow(beta) * inside
    # points outside a box rank below every inside point, whatever their metric
    ranking = torch.where(inside, metric, torch.full_like(metric, -1.0))
    k = min(topk, num_points)
    top = ranking.topk(k, dim=1).indices
    candidate = torch.zeros_like(inside)
    candidate.scatter_(1, top, True)
    candidate &= inside
    # a point that several ground truths chose keeps the one it overlaps most
    best_gt = torch.where(candidate, ious, torch.full_like(ious, -1.0)).argmax(0)
    positive = candidate.any(0)
    matched = torch.where(positive, best_gt, matched)
    kept = candidate & (torch.arange(len(gt_boxes), device=scores.device)[:, None] == best_gt)
    kept_metric = metric * kept
    # rescale per ground truth: its best positive gets its best positive IoU
    scale = (ious * kept).amax(1, keepdim=True) / (kept_metric.amax(1, keepdim=True) + eps)
    soft = (kept_metric * scale).amax(0)  # [N]: each point has one ground truth at most
    index = matched.clamp(min=0)
    target_scores = torch.zeros_like(scores)
    target_scores[positive, gt_labels[index[positive]]] = soft[positive]
    boxes = torch.where(positive[:, None], gt_boxes[index], torch.zeros_like(pred_boxes))
    return TaskAlignedTargets(matched, target_scores, boxes)
