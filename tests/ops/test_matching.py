"""Anchor matching: a worked greedy example by hand, torchvision's Matcher, the samplers."""

import pytest
import torch
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler, Matcher

from cvkit.ops.boxes import BoxError
from cvkit.ops.iou import box_iou
from cvkit.ops.matching import (
    BACKGROUND,
    balanced_sample,
    greedy_assign,
    greedy_assign_batched,
    hard_negative_mask,
    threshold_match,
)

GROUND_TRUTH = torch.tensor(
    [[0.0, 0.0, 10.0, 10.0], [20.0, 0.0, 30.0, 10.0], [0.0, 0.0, 10.0, 10.0]]  # 0 and 2 equal
)
ANCHORS = torch.tensor(
    [
        [0.0, 0.0, 10.0, 10.0],  # IoU 1 with gt 0 and gt 2
        [0.0, 0.0, 10.0, 5.0],  # 50 / 100 = 0.5 with gt 0 and gt 2
        [20.0, 0.0, 30.0, 4.0],  # 40 / 100 = 0.4 with gt 1
        [40.0, 0.0, 50.0, 10.0],  # overlaps nothing
        [5.0, 0.0, 15.0, 10.0],  # 50 / 150 = 1/3 with gt 0 and gt 2
        [22.0, 0.0, 32.0, 10.0],  # 80 / 120 = 2/3 with gt 1
    ]
)


def test_greedy_assignment_worked_example():
    iou = box_iou(ANCHORS, GROUND_TRUTH)
    # Greedy: (anchor 0, gt 0) = 1.0 first (lowest index among the ties); then (5, 1) = 2/3;
    # then gt 2's best free anchor is anchor 1 (0.5) even though anchor 1's argmax is gt 0.
    # Threshold 0.5: no other anchor reaches it.
    assert greedy_assign(iou, 0.5).tolist() == [0, 2, -1, -1, -1, 1]
    # Threshold 0.3: anchor 2 takes gt 1 (0.4) and anchor 4 its first best gt 0 (1/3).
    assert greedy_assign(iou, 0.3).tolist() == [0, 2, 1, -1, 0, 1]
    assert greedy_assign(iou[:, :0], 0.5).tolist() == [BACKGROUND] * 6


def test_batched_greedy_assignment_equals_the_per_image_one(make_boxes):
    """Random images (0 to 9 boxes, duplicated boxes for exact ties) padded into one batch."""
    generator = torch.Generator().manual_seed(3)
    anchors = make_boxes(300, seed=4, extent=200)
    counts = [0, 1, 9, 4, 2, 7]
    most = max(counts)
    padded = torch.full((len(counts), len(anchors), most), -1.0)
    expected = []
    for row, count in enumerate(counts):
        gt = make_boxes(count, seed=10 + row, extent=200)
        if count > 2:
            gt[1] = gt[0]  # equal columns: ties go to the lower index in both
        if count:
            gt = gt[torch.randperm(count, generator=generator)]
        iou = box_iou(anchors, gt)
        padded[row, :, :count] = iou
        expected.append(greedy_assign(iou, 0.4))
    assert torch.equal(greedy_assign_batched(padded, 0.4), torch.stack(expected))
    worked = box_iou(ANCHORS, GROUND_TRUTH)[None]
    assert greedy_assign_batched(worked, 0.5).tolist() == [[0, 2, -1, -1, -1, 1]]
    with pytest.raises(BoxError, match="batch"):
        greedy_assign_batched(worked[0])


@pytest.mark.parametrize(
    ("batch", "num_anchors", "num_gt"), [(6, 5, 9), (8, 40, 7), (4, 300, 30), (3, 1, 4)]
)
def test_batched_greedy_assignment_breaks_ties_as_the_per_image_one(batch, num_anchors, num_gt):
    """IoU values from a handful of levels: every column has long runs of equal values, also at
    the k-th best anchor that bounds the candidates (k = min(A, G)), and padded columns."""
    generator = torch.Generator().manual_seed(num_anchors)
    levels = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0])
    for _ in range(5):
        pick = torch.randint(len(levels), (batch, num_anchors, num_gt), generator=generator)
        iou = levels[pick]
        counts = torch.randint(num_gt + 1, (batch,), generator=generator).tolist()
        for row, count in enumerate(counts):
            iou[row, :, count:] = -1.0
        expected = torch.stack(
            [greedy_assign(iou[row, :, :count], 0.5) for row, count in enumerate(counts)]
        )
        assert torch.equal(greedy_assign_batched(iou, 0.5), expected)


@pytest.mark.parametrize(("num_anchors", "num_gt"), [(3, 4), (4, 3), (2, 5)])
def test_batched_greedy_assignment_equals_the_per_image_one_on_every_binary_matrix(
    num_anchors, num_gt
):
    """All 0/1 IoU matrices of a size: ties everywhere, in every pattern (the batched rounds
    take tied pairs ground truth first, greedy_assign anchor first)."""
    cells = num_anchors * num_gt
    bits = (torch.arange(2**cells)[:, None] >> torch.arange(cells)) & 1
    iou = bits.view(-1, num_anchors, num_gt).float()
    expected = torch.stack([greedy_assign(matrix, 0.5) for matrix in iou])
    assert torch.equal(greedy_assign_batched(iou, 0.5), expected)


@pytest.mark.parametrize("low_quality", [False, True])
def test_threshold_match_equals_torchvision_matcher(make_boxes, low_quality):
    anchors, gt = make_boxes(400, seed=1, extent=300), make_boxes(12, seed=2, extent=300)
    iou = box_iou(anchors, gt)
    expected = Matcher(0.6, 0.3, allow_low_quality_matches=low_quality)(iou.t())
    assert torch.equal(threshold_match(iou, 0.6, 0.3, low_quality), expected)
    with pytest.raises(BoxError, match="low_threshold"):
        threshold_match(iou, 0.3, 0.6)


def test_balanced_sample_counts_and_reproducibility():
    labels = torch.tensor([1] * 30 + [0] * 100 + [-1] * 20)
    positive, negative = labels == 1, labels == 0
    pos, neg = balanced_sample(positive, negative, 64, 0.25, torch.Generator().manual_seed(0))
    assert len(pos) == 16 and len(neg) == 48
    assert bool(positive[pos].all() and negative[neg].all()) and len(set(pos.tolist())) == 16
    again = balanced_sample(positive, negative, 64, 0.25, torch.Generator().manual_seed(0))
    assert torch.equal(pos, again[0]) and torch.equal(neg, again[1])
    # Same counts as torchvision's sampler on the same labels.
    tv_pos, tv_neg = BalancedPositiveNegativeSampler(64, 0.25)([labels])
    assert int(tv_pos[0].sum()) == 16 and int(tv_neg[0].sum()) == 48
    # Too few positives: negatives fill the rest; too few of both: all of them.
    pos, neg = balanced_sample(positive[:110], negative[:110], 128, 0.5)
    assert len(pos) == 30 and len(neg) == 80


def test_hard_negative_mask_picks_highest_losses():
    loss = torch.tensor([[0.1, 0.9, 0.3, 0.8, 0.5, 0.7], [0.4, 0.4, 0.4, 0.4, 0.4, 0.4]])
    positive = torch.tensor([[True, True, False, False, False, False], [False] * 5 + [True]])
    mask = hard_negative_mask(loss, positive, neg_pos_ratio=1.5)
    # Image 0: 2 positives -> 3 negatives: 0.8, 0.7, 0.5. Image 1: 1 positive -> 1, ties by index.
    assert mask.tolist() == [
        [False, False, False, True, True, True],
        [True, False, False, False, False, False],
    ]
