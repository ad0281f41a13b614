"""Box conversion and clean-up agree with torchvision and with hand-computed values."""

import math

import pytest
import torch
import torchvision

from cvkit.ops.boxes import (
    BoxError,
    box_area,
    box_convert,
    clip_boxes,
    normalize_boxes,
    remove_small_boxes,
    sanitize_boxes,
)

FORMATS = ["xyxy", "xywh", "cxcywh"]


@pytest.mark.parametrize("in_fmt", FORMATS)
@pytest.mark.parametrize("out_fmt", FORMATS)
def test_box_convert_matches_torchvision(make_boxes, in_fmt, out_fmt):
    boxes = torchvision.ops.box_convert(make_boxes(64), "xyxy", in_fmt)
    expected = torchvision.ops.box_convert(boxes, in_fmt, out_fmt)
    torch.testing.assert_close(box_convert(boxes, in_fmt, out_fmt), expected, rtol=1e-6, atol=1e-4)


def test_normalize_boxes_by_hand():
    # 200 wide, 100 high image: x divides by 200, y by 100, in any axis-aligned format.
    boxes = torch.tensor([[20.0, 10.0, 60.0, 50.0]])
    normalized = normalize_boxes(box_convert(boxes, "xyxy", "cxcywh"), (100, 200))
    torch.testing.assert_close(normalized, torch.tensor([[0.2, 0.3, 0.2, 0.4]]))
    back = box_convert(normalize_boxes(normalized, (100, 200), inverse=True), "cxcywh", "xyxy")
    torch.testing.assert_close(back, boxes)
    integer = normalize_boxes(boxes.long(), (100, 200))
    torch.testing.assert_close(integer, torch.tensor([[0.1, 0.1, 0.3, 0.5]]))


def test_box_convert_errors_name_the_problem():
    boxes = torch.zeros(2, 4)
    with pytest.raises(BoxError, match="xyhw"):
        box_convert(boxes, "xyhw", "xyxy")
    with pytest.raises(BoxError, match="image_size"):
        normalize_boxes(boxes, (0, 10))
    with pytest.raises(BoxError, match=r"\[\.\.\., 4\]"):
        box_convert(torch.zeros(2, 3), "xyxy", "xywh")
    with pytest.raises(BoxError, match="floating"):
        box_area(torch.zeros(2, 4, dtype=torch.bool))


def test_area_clip_and_remove_small_match_torchvision(make_boxes):
    boxes = make_boxes(200, extent=600, max_size=80) - 40
    torch.testing.assert_close(box_area(boxes), torchvision.ops.box_area(boxes))
    torch.testing.assert_close(
        clip_boxes(boxes, (500, 300)), torchvision.ops.clip_boxes_to_image(boxes, (500, 300))
    )
    assert torch.equal(
        remove_small_boxes(boxes, 30.0), torchvision.ops.remove_small_boxes(boxes, 30.0)
    )


def test_sanitize_drops_nonfinite_degenerate_and_small():
    boxes = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],  # good
            [0.0, 0.0, math.nan, 10.0],  # NaN
            [0.0, 0.0, math.inf, 10.0],  # inf
            [5.0, 5.0, 5.0, 9.0],  # zero width
            [5.0, 9.0, 8.0, 2.0],  # inverted
            [0.0, 0.0, 2.0, 50.0],  # thin: dropped with min_size=3
            [1.0, 1.0, 4.0, 4.0],  # good
        ]
    )
    keep, dropped = sanitize_boxes(boxes)
    assert keep.tolist() == [0, 5, 6] and dropped == 4
    keep, dropped = sanitize_boxes(boxes, min_size=3.0)
    assert keep.tolist() == [0, 6] and dropped == 5
