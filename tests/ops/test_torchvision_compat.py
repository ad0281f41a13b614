"""cvkit.ops as a drop-in for torchvision.ops: the same call (integer boxes, empty inputs,
keywords) gives the same result dtype, shape and values, and a mistake raises an exception
that is (or subclasses) torchvision's."""

import pytest
import torch
import torchvision.ops as tv

import cvkit.ops as cv

FLOAT = torch.tensor([[0.0, 0, 10, 10], [5, 5, 15, 15], [20, 20, 30, 40]])
INPUTS = {
    "float32": FLOAT,
    "int64": FLOAT.long(),
    "int32": FLOAT.int(),
    "empty": torch.zeros(0, 4),
    "empty-int": torch.zeros(0, 4, dtype=torch.int64),
    "batched": FLOAT[None],
}
PAIRWISE = ["box_iou", "generalized_box_iou", "distance_box_iou", "complete_box_iou"]
LOSSES = ["generalized_box_iou_loss", "distance_box_iou_loss", "complete_box_iou_loss"]


def _outcome(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except Exception as error:
        return error


def _assert_same(got, want):
    if isinstance(want, Exception):
        assert isinstance(got, type(want)), (got, want)
        return
    assert not isinstance(got, Exception), got
    assert got.dtype == want.dtype and got.shape == want.shape
    torch.testing.assert_close(got, want, equal_nan=True)


@pytest.mark.parametrize("name", PAIRWISE)
@pytest.mark.parametrize("first", INPUTS)
@pytest.mark.parametrize("second", ["float32", "empty", "int64"])
def test_pairwise_iou_family_matches_torchvision(name, first, second):
    boxes1, boxes2 = INPUTS[first], INPUTS[second]
    if boxes1.ndim == 3:
        boxes2 = boxes2[None]
    _assert_same(
        _outcome(getattr(cv, name), boxes1=boxes1, boxes2=boxes2),
        _outcome(getattr(tv, name), boxes1=boxes1, boxes2=boxes2),
    )


@pytest.mark.parametrize("fmt", ["xyxy", "xywh", "cxcywh"])
@pytest.mark.parametrize("kind", INPUTS)
def test_box_area_and_box_iou_formats_match_torchvision(fmt, kind):
    boxes = INPUTS[kind]
    _assert_same(cv.box_area(boxes, fmt=fmt), tv.box_area(boxes, fmt=fmt))
    _assert_same(cv.box_iou(boxes, boxes, fmt=fmt), tv.box_iou(boxes, boxes, fmt=fmt))


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("kind", INPUTS)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_iou_losses_match_torchvision(name, kind, reduction):
    boxes = INPUTS[kind]
    shifted = boxes + 1
    _assert_same(
        getattr(cv, name)(boxes, shifted, reduction=reduction, eps=1e-7),
        getattr(tv, name)(boxes, shifted, reduction=reduction, eps=1e-7),
    )


@pytest.mark.parametrize("kind", INPUTS)
@pytest.mark.parametrize(("in_fmt", "out_fmt"), [("xyxy", "cxcywh"), ("xywh", "xyxy")])
def test_box_convert_clip_and_remove_small_match_torchvision(kind, in_fmt, out_fmt):
    boxes = INPUTS[kind]
    _assert_same(
        cv.box_convert(boxes, in_fmt=in_fmt, out_fmt=out_fmt),
        tv.box_convert(boxes, in_fmt=in_fmt, out_fmt=out_fmt),
    )
    _assert_same(
        cv.clip_boxes_to_image(boxes, size=(12, 8)), tv.clip_boxes_to_image(boxes, (12, 8))
    )
    if boxes.ndim == 2:
        _assert_same(cv.remove_small_boxes(boxes, min_size=10), tv.remove_small_boxes(boxes, 10))


@pytest.mark.parametrize("shape", [(3, 5, 7), (0, 5, 7), (2, 0, 0)])
def test_masks_to_boxes_matches_torchvision(shape):
    masks = torch.rand(shape, generator=torch.Generator().manual_seed(0)) > 0.7
    if shape[0]:
        masks[0] = False
    _assert_same(cv.masks_to_boxes(masks), tv.masks_to_boxes(masks))
    _assert_same(cv.masks_to_boxes(masks.float()), tv.masks_to_boxes(masks.float()))


@pytest.mark.parametrize(
    "call",
    [
        lambda ops: ops.box_iou(FLOAT[:, :3], FLOAT),
        lambda ops: ops.box_iou(FLOAT[0], FLOAT[0]),
        lambda ops: ops.box_area(FLOAT[:, :3]),
        lambda ops: ops.box_area([[0, 0, 1, 1]]),
        lambda ops: ops.generalized_box_iou(FLOAT.bool(), FLOAT.bool()),
        lambda ops: ops.box_convert(FLOAT, "xyhw", "xyxy"),
        lambda ops: ops.nms(FLOAT.long(), torch.rand(3), 0.5),
        lambda ops: ops.nms(FLOAT, torch.rand(2), 0.5),
        lambda ops: ops.nms(FLOAT[None], torch.rand(3), 0.5),
        lambda ops: ops.batched_nms(FLOAT, torch.rand(3), torch.zeros(2, dtype=torch.int64), 0.5),
    ],
)
def test_mistakes_raise_torchvision_exception_types(call):
    want = _outcome(call, tv)
    assert isinstance(want, Exception)
    _assert_same(_outcome(call, cv), want)


def test_nms_keywords_and_empty_inputs_match_torchvision():
    scores = torch.tensor([0.9, 0.8, 0.7])
    idxs = torch.tensor([0, 0, 1])
    kwargs = {"boxes": FLOAT, "scores": scores, "iou_threshold": 0.1}
    _assert_same(cv.nms(**kwargs), tv.nms(**kwargs))
    _assert_same(cv.batched_nms(idxs=idxs, **kwargs), tv.batched_nms(idxs=idxs, **kwargs))
    empty = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "iou_threshold": 0.5}
    _assert_same(cv.nms(**empty), tv.nms(**empty))
    none = torch.zeros(0, dtype=torch.int64)
    _assert_same(cv.batched_nms(idxs=none, **empty), tv.batched_nms(idxs=none, **empty))
