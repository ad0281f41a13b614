"""Anchor-to-ground-truth assignment and sampling of training anchors.

Every function takes an IoU matrix ``Tensor[A, G]`` (anchors × ground-truth boxes, e.g.
``box_iou(anchors, gt_boxes)``) and returns, per anchor, the index of its ground-truth box or a
negative code. They are per image, except :func:`greedy_assign_batched`, which takes a padded
batch ``Tensor[B, A, G]`` and equals :func:`greedy_assign` image by image.
"""

from __future__ import annotations

import math

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
    -1): padded columns never match. The first step never looks at more than ``k = min(A, G)``
    anchors per ground truth: when a ground truth is paired, at most ``k - 1`` anchors have
    left the matrix, so its anchor is among its ``k`` best (ties to the lower anchor, as in
    :func:`greedy_assign`). Those candidates are found in one pass over the batch's IoU
    (``topk``), and the rounds (at most ``k``, one host synchronisation each) work on
    ``[B, G, k]`` instead of ``[B, A, G]``: for an SSD300 batch of COCO-like images (8,732
    anchors, 40 ground truths, batch 32) 44 ms instead of 348 ms for the rounds over the whole
    matrix on 2 CPU cores (``benchmarks/results/train.md``).

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
    values, anchors = _greedy_candidates(iou)
    removed = torch.tensor(-math.inf, dtype=values.dtype, device=values.device)
    for _ in range(anchors.shape[2]):
        # each ground truth's best remaining anchor (ties: the lower anchor), then each image's
        # best of those (ties: the lower ground truth). greedy_assign takes tied pairs in
        # anchor-major order, this in ground-truth-major order: the pairs taken are the same
        # (the tests compare both on every 0/1 matrix of 3 x 4, 4 x 3 and 2 x 5)
        head, slot = values.max(dim=2)
        best, gt = head.max(dim=1)
        found = best > 0
        if not bool(found.any()):
            break
        anchor = anchors.gather(2, slot[..., None]).squeeze(2).gather(1, gt[:, None]).squeeze(1)
        images = found.nonzero().squeeze(1)
        matched[images, anchor[images]] = gt[images]
        values[images, gt[images], :] = removed
        values.masked_fill_((anchors == anchor[:, None, None]) & found[:, None, None], removed)
    return matched


def _greedy_candidates(iou: Tensor) -> tuple[Tensor, Tensor]:
    """Every ground truth's ``k = min(A, G)`` best anchors, ties to the lower anchor.

    Args:
        iou (Tensor[B, A, G]).

    Returns:
        values (Tensor[B, G, k]): their IoU; anchors (Tensor[B, G, k]) int64: their indices, in
        ascending order within each ground truth.
    """
    num_anchors = iou.shape[1]
    k = min(num_anchors, iou.shape[2])
    scores = iou.transpose(1, 2)
    # one more than needed: the (k+1)-th value tells whether anchors outside the k share the
    # k-th value. topk keeps an arbitrary few of such tied anchors; greedy_assign would take the
    # lowest. That matters only where the tied value is positive (nothing else is ever paired):
    # those ground truths are redone exactly.
    values, anchors = scores.topk(min(k + 1, num_anchors), dim=2)
    kth = values[..., k - 1 : k]
    # with k = A every anchor is a candidate: nothing lies outside to be tied with
    short = (kth[..., 0] > 0) & (values[..., -1] == kth[..., 0]) if values.shape[2] > k else None
    values, anchors = values[..., :k], anchors[..., :k]
    if short is not None and bool(short.any()):
        image, gt = short.nonzero(as_tuple=True)
        column, edge = scores[image, gt], kth[image, gt]
        above, at_edge = column > edge, column == edge
        room = k - above.sum(dim=1, keepdim=True)
        take = above | (at_edge & (at_edge.cumsum(dim=1, dtype=torch.int32) <= room))
        exact = take.nonzero()[:, 1].view(-1, k)
        anchors[image, gt] = exact
        values[image, gt] = column.gather(1, exact)
    anchors, order = anchors.sort(dim=2)
    return values.gather(2, order), anchors


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
