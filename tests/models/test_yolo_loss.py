"""YOLO box losses: the distribution focal loss by hand, CIoU against torchvision's
``complete_box_iou_loss``, and the distance coding of boxes."""

import math

import pytest
import torch
from torchvision.ops import complete_box_iou_loss as tv_complete_box_iou_loss

from cvkit.models.detection.yolo_loss import (
    box_losses,
    boxes_to_distances,
    distances_to_boxes,
    distribution_focal_loss,
    expected_distances,
)


def test_dfl_equals_a_hand_computation():
    # one box, reg_max 3 (bins 0..3); logits chosen so the softmax is easy to write down
    logits = torch.log(torch.tensor([[0.1, 0.2, 0.3, 0.4]])).expand(4, 4)[None].clone()
    targets = torch.tensor([[0.0, 1.25, 2.5, 2.99]])
    p = [0.1, 0.2, 0.3, 0.4]
    sides = [
        -math.log(p[0]),  # exactly on bin 0: all weight there
        -(0.75 * math.log(p[1]) + 0.25 * math.log(p[2])),
        -(0.5 * math.log(p[2]) + 0.5 * math.log(p[3])),
        -(0.01 * math.log(p[2]) + 0.99 * math.log(p[3])),
    ]
    got = distribution_focal_loss(logits, targets)
    assert got.shape == (1,)
    assert got.item() == pytest.approx(sum(sides) / 4, rel=1e-5)


def test_dfl_is_smallest_at_the_two_bins_around_the_target():
    target = torch.tensor([[1.3, 1.3, 1.3, 1.3]])
    ideal = torch.log(torch.tensor([1e-6, 0.7, 0.3, 1e-6])).expand(1, 4, 4)
    elsewhere = torch.log(torch.tensor([0.25, 0.25, 0.25, 0.25])).expand(1, 4, 4)
    assert distribution_focal_loss(ideal, target) < distribution_focal_loss(elsewhere, target)
    assert torch.allclose(expected_distances(ideal), target, atol=1e-4)


def test_distance_coding_round_trips_and_clamps_to_the_bins():
    generator = torch.Generator().manual_seed(0)
    points = torch.rand(20, 2, generator=generator) * 64
    strides = torch.tensor([8.0, 16.0]).repeat(10)
    extents = torch.rand(20, 4, generator=generator) * 40
    boxes = torch.cat([points - extents[:, :2], points + extents[:, 2:]], 1)
    distances = boxes_to_distances(points, boxes, strides, reg_max=16)
    assert torch.allclose(distances, extents / strides[:, None], atol=1e-5)
    assert torch.allclose(distances_to_boxes(points, distances, strides), boxes, atol=1e-4)
    far = boxes_to_distances(points[:1], boxes[:1] * 0 + 1e4, strides[:1], reg_max=16)
    assert far.max() < 16 and far.min() >= 0


def test_box_losses_equal_torchvision_ciou_and_the_dfl_weighted():
    generator = torch.Generator().manual_seed(1)
    points = torch.rand(12, 2, generator=generator) * 64 + 16
    strides = torch.full((12,), 8.0)
    logits = torch.randn(12, 4, 17, generator=generator, requires_grad=True)
    pred = distances_to_boxes(points, expected_distances(logits), strides)
    target = distances_to_boxes(points, torch.rand(12, 4, generator=generator) * 10, strides)
    weights = torch.rand(12, generator=generator)
    losses = box_losses(logits, pred, target, points, strides, weights, normalizer=3.0)
    ciou = tv_complete_box_iou_loss(pred, target, reduction="none")
    torch.testing.assert_close(losses["iou"], (ciou * weights).sum() / 3.0)
    dfl = distribution_focal_loss(logits, boxes_to_distances(points, target, strides, 16))
    torch.testing.assert_close(losses["dfl"], (dfl * weights).sum() / 3.0)
    (losses["iou"] + losses["dfl"]).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
