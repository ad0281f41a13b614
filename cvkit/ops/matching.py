"""Anchor-to-ground-truth assignment and sampling of training anchors.

Every function takes an IoU matrix ``Tensor[A, G]`` (anchors × ground-truth boxes, e.g.
``box_iou(anchors, gt_boxes)``) and returns, per anchor, the index of its ground-truth box or a
negative code. They are per image, except :func:`greedy_assign_batched`, which takes a padded
batch ``Tensor[B, A, G]`` and equals :func:`greedy_assign` image by image.
"""

from __future__ import annotations

import torch
from torch import Tensor

from cvkit.ops.boxes import BoxError

BACKGROUND = -1
"""Code of an anchor matched to no ground truth (a negative)."""
BETWEEN_THRESHOLDS = -2
"""Code of an anchor whose best IoU lies between the low and high thresholds (ignored)."""


def _check_iou(iou: Tensor) -> None:
    if iou.ndim != 2:
        raise BoxError(f"iou must be an [anchors, ground truths] matrix, got {tuple(iou.shape)}")


def greedy_assign(iou: Tensor, iou_threshold: float = 0.5) -> Tensor:
    """Greedy assignment: every ground truth first takes its best anchor, then the rest match.

    First, repeatedly the largest remaining entry of ``iou`` pairs its anchor and ground truth,
    and both leave the matrix, so each ground truth gets a distinct anchor (ground truths that
    overlap no free anchor at all get none). Then every other anchor takes the ground truth it
    overlaps most if that IoU is at least ``iou_threshold``. Ties go to the lower index.

    Args:
        iou (Tensor[A, G]): IoU of every anchor with every ground-truth box.
        iou_threshold: minimum IoU for the second step.

    Returns:
        Tensor[A] int64: ground-truth index per anchor, or :data:`BACKGROUND` (-1).
    """
    _check_iou(iou)
    num_anchors, num_gt = iou.shape
    matched = torch.full((num_anchors,), BACKGROUND, dtype=torch.int64, device=iou.device)
    if num_gt == 0 or num_anchors == 0:
        return matched
    best_iou, best_gt = iou.max(dim=1)
    above = best_iou >= iou_threshold
    matched[above] = best_gt[above]
    remaining = iou.clone()
    for _ in range(min(num_anchors, num_gt)):
        flat = int(torch.argmax(remaining))
        anchor, gt = divmod(flat, num_gt)
        if not remaining[anchor, gt] > 0:
            break
        matched[anchor] = gt
        remaining[anchor, :] = -1
        remaining[:, gt] = -1
    return matched


def greedy_assign_batched(iou: Tensor, iou_threshold: float = 0.5) -> Tensor:
    """:func:`greedy_assign` of every image of a batch at once.

    Images with fewer ground truths than ``G`` pad their columns with a negative IoU (e.g.
    -1): padded columns never match. The first step runs ``min(A, G)`` rounds over the whole
    batch instead of one round per ground truth of each image (one host synchronisation per
    round, to stop when nothing is left to match).

    Args:
        iou (Tensor[B, A, G]): IoU of every anchor with every (padded) ground-truth box.
        iou_threshold: minimum IoU for the second step.

    Returns:
        Tensor[B, A] int64: ground-truth index per anchor, or :data:`BACKGROUND` (-1); equal to
        ``greedy_assign(iou[b, :, :g_b])`` for each image ``b`` with ``g_b`` real columns.
    """
    if iou.ndim != 3:
        raise BoxError(
            f"iou must be a [batch, anchors, ground truths] tensor, got {tuple(iou.shape)}"
        )
    batch, num_anchors, num_gt = iou.shape
    if num_gt == 0 or num_anchors == 0:
        return torch.full((batch, num_anchors), BACKGROUND, dtype=torch.int64, device=iou.device)
    best_iou, best_gt = iou.max(dim=2)
    matched = torch.where(best_iou >= iou_threshold, best_gt, BACKGROUND)
    remaining = iou.clone()
    flat = remaining.view(batch, -1)
    images = torch.arange(batch, device=iou.device)
    for _ in range(min(num_anchors, num_gt)):
        value, index = flat.max(dim=1)
        found = value > 0
        if not bool(found.any()):
            break
        rows, index = images[found], index[found]
        anchor, gt = index // num_gt, index % num_gt
        matched[rows, anchor] = gt
        remaining[rows, anchor, :] = -1
        remaining[rows, :, gt] = -1
    return matched


