"""RoIAlign, RoIPool and MultiScaleRoIAlign against torchvision's classes as the reference:
same constructor and forward signatures, same repr, same values and gradients on random
features and boxes (a padded batch of images of different sizes, level subsets, empty boxes)."""

import inspect
from collections import OrderedDict

import pytest
import torch
import torch.fx
import torchvision.ops as tv

import cvkit.ops as cv
from cvkit.ops.boxes import BoxError
from cvkit.ops.poolers import feature_strides

LEVELS = OrderedDict([("p2", 4), ("p3", 8), ("p4", 16), ("p5", 32)])
PADDED = (512, 512)
"""The padded batch's (height, width): level ``pk`` is ``PADDED / 2**k`` pixels."""


def _boxes_in(height, width, count, seed, max_side):
    """``Tensor[count, 4]`` float64 ``(x1, y1, x2, y2)`` inside an image, sides up to max_side."""
    gen = torch.Generator().manual_seed(seed)
    size = torch.tensor([width, height], dtype=torch.float64)
    wh = (torch.rand(count, 2, generator=gen, dtype=torch.float64) * max_side + 1).minimum(size)
    xy = torch.rand(count, 2, generator=gen, dtype=torch.float64) * (size - wh)
    return torch.cat([xy, xy + wh], dim=1)


def _features(names, channels=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return OrderedDict(
        (
            name,
            torch.randn(
                2, channels, PADDED[0] // stride, PADDED[1] // stride, generator=gen,
                dtype=torch.float64,
            ).requires_grad_(),
        )
        for name, stride in LEVELS.items()
        if name in names
    )  # fmt: skip


def _values_and_grads(output, inputs):
    """``output`` and the gradients of a fixed random weighting of it w.r.t. ``inputs``."""
    weights = torch.randn(
        output.shape, generator=torch.Generator().manual_seed(9), dtype=output.dtype
    )
    grads = torch.autograd.grad((output * weights).sum(), inputs, allow_unused=True)
    return output.detach(), [
        torch.zeros_like(x) if g is None else g for x, g in zip(inputs, grads, strict=True)
    ]


def _assert_same_pooling(ours, theirs, inputs):
    got, got_grads = _values_and_grads(ours, inputs)
    want, want_grads = _values_and_grads(theirs, inputs)
    assert got.shape == want.shape and got.dtype == want.dtype
    torch.testing.assert_close(got, want)
    for got_grad, want_grad in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(got_grad, want_grad)


def _single_level_case():
    features = torch.randn(
        2, 4, 32, 40, generator=torch.Generator().manual_seed(1), dtype=torch.float64
    ).requires_grad_()
    per_image = [
        _boxes_in(128, 160, 6, seed=2, max_side=90),
        _boxes_in(128, 160, 3, seed=3, max_side=90),
    ]
    return features, per_image


def _as_rois(per_image):
    return torch.cat(
        [torch.cat([torch.full_like(b[:, :1], i), b], 1) for i, b in enumerate(per_image)]
    )


@pytest.mark.parametrize("boxes_as", ["rois", "list"])
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 2])
def test_roi_align_module_matches_torchvision(boxes_as, aligned, sampling_ratio):
    features, per_image = _single_level_case()
    boxes = _as_rois(per_image) if boxes_as == "rois" else per_image
    args = ((7, 5), 0.25, sampling_ratio, aligned)
    _assert_same_pooling(
        cv.RoIAlign(*args)(features, boxes), tv.RoIAlign(*args)(features, boxes), [features]
    )


@pytest.mark.parametrize("boxes_as", ["rois", "list"])
@pytest.mark.parametrize("output_size", [3, (4, 6)])
def test_roi_pool_module_matches_torchvision(boxes_as, output_size):
    features, per_image = _single_level_case()
    boxes = _as_rois(per_image) if boxes_as == "rois" else per_image
    _assert_same_pooling(
        cv.RoIPool(output_size, 0.25)(features, boxes),
        tv.RoIPool(output_size, 0.25)(features, boxes),
        [features],
    )


@pytest.mark.parametrize(
    "names, canonical",
    [
        (["p3"], {}),  # one level: plain RoI align at that level's inferred scale
        (["p2", "p3", "p4", "p5"], {}),
        (["p2", "p3", "p4", "p5"], {"canonical_scale": 160, "canonical_level": 5}),
        (["p3", "p4", "p5"], {}),  # a subset: the other entries of the dict are ignored
    ],
)
@pytest.mark.parametrize("sampling_ratio", [-1, 2])
def test_multiscale_roi_align_module_matches_torchvision(names, canonical, sampling_ratio):
    features = _features(LEVELS)  # every level in the dict, only ``names`` pooled
    # Two images of different sizes padded to PADDED; boxes from tiny to image-sized (the
    # whole first image is the one box that reads p5 at the default canonical level).
    image_shapes = [(512, 400), (384, 512)]
    whole_and_tiny = torch.tensor([[0.0, 0, 400, 512], [10, 10, 14, 16]], dtype=torch.float64)
    boxes = [
        torch.cat([whole_and_tiny, _boxes_in(*image_shapes[0], 40, seed=4, max_side=380)]),
        _boxes_in(*image_shapes[1], 25, seed=5, max_side=380),
    ]
    args = (names, (7, 6), sampling_ratio)
    ours = cv.MultiScaleRoIAlign(*args, **canonical)(features, boxes, image_shapes)
    theirs = tv.MultiScaleRoIAlign(*args, **canonical)(features, boxes, image_shapes)
    _assert_same_pooling(ours, theirs, list(features.values()))
    strides = [LEVELS[name] for name in names]
    levels = cv.fpn_levels(
        torch.cat(boxes),
        strides[0].bit_length() - 1,
        strides[-1].bit_length() - 1,
        canonical.get("canonical_scale", 224),
        canonical.get("canonical_level", 4),
    )
    assert len(set(levels.tolist())) == len(names)  # the boxes really reach every level


