"""cvkit.ops as a drop-in for torchvision.ops: the same call (integer boxes, empty inputs,
keywords) gives the same result dtype, shape and values, and a mistake raises an exception
that is (or subclasses) torchvision's."""

import inspect
import math

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
DEGENERATE = torch.tensor([[0.0, 0, 0, 0], [1, 1, 1, 1], [2, 2, 2, 5]])
ROTATED = {
    "xywhr": torch.tensor([[1.0, 2, 3, 4, 30], [5, 6, 7, 8, -45], [0, 0, 10, 20, 90]]),
    "cxcywhr": torch.tensor([[5.0, 5, 4, 2, 15], [-3, 2, 6, 6, 180], [1, 1, 0, 0, 0]]),
    "xyxyxyxy": torch.tensor([[0.0, 0, 4, 0, 4, 3, 0, 3], [1, 1, 3, 3, 1, 5, -1, 3]]),
}
FEATURES = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
ROIS = torch.tensor([[0, 1.0, 1, 8, 8], [1, 2, 2, 10, 12], [1, 0, 0, 15, 15]])
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


@pytest.mark.parametrize("name", PAIRWISE)
@pytest.mark.parametrize("dtype", [torch.float32, torch.int32, torch.int64])
def test_pairwise_iou_family_on_degenerate_boxes_matches_torchvision(name, dtype):
    boxes = DEGENERATE.to(dtype)
    _assert_same(getattr(cv, name)(boxes, FLOAT), getattr(tv, name)(boxes, FLOAT))
    _assert_same(getattr(cv, name)(boxes, boxes), getattr(tv, name)(boxes, boxes))


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("kind", INPUTS)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_iou_losses_match_torchvision(name, kind, reduction):
    boxes = INPUTS[kind]
    shifted = boxes + 1
    _assert_same(
        getattr(cv, name)(boxes1=boxes, boxes2=shifted, reduction=reduction, eps=1e-7),
        getattr(tv, name)(boxes1=boxes, boxes2=shifted, reduction=reduction, eps=1e-7),
    )


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.int32, torch.int64])
def test_iou_losses_on_degenerate_single_and_broadcast_boxes_match_torchvision(name, dtype):
    cv_loss, tv_loss = getattr(cv, name), getattr(tv, name)
    boxes, degenerate = FLOAT.to(dtype), DEGENERATE.to(dtype)
    # Zero-area boxes: eps in the union keeps the losses finite where torchvision's are.
    _assert_same(cv_loss(degenerate, degenerate), tv_loss(degenerate, degenerate))
    _assert_same(cv_loss(degenerate, boxes), tv_loss(degenerate, boxes))
    _assert_same(cv_loss(boxes[0], boxes[1]), tv_loss(boxes[0], boxes[1]))
    _assert_same(cv_loss(boxes, boxes[1], "mean"), tv_loss(boxes, boxes[1], "mean"))
    got, want = cv_loss(boxes, boxes + 3, eps=1e-3), tv_loss(boxes, boxes + 3, eps=1e-3)
    if name == "complete_box_iou_loss":
        # torchvision keeps eps=1e-7 in its DIoU part whatever eps is; cvkit applies eps throughout.
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    else:
        _assert_same(got, want)


@pytest.mark.parametrize("kind", [*INPUTS, "half"])
@pytest.mark.parametrize("in_fmt", ["xyxy", "xywh", "cxcywh"])
@pytest.mark.parametrize("out_fmt", ["xyxy", "xywh", "cxcywh"])
def test_box_convert_axis_aligned_matches_torchvision(kind, in_fmt, out_fmt):
    boxes = FLOAT.half() if kind == "half" else INPUTS[kind]
    _assert_same(
        cv.box_convert(boxes=boxes, in_fmt=in_fmt, out_fmt=out_fmt),
        tv.box_convert(boxes=boxes, in_fmt=in_fmt, out_fmt=out_fmt),
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.int64])
@pytest.mark.parametrize("in_fmt", list(ROTATED))
@pytest.mark.parametrize("out_fmt", list(ROTATED))
def test_box_convert_rotated_matches_torchvision(dtype, in_fmt, out_fmt):
    # Integer rotated boxes are rounded after each step, as torchvision does.
    boxes = ROTATED[in_fmt].to(dtype)
    _assert_same(cv.box_convert(boxes, in_fmt, out_fmt), tv.box_convert(boxes, in_fmt, out_fmt))
    _assert_same(
        cv.box_convert(boxes[None], in_fmt, out_fmt), tv.box_convert(boxes[None], in_fmt, out_fmt)
    )


