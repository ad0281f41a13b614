"""RoI ops: same values as torchvision's ops and MultiScaleRoIAlign, level choice by hand."""

from collections import OrderedDict

import pytest
import torch
import torchvision

from cvkit.ops.boxes import BoxError
from cvkit.ops.roi import boxes_to_rois, fpn_levels, multiscale_roi_align, roi_align, roi_pool


def _image_boxes(make_boxes):
    return [
        make_boxes(7, seed=1, extent=150, max_size=90),
        make_boxes(5, seed=2, extent=150, max_size=90),
    ]


def test_roi_pool_and_align_match_torchvision(make_boxes):
    features = torch.randn(2, 3, 40, 40, generator=torch.Generator().manual_seed(0))
    boxes = _image_boxes(make_boxes)
    rois = boxes_to_rois(boxes)
    assert rois.shape == (12, 5) and rois[7:, 0].eq(1).all()
    expected = torchvision.ops.roi_align(features, boxes, (7, 7), 0.25, 2, True)
    torch.testing.assert_close(roi_align(features, boxes, (7, 7), 0.25, 2, aligned=True), expected)
    torch.testing.assert_close(
        roi_pool(features, rois, 5, 0.25), torchvision.ops.roi_pool(features, boxes, 5, 0.25)
    )
    with pytest.raises(BoxError, match=r"\[K, 5\]"):
        roi_align(features, rois[:, 1:], 7)


def test_fpn_levels_by_hand():
    boxes = torch.tensor(
        [
            [0.0, 0.0, 224.0, 224.0],
            [0.0, 0.0, 112.0, 112.0],
            [0.0, 0.0, 447.0, 447.0],
            [0.0, 0.0, 8.0, 8.0],
        ]
    )
    # Levels 2..5: 224 px -> level 4, 112 -> 3, 447 (< 448) -> 4, tiny -> clamped to 2.
    assert fpn_levels(boxes, 2, 5).tolist() == [2, 1, 2, 0]


def test_multiscale_roi_align_matches_torchvision(make_boxes):
    gen = torch.Generator().manual_seed(3)
    sizes = {"p2": 64, "p3": 32, "p4": 16, "p5": 8}
    features = OrderedDict((k, torch.randn(2, 4, s, s, generator=gen)) for k, s in sizes.items())
    boxes = [
        make_boxes(20, seed=4, extent=200, max_size=250),
        make_boxes(9, seed=5, extent=200, max_size=250),
    ]
    pooler = torchvision.ops.MultiScaleRoIAlign(list(sizes), 7, 2)
    expected = pooler(features, boxes, [(256, 256), (256, 256)])
    ours = multiscale_roi_align(list(features.values()), boxes, 7, [4, 8, 16, 32], sampling_ratio=2)
    torch.testing.assert_close(ours, expected)
    assert len(set(fpn_levels(torch.cat(boxes), 2, 5).tolist())) > 1  # several levels used
    with pytest.raises(BoxError, match="powers of two"):
        multiscale_roi_align(list(features.values()), boxes, 7, [4, 8, 12, 32])