def threshold_match(
    iou: Tensor,
    high_threshold: float,
    low_threshold: float,
    allow_low_quality_matches: bool = False,
) -> Tensor:
    """Threshold matching (Faster R-CNN): each anchor takes its best ground truth if it is good.

    An anchor whose best IoU is ≥ ``high_threshold`` is matched; below ``low_threshold`` it is
    background; in between it is ignored. With ``allow_low_quality_matches``, for every ground
    truth the anchors that reach its highest IoU are matched to their own best ground truth
    even below the threshold, so no ground truth is left without an anchor.

    Args:
        iou (Tensor[A, G]): IoU of every anchor with every ground-truth box.
        high_threshold, low_threshold: ``low_threshold <= high_threshold``.
        allow_low_quality_matches: see above.

    Returns:
        Tensor[A] int64: ground-truth index, :data:`BACKGROUND` (-1) or
        :data:`BETWEEN_THRESHOLDS` (-2) per anchor.
    """
    _check_iou(iou)
    if low_threshold > high_threshold:
        raise BoxError(
            f"low_threshold {low_threshold} must not exceed high_threshold {high_threshold}"
        )
    num_anchors, num_gt = iou.shape
    if num_gt == 0:
        return torch.full((num_anchors,), BACKGROUND, dtype=torch.int64, device=iou.device)
    best_iou, matches = iou.max(dim=1)
    best_gt = matches.clone()
    matches[best_iou < low_threshold] = BACKGROUND
    matches[(best_iou >= low_threshold) & (best_iou < high_threshold)] = BETWEEN_THRESHOLDS
    if allow_low_quality_matches and num_anchors:
        best_per_gt = iou.max(dim=0).values
        anchors = torch.nonzero(iou == best_per_gt[None, :])[:, 0]
        matches[anchors] = best_gt[anchors]
    return matches


def balanced_sample(
    positive: Tensor,
    negative: Tensor,
    num_samples: int,
    positive_fraction: float,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Draw a training mini-batch of anchors with at most ``positive_fraction`` positives.

    Takes ``min(num_positive, int(num_samples * positive_fraction))`` positives at random and
    fills the rest of ``num_samples`` with random negatives (as many as exist).

    Args:
        positive (Tensor[A] bool): anchors matched to a ground truth.
        negative (Tensor[A] bool): background anchors (ignored anchors are in neither mask).
        num_samples: anchors per image.
        positive_fraction: in [0, 1].
        generator: random source, for reproducible draws.

    Returns:
        ``(positive_idx, negative_idx)``: Tensor[P] and Tensor[Q] int64 anchor indices.
    """
    if positive.shape != negative.shape or positive.ndim != 1:
        raise BoxError(
            f"positive and negative must be [A] masks of one shape, got "
            f"{tuple(positive.shape)} and {tuple(negative.shape)}"
        )
    if not 0.0 <= positive_fraction <= 1.0:
        raise BoxError(f"positive_fraction must be in [0, 1], got {positive_fraction}")
    pos_idx = torch.nonzero(positive).flatten()
    neg_idx = torch.nonzero(negative).flatten()
    num_pos = min(pos_idx.numel(), int(num_samples * positive_fraction))
    num_neg = min(neg_idx.numel(), num_samples - num_pos)
    device = positive.device
    pos_pick = torch.randperm(pos_idx.numel(), generator=generator, device="cpu")[:num_pos]
    neg_pick = torch.randperm(neg_idx.numel(), generator=generator, device="cpu")[:num_neg]
    return pos_idx[pos_pick.to(device)], neg_idx[neg_pick.to(device)]


def hard_negative_mask(loss: Tensor, positive: Tensor, neg_pos_ratio: float) -> Tensor:
    """Hard negative mining (SSD): per image the highest-loss negatives, ``ratio`` per positive.

    Args:
        loss (Tensor[B, A]): per-anchor classification loss.
        positive (Tensor[B, A] bool): positive anchors.
        neg_pos_ratio: negatives kept per positive in the same image.

    Returns:
        Tensor[B, A] bool: the selected negatives (never a positive). Equal losses are broken
        by lower anchor index.
    """
    if loss.shape != positive.shape or loss.ndim != 2:
        raise BoxError(
            f"loss and positive must be [B, A] of one shape, got {tuple(loss.shape)} "
            f"and {tuple(positive.shape)}"
        )
    num_neg = (positive.sum(dim=1, keepdim=True) * neg_pos_ratio).long()
    negative_loss = loss.detach().masked_fill(positive, -torch.inf)
    order = torch.sort(negative_loss, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(loss.shape[1], device=loss.device).expand_as(order))
    return (rank < num_neg) & ~positive