@pytest.mark.parametrize("fmt", list(ROTATED))
def test_box_iou_of_rotated_boxes_matches_torchvision(fmt):
    boxes = ROTATED[fmt]
    for first, second in ((boxes, boxes), (boxes.double(), boxes[:1].double()), (boxes[:0], boxes)):
        _assert_same(cv.box_iou(first, second, fmt=fmt), tv.box_iou(first, second, fmt=fmt))
    for bad in (boxes.long(), boxes[None], boxes[:, :4]):
        want = _outcome(tv.box_iou, bad, bad, fmt=fmt)
        assert isinstance(want, Exception)
        _assert_same(_outcome(cv.box_iou, bad, bad, fmt=fmt), want)


@pytest.mark.parametrize(
    ("in_fmt", "out_fmt"),
    [("xyxy", "xywhr"), ("cxcywhr", "cxcywh"), ("xyxyxyxy", "xyxy"), ("xyhw", "xyxy"),
     ("xyxy", "XYXY"), ("xywhr", "")],
)  # fmt: skip
def test_box_convert_unknown_and_cross_family_formats_raise_like_torchvision(in_fmt, out_fmt):
    boxes = ROTATED.get(in_fmt, FLOAT)
    want = _outcome(tv.box_convert, boxes, in_fmt, out_fmt)
    assert isinstance(want, (ValueError, NotImplementedError))
    _assert_same(_outcome(cv.box_convert, boxes, in_fmt, out_fmt), want)


@pytest.mark.parametrize("kind", INPUTS)
@pytest.mark.parametrize("size", [(12, 8), (12.5, 8.5), (0, 0)])
def test_clip_boxes_to_image_matches_torchvision(kind, size):
    one_box = FLOAT[1].to(INPUTS[kind].dtype)
    for boxes in (INPUTS[kind], INPUTS[kind] - 7, one_box):
        _assert_same(cv.clip_boxes_to_image(boxes, size=size), tv.clip_boxes_to_image(boxes, size))
    corners = ROTATED["xyxyxyxy"]  # any (x, y) pairs clip, as in torchvision
    _assert_same(cv.clip_boxes_to_image(corners, size), tv.clip_boxes_to_image(corners, size))


@pytest.mark.parametrize("kind", INPUTS)
@pytest.mark.parametrize("min_size", [0, 5, 10, 10.5, 25])
def test_remove_small_boxes_returns_torchvision_indices(kind, min_size):
    one_box = FLOAT[1].to(INPUTS[kind].dtype)
    for boxes in (INPUTS[kind], one_box, one_box - 20, torch.zeros(2, 0, 4)):
        got = cv.remove_small_boxes(boxes=boxes, min_size=min_size)
        want = tv.remove_small_boxes(boxes, min_size)
        assert got.ndim == 1 and got.dtype == torch.int64
        _assert_same(got, want)


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
        lambda ops: ops.batched_nms(FLOAT, torch.rand(3), [0, 0, 1], 0.5),
        lambda ops: ops.batched_nms([[0.0, 0, 1, 1]], torch.rand(1), torch.zeros(1), 0.5),
        lambda ops: ops.nms([[0.0, 0, 1, 1]], torch.rand(1), 0.5),
        lambda ops: ops.nms(FLOAT, [0.9, 0.8, 0.7], 0.5),
        lambda ops: ops.nms(torch.zeros(0, 5), torch.zeros(0), 0.5),
        lambda ops: ops.box_convert(ROTATED["xywhr"], "xywhr", "xyxy"),
        lambda ops: ops.generalized_box_iou_loss(FLOAT, FLOAT[:2]),
        lambda ops: ops.distance_box_iou_loss(FLOAT, FLOAT, reduction="max"),
        lambda ops: ops.complete_box_iou_loss(FLOAT, [[0.0, 0, 1, 1]] * 3),
        lambda ops: ops.remove_small_boxes(FLOAT[:, :3], 1.0),
        lambda ops: ops.clip_boxes_to_image(FLOAT[:, :3], (5, 5)),
        lambda ops: ops.clip_boxes_to_image([[0.0, 0, 1, 1]], (5, 5)),
        lambda ops: ops.masks_to_boxes(torch.ones(2, 3)),
        lambda ops: ops.roi_align(FEATURES, ROIS[:, 1:], 2),
        lambda ops: ops.roi_align(FEATURES, [ROIS], 2),
        lambda ops: ops.roi_align(FEATURES, [], 2),
        lambda ops: ops.roi_align(FEATURES[0], ROIS, 2),
        lambda ops: ops.roi_pool(FEATURES, ROIS.double(), 2),
        lambda ops: ops.roi_pool(FEATURES, ROIS[:, :3], 2),
    ],
)
def test_mistakes_raise_torchvision_exception_types(call):
    want = _outcome(call, tv)
    assert isinstance(want, Exception)
    _assert_same(_outcome(call, cv), want)


THRESHOLDS = [-0.5, -0.0, 0.0, 0.3, 1.0, 1.5, math.inf, -math.inf, math.nan]


