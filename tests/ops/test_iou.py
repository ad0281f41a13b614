"""IoU variants equal torchvision's, hold their properties; the losses have correct gradients."""

import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st

from cvkit.ops import iou as cv
from cvkit.ops.boxes import BoxError

PAIRWISE = [
    (cv.generalized_box_iou, torchvision.ops.generalized_box_iou),
    (cv.distance_box_iou, torchvision.ops.distance_box_iou),
    (cv.complete_box_iou, torchvision.ops.complete_box_iou),
]


def _hard_cases(make_boxes):
    """Random boxes plus exact duplicates (ties), zero-area boxes and nested boxes."""
    boxes = make_boxes(300, seed=1)
    boxes[10:20] = boxes[0]  # ties
    boxes[20:25, 2:] = boxes[20:25, :2]  # zero area
    boxes[25:30, 2] = boxes[25:30, 0]  # zero width, positive height
    boxes[30] = torch.tensor([0.0, 0.0, 2000.0, 2000.0])  # contains many others
    return boxes


def test_box_iou_is_bit_identical_to_torchvision(make_boxes):
    boxes1 = _hard_cases(make_boxes)
    boxes2 = torch.cat([make_boxes(700, seed=2), boxes1[:40]])
    expected = torchvision.ops.box_iou(boxes1, boxes2)
    assert torch.equal(cv.box_iou(boxes1, boxes2).isnan(), expected.isnan())
    assert torch.equal(cv.box_iou(boxes1, boxes2).nan_to_num(-1), expected.nan_to_num(-1))


def test_box_iou_huge_inputs_many_blocks(make_boxes):
    # 3000 × 900 spans several CPU blocks; coordinates up to 1e7 stress float32 rounding.
    boxes1 = make_boxes(3000, seed=3, extent=1e7, max_size=1e6)
    boxes2 = make_boxes(900, seed=4, extent=1e7, max_size=1e6)
    assert torch.equal(cv.box_iou(boxes1, boxes2), torchvision.ops.box_iou(boxes1, boxes2))
    assert cv.box_iou(boxes1[:0], boxes2).shape == (0, 900)


@pytest.mark.parametrize(("ours", "theirs"), PAIRWISE, ids=lambda f: getattr(f, "__name__", ""))
def test_pairwise_variants_match_torchvision(make_boxes, ours, theirs):
    boxes1 = _hard_cases(make_boxes)
    boxes2 = make_boxes(200, seed=5)
    torch.testing.assert_close(
        ours(boxes1, boxes2), theirs(boxes1, boxes2), rtol=0, atol=1e-6, equal_nan=True
    )
    huge1 = make_boxes(50, seed=6, extent=1e6, max_size=1e5)
    huge2 = make_boxes(60, seed=7, extent=1e6, max_size=1e5)
    torch.testing.assert_close(ours(huge1, huge2), theirs(huge1, huge2), rtol=0, atol=1e-6)


def test_aligned_forms_are_the_pairwise_diagonal(make_boxes):
    boxes1, boxes2 = make_boxes(40, seed=8, extent=100), make_boxes(40, seed=9, extent=100)
    pairs = [
        (cv.aligned_box_iou, cv.box_iou),
        (cv.aligned_generalized_box_iou, cv.generalized_box_iou),
        (cv.aligned_distance_box_iou, cv.distance_box_iou),
        (cv.aligned_complete_box_iou, cv.complete_box_iou),
    ]
    for aligned, pairwise in pairs:
        torch.testing.assert_close(aligned(boxes1, boxes2), pairwise(boxes1, boxes2).diagonal())
    with pytest.raises(BoxError, match="broadcastable"):
        cv.aligned_box_iou(boxes1, boxes2[:3])


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (cv.giou_loss, torchvision.ops.generalized_box_iou_loss),
        (cv.diou_loss, torchvision.ops.distance_box_iou_loss),
        (cv.ciou_loss, torchvision.ops.complete_box_iou_loss),
    ],
    ids=["giou", "diou", "ciou"],
)
def test_losses_and_gradients_match_torchvision(make_boxes, ours, theirs):
    pred, target = make_boxes(30, seed=10, extent=50), make_boxes(30, seed=11, extent=50)
    for reduction in ("none", "mean", "sum"):
        torch.testing.assert_close(
            ours(pred, target, reduction=reduction), theirs(pred, target, reduction=reduction)
        )
    grads = []
    for loss in (ours, theirs):
        leaf = pred.double().requires_grad_()
        loss(leaf, target.double(), reduction="sum").backward()
        grads.append(leaf.grad)
    torch.testing.assert_close(grads[0], grads[1])


@pytest.mark.parametrize("loss", [cv.giou_loss, cv.diou_loss], ids=["giou", "diou"])
def test_losses_pass_gradcheck(make_boxes, loss):
    # CIoU is left out on purpose: its alpha is a constant in backward (as in the paper), so
    # its analytic gradient differs from the numerical one by design; it is checked above.
    pred = make_boxes(8, seed=10, extent=50).double().requires_grad_()
    target = make_boxes(8, seed=11, extent=50).double().requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: loss(a, b, reduction="sum"), (pred, target))


def test_mask_iou_by_hand():
    masks1 = torch.zeros(2, 4, 4, dtype=torch.bool)
    masks1[0, :2, :2] = True  # 4 pixels
    masks2 = torch.zeros(3, 4, 4, dtype=torch.bool)
    masks2[0, :2, :] = True  # 8 pixels, contains masks1[0]
    masks2[1, 2:, 2:] = True  # disjoint
    expected = torch.tensor([[0.5, 0.0, 0.0], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(cv.mask_iou(masks1, masks2), expected)


coordinate = st.floats(0, 1000, allow_nan=False, width=32)
side = st.floats(0.5, 300, allow_nan=False, width=32)
box_lists = st.lists(st.tuples(coordinate, coordinate, side, side), min_size=1, max_size=12)


def _to_boxes(rows):
    t = torch.tensor(rows, dtype=torch.float32)
    return torch.cat([t[:, :2], t[:, :2] + t[:, 2:]], dim=1)


@settings(max_examples=40, deadline=None)
@given(box_lists, box_lists)
def test_iou_is_symmetric_and_bounded(rows1, rows2):
    boxes1, boxes2 = _to_boxes(rows1), _to_boxes(rows2)
    forward, backward = cv.box_iou(boxes1, boxes2), cv.box_iou(boxes2, boxes1)
    assert torch.equal(forward, backward.t())
    assert bool(((forward >= 0) & (forward <= 1)).all())
    giou = cv.generalized_box_iou(boxes1, boxes2)
    assert bool(((giou >= -1 - 1e-6) & (giou <= forward + 1e-6)).all())


@pytest.mark.gpu
def test_box_iou_cuda_equals_cpu(make_boxes, cuda):
    boxes1, boxes2 = make_boxes(500, seed=12), make_boxes(300, seed=13)
    expected = cv.box_iou(boxes1, boxes2)
    torch.testing.assert_close(cv.box_iou(boxes1.to(cuda), boxes2.to(cuda)).cpu(), expected)