@pytest.mark.parametrize("counts", [(0, 0), (0, 4)])
@pytest.mark.parametrize("names", [["p2"], list(LEVELS)])
def test_multiscale_roi_align_module_with_empty_boxes_matches_torchvision(counts, names):
    features = _features(names)
    image_shapes = [PADDED, PADDED]
    boxes = [_boxes_in(*PADDED, count, seed=6 + i, max_side=150) for i, count in enumerate(counts)]
    args = (names, 5, 2)
    ours = cv.MultiScaleRoIAlign(*args)(features, boxes, image_shapes)
    theirs = tv.MultiScaleRoIAlign(*args)(features, boxes, image_shapes)
    assert ours.shape == (sum(counts), 3, 5, 5)
    _assert_same_pooling(ours, theirs, list(features.values()))


def test_feature_strides_by_hand():
    features = [torch.zeros(1, 1, 64, 50), torch.zeros(1, 1, 32, 25), torch.zeros(1, 1, 512, 400)]
    # The tallest image (250 px, padded to 256 px of features at stride 4) is the reference; a
    # feature map taller than the image has a stride below 1.
    assert feature_strides(features, [(250, 200), (180, 190)]) == [4.0, 8.0, 0.5]
    with pytest.raises(BoxError, match="image_shapes"):
        feature_strides(features, [])
    with pytest.raises(BoxError, match="no feature map named"):
        cv.MultiScaleRoIAlign(["p6"], 7, 2)({"p2": features[0]}, [torch.zeros(0, 4)], [(512, 400)])


def test_module_reprs_and_signatures_match_torchvision():
    pairs = [
        ((7, 7), 0.25),
        ([3, 3], 1.0),
        (5, 0.125),
    ]
    for output_size, scale in pairs:
        assert repr(cv.RoIPool(output_size, scale)) == repr(tv.RoIPool(output_size, scale))
        for ratio, aligned in [(-1, False), (2, True)]:
            args = (output_size, scale, ratio, aligned)
            assert repr(cv.RoIAlign(*args)) == repr(tv.RoIAlign(*args))
    for names, size in [(["0"], (7, 7)), (["feat1", "feat3"], 3), (["p2", "p3"], [14, 14])]:
        ours = cv.MultiScaleRoIAlign(names, size, 2, canonical_scale=112, canonical_level=3)
        theirs = tv.MultiScaleRoIAlign(names, size, 2, canonical_scale=112, canonical_level=3)
        assert repr(ours) == repr(theirs)
        assert (ours.output_size, ours.canonical_scale, ours.canonical_level) == (
            theirs.output_size, theirs.canonical_scale, theirs.canonical_level
        )  # fmt: skip
    for name in ["RoIAlign", "RoIPool", "MultiScaleRoIAlign"]:
        for method in ["__init__", "forward"]:
            ours = inspect.signature(getattr(getattr(cv, name), method)).parameters
            theirs = inspect.signature(getattr(getattr(tv, name), method)).parameters
            assert [(p.name, p.kind, p.default) for p in ours.values()] == [
                (p.name, p.kind, p.default) for p in theirs.values()
            ], (name, method)


def test_modules_trace_with_torch_fx_as_one_call():
    features, per_image = _single_level_case()
    rois = _as_rois(per_image)
    for module in [cv.RoIAlign(5, 0.25, 2, True), cv.RoIPool(4, 0.25)]:
        graph = torch.fx.symbolic_trace(module)
        assert [node.op for node in graph.graph.nodes] == ["placeholder"] * 2 + [
            "call_function",
            "output",
        ]
        torch.testing.assert_close(graph(features, rois), module(features, rois))
    pooler = cv.MultiScaleRoIAlign(["p2", "p3"], 5, 2)
    graph = torch.fx.symbolic_trace(pooler)
    levels = _features(["p2", "p3"])
    boxes = [
        _boxes_in(*PADDED, 10, seed=8, max_side=200),
        _boxes_in(*PADDED, 3, seed=9, max_side=40),
    ]
    torch.testing.assert_close(
        graph(levels, boxes, [PADDED] * 2), pooler(levels, boxes, [PADDED] * 2)
    )