@pytest.mark.parametrize("iou_threshold", THRESHOLDS)
@pytest.mark.parametrize("n", [3, 200, 1100])  # 1100 boxes: torchvision's per-class loop
def test_nms_thresholds_outside_unit_interval_behave_as_torchvision(make_boxes, n, iou_threshold):
    boxes = make_boxes(n, seed=n, extent=300) if n > 3 else FLOAT
    gen = torch.Generator().manual_seed(n)
    scores = torch.rand(n, generator=gen)
    idxs = torch.randint(0, 3, (n,), generator=gen)
    _assert_same(cv.nms(boxes, scores, iou_threshold), tv.nms(boxes, scores, iou_threshold))
    _assert_same(
        cv.batched_nms(boxes, scores, idxs, iou_threshold),
        tv.batched_nms(boxes, scores, idxs, iou_threshold),
    )


@pytest.mark.parametrize("shape", [(0, 4), (0,), (0, 5), (3, 0), (0, 0, 4)])
@pytest.mark.parametrize("num_scores", [0, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.int64])
def test_batched_nms_on_empty_boxes_of_any_shape_returns_empty_int64(shape, num_scores, dtype):
    boxes, scores = torch.zeros(shape, dtype=dtype), torch.zeros(num_scores)
    for idxs in (torch.zeros(num_scores, dtype=torch.int64), torch.zeros(num_scores)):
        got = cv.batched_nms(boxes=boxes, scores=scores, idxs=idxs, iou_threshold=0.5)
        assert got.shape == (0,) and got.dtype == torch.int64
        _assert_same(got, tv.batched_nms(boxes, scores, idxs, 0.5))
    for n in (0, 3):  # nms: empty with torchvision, or the same error type
        scores = torch.zeros(n)
        _assert_same(_outcome(cv.nms, boxes, scores, 0.5), _outcome(tv.nms, boxes, scores, 0.5))


@pytest.mark.parametrize("name", ["roi_align", "roi_pool"])
def test_roi_ops_take_torchvision_keywords(name):
    per_image = [ROIS[:1, 1:], ROIS[1:, 1:]]
    extra = {"sampling_ratio": 2, "aligned": True} if name == "roi_align" else {}
    for boxes in (ROIS, per_image, tuple(per_image), ROIS[:0]):
        kwargs = {"input": FEATURES, "boxes": boxes, "output_size": (2, 3), "spatial_scale": 0.5}
        _assert_same(getattr(cv, name)(**kwargs, **extra), getattr(tv, name)(**kwargs, **extra))
        _assert_same(getattr(cv, name)(FEATURES, boxes, 3), getattr(tv, name)(FEATURES, boxes, 3))


def _shared_names():
    return sorted(set(tv.__all__) & set(cv.__all__))


def test_cvkit_ops_shares_torchvision_box_op_names():
    expected = {
        "batched_nms", "box_area", "box_convert", "box_iou", "clip_boxes_to_image",
        "complete_box_iou", "complete_box_iou_loss", "distance_box_iou", "distance_box_iou_loss",
        "generalized_box_iou", "generalized_box_iou_loss", "masks_to_boxes", "nms",
        "remove_small_boxes", "roi_align", "roi_pool",
    }  # fmt: skip
    assert expected <= set(_shared_names())


@pytest.mark.parametrize("name", _shared_names())
def test_shared_names_have_torchvision_signatures(name):
    ours = inspect.signature(getattr(cv, name)).parameters
    theirs = inspect.signature(getattr(tv, name)).parameters
    assert list(ours) == list(theirs)
    for param, spec in theirs.items():
        assert ours[param].kind == spec.kind, param
        assert ours[param].default == spec.default, param


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


def _loss_and_grads(loss_fn, boxes1, boxes2):
    boxes1, boxes2 = boxes1.clone().requires_grad_(), boxes2.clone().requires_grad_()
    loss = loss_fn(boxes1, boxes2, reduction="none")
    loss.sum().backward()
    return loss.detach(), boxes1.grad, boxes2.grad


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_iou_losses_on_inverted_and_touching_boxes_match_torchvision_values_and_grads(name, dtype):
    # Small integer grids give many inverted (x2 < x1), zero-size, touching and equal pairs:
    # torchvision's losses clamp nothing and give no gradient through a touching intersection.
    gen = torch.Generator().manual_seed(0)
    boxes1 = torch.randint(0, 5, (500, 4), generator=gen).to(dtype)
    boxes2 = torch.randint(0, 5, (500, 4), generator=gen).to(dtype)
    boxes2[::4] = boxes1[::4]
    inverted = torch.tensor([[5.0, 5, 3, 3]], dtype=dtype)
    for first, second in ((boxes1, boxes2), (inverted, inverted), (DEGENERATE.to(dtype),) * 2):
        got = _loss_and_grads(getattr(cv, name), first, second)
        want = _loss_and_grads(getattr(tv, name), first, second)
        for ours, theirs in zip(got, want, strict=True):
            torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6, equal_nan=True)


