"""Anchor generators: golden counts and values by hand, torchvision's AnchorGenerator."""

import math

import pytest
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList

from cvkit.ops.anchors import (
    default_ssd_sizes,
    grid_anchors,
    multibox_prior,
    ssd_anchors,
    yolo_anchors,
)
from cvkit.ops.boxes import BoxError


def test_multibox_prior_golden_count():
    anchors = multibox_prior((561, 728), sizes=[0.75, 0.5, 0.25], ratios=[1, 2, 0.5])
    assert anchors.shape == (2_042_040, 4)  # 561 * 728 * (3 + 3 - 1)


def test_multibox_prior_first_cell_by_hand():
    # 2 x 4 feature map: first cell centre (0.125, 0.25); widths scale by H / W = 0.5.
    anchors = multibox_prior((2, 4), sizes=[0.5, 0.25], ratios=[1, 4]).view(2, 4, 3, 4)
    cx, cy = 0.125, 0.25
    r = math.sqrt(4)
    expected = torch.tensor(
        [
            [cx - 0.5 * 0.5 / 2, cy - 0.5 / 2, cx + 0.5 * 0.5 / 2, cy + 0.5 / 2],  # (0.5, 1)
            [cx - 0.5 * 0.25 / 2, cy - 0.25 / 2, cx + 0.5 * 0.25 / 2, cy + 0.25 / 2],  # (0.25, 1)
            [cx - 0.5 * 0.5 * r / 2, cy - 0.5 / r / 2, cx + 0.5 * 0.5 * r / 2, cy + 0.5 / r / 2],
        ]
    )
    torch.testing.assert_close(anchors[0, 0], expected)
    # The last cell is the first one shifted by 3 columns (0.75) and 1 row (0.5).
    torch.testing.assert_close(anchors[1, 3], expected + torch.tensor([0.75, 0.5, 0.75, 0.5]))
    pixels = multibox_prior((2, 4), [0.5, 0.25], [1, 4], image_size=(200, 400))
    torch.testing.assert_close(
        pixels.view(2, 4, 3, 4)[0, 0], expected * torch.tensor([400, 200, 400, 200])
    )


def test_ssd_anchors_concatenate_levels():
    sizes = default_ssd_sizes(3)
    anchors = ssd_anchors([(8, 8), (4, 4), (2, 2)], sizes, [1, 2, 0.5], image_size=(64, 64))
    assert anchors.shape == ((64 + 16 + 4) * 4, 4)
    torch.testing.assert_close(
        anchors[: 64 * 4], multibox_prior((8, 8), sizes[0], [1, 2, 0.5], (64, 64))
    )
    assert sizes[0] == [0.2, math.sqrt(0.2 * 0.55)] and sizes[2][0] == pytest.approx(0.9)


def test_grid_anchors_match_torchvision():
    sizes, ratios = ((32, 64), (128,)), (0.25, 1.0, 4.0)  # width / height
    # torchvision's ratios are height / width: pass the reciprocals, in the same order.
    generator = AnchorGenerator(sizes, (tuple(1 / r for r in ratios),) * 2)
    images = ImageList(torch.zeros(1, 3, 80, 112), [(80, 112)])
    expected = generator(images, [torch.zeros(1, 1, 5, 7), torch.zeros(1, 1, 3, 4)])[0]
    ours = grid_anchors([(5, 7), (3, 4)], [16, (80 // 3, 112 // 4)], sizes, ratios)
    assert [a.shape[0] for a in ours] == [5 * 7 * 6, 3 * 4 * 3]
    torch.testing.assert_close(torch.cat(ours), expected)


def test_rounded_grid_anchors_match_torchvision_for_irrational_ratios():
    sizes, ratios = ((16, 45), (100,)), (0.5, 1.0, 2.0, 3.0)
    generator = AnchorGenerator(sizes, (tuple(1 / r for r in ratios),) * 2)
    images = ImageList(torch.zeros(1, 3, 96, 96), [(96, 96)])
    expected = generator(images, [torch.zeros(1, 1, 12, 12), torch.zeros(1, 1, 2, 2)])[0]
    exact = torch.cat(grid_anchors([(12, 12), (2, 2)], [8, 48], sizes, ratios))
    rounded = torch.cat(grid_anchors([(12, 12), (2, 2)], [8, 48], sizes, ratios, rounded=True))
    torch.testing.assert_close(rounded, expected)
    assert (exact - expected).abs().max() > 0.1  # sqrt(2) sides are not whole pixels
    assert (rounded - exact).abs().max() <= 0.5


def test_yolo_anchors_by_hand():
    anchors = yolo_anchors((2, 3), stride=8, anchor_sizes=[(10, 14), (20, 6)]).view(2, 3, 2, 4)
    torch.testing.assert_close(anchors[1, 2, 0], torch.tensor([20.0 - 5, 12 - 7, 20 + 5, 12 + 7]))
    torch.testing.assert_close(anchors[0, 0, 1], torch.tensor([4.0 - 10, 4 - 3, 4 + 10, 4 + 3]))


def test_bad_anchor_arguments_raise():
    with pytest.raises(BoxError, match="positive"):
        multibox_prior((0, 4), [0.5], [1])
    with pytest.raises(BoxError, match="positive"):
        multibox_prior((4, 4), [0.5], [-1])
    with pytest.raises(BoxError, match="stride"):
        grid_anchors([(4, 4)], [8, 16], [[32]], [1])
