"""The task-aligned assigner against a brute-force reference that visits every
(ground truth, point) pair in Python loops, on random images with overlapping boxes."""

import pytest
import torch

from cvkit.models.detection.yolo_assign import task_aligned_assign


def _iou(a: list[float], b: list[float]) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def _reference(scores, pred_boxes, points, gt_boxes, gt_labels, topk, alpha, beta):
    """Per ground truth: the metric of each inside point, the ``topk`` best; then per point the
    chosen ground truth of highest IoU; soft targets rescaled per ground truth."""
    scores, pred_boxes, points = scores.tolist(), pred_boxes.tolist(), points.tolist()
    gt_boxes, gt_labels = gt_boxes.tolist(), gt_labels.tolist()
    chosen = {}  # point -> list of (iou, gt, metric)
    for g, (box, label) in enumerate(zip(gt_boxes, gt_labels, strict=True)):
        ranked = []
        for p, (x, y) in enumerate(points):
            if box[0] < x < box[2] and box[1] < y < box[3]:
                iou = _iou(pred_boxes[p], box)
                ranked.append((scores[p][label] ** alpha * iou**beta, p, iou))
        ranked.sort(reverse=True)
        for metric, p, iou in ranked[:topk]:
            chosen.setdefault(p, []).append((iou, g, metric))
    matched = [-1] * len(points)
    kept = {}  # gt -> list of (point, iou, metric)
    for p, options in chosen.items():
        iou, g, metric = max(options)
        matched[p] = g
        kept.setdefault(g, []).append((p, iou, metric))
    target = torch.zeros(len(points), len(scores[0]), dtype=torch.float64)
    for g, members in kept.items():
        best_iou = max(iou for _, iou, _ in members)
        best_metric = max(metric for _, _, metric in members)
        for p, _, metric in members:
            target[p, gt_labels[g]] = metric / (best_metric + 1e-9) * best_iou
    return torch.tensor(matched), target


def _random_case(seed: int, num_gt: int):
    generator = torch.Generator().manual_seed(seed)
    side = 8
    ys, xs = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    points = (torch.stack([xs, ys], -1).reshape(-1, 2).double() + 0.5) * 8  # 64-px image
    centres = points + (torch.rand(len(points), 2, generator=generator) - 0.5) * 8
    sizes = 6 + torch.rand(len(points), 2, generator=generator) * 30
    pred_boxes = torch.cat([centres - sizes / 2, centres + sizes / 2], 1)
    scores = torch.rand(len(points), 3, generator=generator, dtype=torch.float64)
    corner = torch.rand(num_gt, 2, generator=generator, dtype=torch.float64) * 40
    extent = 8 + torch.rand(num_gt, 2, generator=generator, dtype=torch.float64) * 30
    gt_boxes = torch.cat([corner, corner + extent], 1)
    gt_labels = torch.randint(0, 3, (num_gt,), generator=generator)
    return scores, pred_boxes, points, gt_boxes, gt_labels


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(("topk", "alpha", "beta"), [(10, 0.5, 6.0), (3, 1.0, 2.0)])
def test_assigner_equals_the_brute_force_reference(seed, topk, alpha, beta):
    case = _random_case(seed, num_gt=1 + seed)
    got = task_aligned_assign(*case, topk=topk, alpha=alpha, beta=beta)
    matched, target = _reference(*case, topk, alpha, beta)
    assert got.positive.any()
    assert torch.equal(got.matched, matched)
    torch.testing.assert_close(got.scores, target, rtol=1e-9, atol=1e-12)
    gt_boxes = case[3]
    positive = matched >= 0
    assert torch.equal(got.boxes[positive], gt_boxes[matched[positive]])
    assert (got.boxes[~positive] == 0).all()


def test_overlapping_truths_share_points_by_iou_and_no_truth_gives_negatives():
    scores, pred_boxes, points, gt_boxes, gt_labels = _random_case(0, num_gt=2)
    gt_boxes = torch.tensor([[0.0, 0.0, 40.0, 40.0], [4.0, 4.0, 44.0, 44.0]], dtype=torch.float64)
    got = task_aligned_assign(scores, pred_boxes, points, gt_boxes, gt_labels, topk=64)
    both = (points > 4).all(1) & (points < 40).all(1)  # inside both boxes: each chose them
    for p in torch.nonzero(both).squeeze(1).tolist():
        ious = [_iou(pred_boxes[p].tolist(), box) for box in gt_boxes.tolist()]
        assert got.matched[p] == max(range(2), key=ious.__getitem__)
    empty = task_aligned_assign(scores, pred_boxes, points, gt_boxes[:0], gt_labels[:0])
    assert not empty.positive.any() and (empty.scores == 0).all()