@pytest.mark.parametrize("name", LOSSES)
def test_iou_loss_bad_reduction_message_matches_torchvision(name):
    for ops in (tv, cv):
        with pytest.raises(ValueError, match="Invalid"):
            getattr(ops, name)(FLOAT, FLOAT, reduction="xyz")


@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor:UserWarning")
@pytest.mark.parametrize("qdtype", [torch.quint8, torch.qint8, torch.qint32])
def test_nms_on_quantized_boxes_matches_torchvision(make_boxes, qdtype):
    boxes = make_boxes(200, seed=1, extent=100, max_size=60)
    scores = torch.rand(200, generator=torch.Generator().manual_seed(1)) * 100
    qboxes = torch.quantize_per_tensor(boxes, scale=1, zero_point=0, dtype=qdtype)
    qscores = torch.quantize_per_tensor(scores, scale=1, zero_point=0, dtype=qdtype)
    _assert_same(cv.nms(qboxes, qscores, 0.5), tv.nms(qboxes, qscores, 0.5))
    mixed = _outcome(tv.nms, qboxes, scores, 0.5)
    _assert_same(_outcome(cv.nms, qboxes, scores, 0.5), mixed)


@pytest.mark.parametrize("n", [1000, 1001, 3000])  # torchvision switches algorithm above 1000
@pytest.mark.parametrize("scores_kind", ["all-equal", "few-values", "nan", "inf"])
def test_batched_nms_tie_order_matches_torchvision(make_boxes, n, scores_kind):
    gen = torch.Generator().manual_seed(n)
    boxes = make_boxes(n, seed=n, extent=1500, max_size=80)
    scores = torch.rand(n, generator=gen)
    if scores_kind == "all-equal":
        scores = torch.full((n,), 0.5)
    elif scores_kind == "few-values":
        scores = (scores * 4).round() / 4
    elif scores_kind == "nan":
        scores[::7] = math.nan
    else:
        scores[::5], scores[1::5] = math.inf, -math.inf
    idxs = torch.randint(0, 5, (n,), generator=gen)
    for threshold in (0.0, 0.5):
        _assert_same(
            cv.batched_nms(boxes, scores, idxs, threshold),
            tv.batched_nms(boxes, scores, idxs, threshold),
        )
        _assert_same(
            cv.batched_nms(boxes.double(), scores.double(), idxs, threshold),
            tv.batched_nms(boxes.double(), scores.double(), idxs, threshold),
        )


def _per_class_nms(boxes, scores, idxs, iou_threshold):
    kept = []
    for c in idxs.unique():
        members = torch.nonzero(idxs == c).flatten()
        kept.append(members[tv.nms(boxes[members], scores[members], iou_threshold)])
    kept = torch.cat(kept)
    return kept[torch.sort(scores[kept], descending=True, stable=True).indices]


@pytest.mark.parametrize("change", ["nan-box", "inf-box", "huge-idxs"])
def test_batched_nms_stays_per_class_where_torchvision_offset_trick_loses_boxes(make_boxes, change):
    # Documented difference: up to 1000 boxes torchvision offsets each class's coordinates, and a
    # non-finite box (no suppression at all) or huge idxs (rounded coordinates) spoil the result.
    n = 500
    gen = torch.Generator().manual_seed(7)
    boxes = make_boxes(n, seed=7, extent=300, max_size=60)
    scores = torch.rand(n, generator=gen)
    idxs = torch.randint(0, 5, (n,), generator=gen)
    if change == "nan-box":
        boxes[3, 0] = math.nan
    elif change == "inf-box":
        boxes[3, 2] = math.inf
    else:
        idxs = idxs * 100_000
    got = cv.batched_nms(boxes, scores, idxs, 0.5)
    _assert_same(got, _per_class_nms(boxes, scores, idxs, 0.5))
    assert not torch.equal(got, tv.batched_nms(boxes, scores, idxs, 0.5))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.uint8, torch.int8])
@pytest.mark.parametrize("name", ["box_iou", "generalized_box_iou"])
def test_low_precision_boxes_give_the_iou_of_the_stored_boxes(name, dtype):
    # Documented difference: torchvision subtracts these boxes before upcasting (rounding, or
    # wrapping around in uint8); cvkit's values are those of the same boxes in float32.
    boxes = torch.tensor([[0.0, 0, 10, 10], [5, 5, 120, 125], [100, 100, 126, 127]])
    low = boxes.to(dtype)
    got = getattr(cv, name)(low, low.flip(0))
    want = getattr(tv, name)(low.float(), low.flip(0).float())
    assert got.dtype == getattr(tv, name)(low, low.flip(0)).dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0, atol=0)
