"""NMS family: same kept indices as torchvision, greedy invariants, soft/DIoU references, export."""

import importlib
import math
import warnings

import numpy as np
import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st

from cvkit.ops.boxes import BoxError
from cvkit.ops.iou import box_iou, distance_box_iou

# The package re-exports the function ``nms``, which hides the module of the same name.
cv = importlib.import_module("cvkit.ops.nms")


def _clustered(n, seed, clusters=20):
    """Many near-duplicate boxes around a few centres (deep suppression chains)."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.rand(clusters, 2, generator=gen) * 500
    pick = torch.randint(0, clusters, (n,), generator=gen)
    xy = centres[pick] + torch.randn(n, 2, generator=gen) * 8
    wh = 60 + torch.randn(n, 2, generator=gen) * 6
    return torch.cat([xy, xy + wh.abs()], dim=1)


def _scores(n, seed, ties=False):
    gen = torch.Generator().manual_seed(seed)
    if ties:
        return torch.randint(0, 5, (n,), generator=gen).float() / 4
    return (torch.randperm(n, generator=gen).float() + 1) / n  # distinct scores


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 0.7, 1.0])
def test_nms_equals_torchvision(make_boxes, threshold):
    cases = [
        (make_boxes(1000, seed=1), _scores(1000, 1)),
        (make_boxes(3000, seed=2, extent=400), _scores(3000, 2)),
        (_clustered(800, seed=3), _scores(800, 3)),
        (_clustered(600, seed=4), _scores(600, 4, ties=True)),
        (make_boxes(500, seed=5, extent=1e7, max_size=5e5), _scores(500, 5)),
        (make_boxes(500, seed=6).double(), _scores(500, 6).double()),
    ]
    for boxes, scores in cases:
        assert torch.equal(
            cv.nms(boxes, scores, threshold), torchvision.ops.nms(boxes, scores, threshold)
        )


def test_nms_special_boxes_equal_torchvision(make_boxes):
    boxes = make_boxes(300, seed=7, extent=200)
    boxes[10:30] = boxes[0]  # identical boxes
    boxes[30:40, 2:] = boxes[30:40, :2]  # zero area
    boxes[40:45, 2] = boxes[40:45, 0] - 5  # inverted
    boxes[45] = torch.tensor([-1e6, -1e6, 1e6, 1e6])  # huge
    scores = _scores(300, 7, ties=True)
    for threshold in (0.0, 0.5):
        assert torch.equal(
            cv.nms(boxes, scores, threshold), torchvision.ops.nms(boxes, scores, threshold)
        )
    boxes[50, 0] = math.nan
    boxes[51, 2:] = math.inf
    boxes[52, :2] = -math.inf
    boxes[53] = torch.tensor([-math.inf, 0, math.inf, 0])
    boxes[54:56] = torch.tensor([0, 0, math.inf, math.inf])
    for threshold in (0.0, 0.5):
        expected = torchvision.ops.nms(boxes, scores, threshold)
        assert torch.equal(cv.nms(boxes, scores, threshold), expected)
    assert cv.nms(boxes[:0], scores[:0], 0.5).shape == (0,)


def test_nms_threshold_is_compared_like_torchvision():
    # IoU of these boxes is float32(0.6), which lies above the float64 number 0.6: torchvision
    # suppresses (float32 IoU > float64 0.6); comparing in float32 would keep both boxes.
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 6.0]])
    iou = box_iou(boxes[:1], boxes[1:])[0, 0]
    assert float(iou) > 0.6 and not bool(iou > 0.6)
    scores = torch.tensor([0.9, 0.8])
    assert torchvision.ops.nms(boxes, scores, 0.6).tolist() == [0]
    assert cv.nms(boxes, scores, 0.6).tolist() == [0]


def test_nms_accepts_boxes_that_require_grad(make_boxes):
    boxes = make_boxes(200, seed=13).requires_grad_()
    scores = _scores(200, 13).requires_grad_()
    idxs = torch.arange(200) % 3
    expected = torchvision.ops.nms(boxes, scores, 0.5)
    assert torch.equal(cv.nms(boxes, scores, 0.5), expected)
    assert torch.equal(
        cv.batched_nms(boxes, scores, idxs, 0.5),
        torchvision.ops.batched_nms(boxes, scores, idxs, 0.5),
    )
    keep, updated = cv.soft_nms(boxes, scores)
    assert not updated.requires_grad and len(keep) > 0


def test_long_suppression_chain_takes_the_exact_fallback():
    # Boxes shifted by a third of their width overlap only their neighbours (IoU 0.5): each
    # decision depends on the previous one, longer than the vectorized fixed point runs.
    n = 4 * cv._MAX_SWEEPS
    x = torch.arange(n, dtype=torch.float32) * 10
    boxes = torch.stack([x, torch.zeros(n), x + 30, torch.full((n,), 30.0)], dim=1)
    scores = torch.linspace(1, 0.1, n)
    keep = cv.nms(boxes, scores, 0.45)
    assert torch.equal(keep, torchvision.ops.nms(boxes, scores, 0.45))
    assert keep.tolist() == list(range(0, n, 2))


def test_batched_nms_equals_torchvision(make_boxes):
    for n, classes in ((300, 5), (10_000, 20)):  # torchvision's two code paths
        boxes = make_boxes(n, seed=n)
        scores = _scores(n, n)
        idxs = torch.randint(0, classes, (n,), generator=torch.Generator().manual_seed(n))
        expected = torchvision.ops.batched_nms(boxes, scores, idxs, 0.5)
        assert torch.equal(cv.batched_nms(boxes, scores, idxs, 0.5), expected)
    with pytest.raises(BoxError, match="idxs"):
        cv.batched_nms(boxes, scores, idxs[:5], 0.5)


boxes_strategy = st.lists(
    st.tuples(
        st.floats(0, 100, width=32),
        st.floats(0, 100, width=32),
        st.floats(1, 60, width=32),
        st.floats(1, 60, width=32),
        st.floats(0, 1, width=32),
    ),
    min_size=1,
    max_size=40,
)


def _boxes_scores(rows):
    t = torch.tensor(rows, dtype=torch.float32)
    return torch.cat([t[:, :2], t[:, :2] + t[:, 2:4]], dim=1), t[:, 4]


@settings(max_examples=40, deadline=None)
@given(boxes_strategy, st.floats(0.05, 0.95))
def test_nms_greedy_invariants(rows, threshold):
    boxes, scores = _boxes_scores(rows)
    keep = cv.nms(boxes, scores, threshold)
    iou = box_iou(boxes, boxes)
    kept = iou[keep][:, keep]
    assert bool((kept.fill_diagonal_(0) <= threshold).all())
    assert bool((scores[keep][:-1] >= scores[keep][1:]).all())
    dropped = torch.ones(len(rows), dtype=torch.bool)
    dropped[keep] = False
    for j in torch.nonzero(dropped).flatten().tolist():
        assert bool(((iou[keep, j] > threshold) & (scores[keep] >= scores[j])).any())


def _reference_greedy(overlap, scores, threshold):
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))
    keep, suppressed = [], set()
    for position, i in enumerate(order):
        if i in suppressed:
            continue
        keep.append(i)
        suppressed.update(j for j in order[position + 1 :] if float(overlap[i, j]) > threshold)
    return keep


def test_diou_nms_matches_a_reference_loop(make_boxes):
    boxes = _clustered(300, seed=8)
    scores = _scores(300, 8)
    expected = _reference_greedy(distance_box_iou(boxes, boxes), scores, 0.4)
    assert cv.diou_nms(boxes, scores, 0.4).tolist() == expected
    # DIoU keeps boxes plain NMS would drop (centres apart), never fewer.
    assert len(expected) >= len(cv.nms(boxes, scores, 0.4))


def _reference_soft_nms(boxes, scores, method, sigma, threshold, score_threshold):
    iou = box_iou(boxes, boxes).nan_to_num(0).tolist()
    current = scores.tolist()
    alive = [s >= score_threshold for s in current]
    keep, kept_scores = [], []
    while any(alive):
        best = max((i for i in range(len(current)) if alive[i]), key=lambda i: (current[i], -i))
        keep.append(best)
        kept_scores.append(current[best])
        alive[best] = False
        for j in range(len(current)):
            if alive[j]:
                o = iou[best][j]
                if method == "gaussian":
                    current[j] *= math.exp(-(o * o) / sigma)
                elif o > threshold:
                    current[j] *= 1 - o
                alive[j] = current[j] >= score_threshold
    return keep, kept_scores


@pytest.mark.parametrize("method", ["gaussian", "linear"])
def test_soft_nms_matches_a_reference_loop(method):
    boxes = _clustered(120, seed=9, clusters=6).double()
    scores = _scores(120, 9).double()
    keep, updated = cv.soft_nms(boxes, scores, method=method, sigma=0.5, iou_threshold=0.3)
    expected_keep, expected_scores = _reference_soft_nms(boxes, scores, method, 0.5, 0.3, 0.001)
    assert keep.tolist() == expected_keep
    np.testing.assert_allclose(updated.numpy(), expected_scores, rtol=1e-12)


def test_soft_nms_decay_by_hand():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 5.0]])  # IoU 0.5
    scores = torch.tensor([0.9, 0.8])
    _, gaussian = cv.soft_nms(boxes, scores, method="gaussian", sigma=0.5)
    torch.testing.assert_close(gaussian, torch.tensor([0.9, 0.8 * math.exp(-0.25 / 0.5)]))
    _, linear = cv.soft_nms(boxes, scores, method="linear", iou_threshold=0.3)
    torch.testing.assert_close(linear, torch.tensor([0.9, 0.4]))


@settings(max_examples=30, deadline=None)
@given(boxes_strategy)
def test_soft_nms_without_decay_is_a_score_sort(rows):
    boxes, scores = _boxes_scores(rows)
    order = torch.sort(scores, descending=True, stable=True)
    for kwargs in (
        {"method": "gaussian", "sigma": math.inf},
        {"method": "linear", "iou_threshold": 1.0},
    ):
        keep, updated = cv.soft_nms(boxes, scores, score_threshold=0.0, **kwargs)
        assert torch.equal(keep, order.indices)
        assert torch.equal(updated, order.values)


def _batch(batch, n, classes, seed):
    gen = torch.Generator().manual_seed(seed)
    xy = torch.rand(batch, n, 2, generator=gen) * 300
    boxes = torch.cat([xy, xy + torch.rand(batch, n, 2, generator=gen) * 80 + 1], dim=-1)
    return boxes, torch.rand(batch, n, classes, generator=gen)


def test_batched_nms_padded_equals_per_image_batched_nms():
    boxes, scores = _batch(3, 200, 4, seed=10)
    out_boxes, out_scores, out_labels, num_dets = cv.batched_nms_padded(
        boxes, scores, iou_threshold=0.5, score_threshold=0.6, max_detections=50
    )
    assert out_boxes.shape == (3, 50, 4) and out_labels.dtype == torch.int64
    for b in range(3):
        cand_box, cand_class = torch.nonzero(scores[b] > 0.6, as_tuple=True)
        keep = cv.batched_nms(boxes[b, cand_box], scores[b, cand_box, cand_class], cand_class, 0.5)[
            :50
        ]
        k = len(keep)
        assert int(num_dets[b]) == k
        assert torch.equal(out_boxes[b, :k], boxes[b, cand_box[keep]])
        assert torch.equal(out_scores[b, :k], scores[b, cand_box[keep], cand_class[keep]])
        assert torch.equal(out_labels[b, :k], cand_class[keep])
        assert bool((out_labels[b, k:] == -1).all() and (out_scores[b, k:] == 0).all())
    transposed = cv.batched_nms_padded(
        boxes, scores.transpose(1, 2), 0.5, 0.6, 50, scores_layout="bcn"
    )
    for ours, theirs in zip(transposed, (out_boxes, out_scores, out_labels, num_dets), strict=True):
        assert torch.equal(ours, theirs)
    with pytest.raises(BoxError, match="layout"):
        cv.batched_nms_padded(boxes, scores[:, :10], 0.5, 0.6, 50)


class _Postprocess(torch.nn.Module):
    def forward(self, boxes, scores):
        return cv.batched_nms_padded(boxes, scores, 0.5, 0.3, 30)


def test_batched_nms_padded_exports_to_onnx_with_dynamic_batch(tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    path = tmp_path / "nms.onnx"
    dynamic = {0: "batch", 1: "boxes"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and exporter deprecation chatter
        torch.onnx.export(
            _Postprocess(),
            _batch(2, 40, 3, seed=11),
            path,
            dynamo=False,
            opset_version=17,
            input_names=["boxes", "scores"],
            output_names=["det_boxes", "det_scores", "det_labels", "num_dets"],
            dynamic_axes={
                "boxes": dynamic,
                "scores": dynamic,
                **{k: {0: "batch"} for k in ("det_boxes", "det_scores", "det_labels", "num_dets")},
            },
        )
    assert "NonMaxSuppression" in {node.op_type for node in onnx.load(str(path)).graph.node}
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch, n in ((1, 150), (4, 90)):
        boxes, scores = _batch(batch, n, 3, seed=batch)
        expected = _Postprocess()(boxes, scores)
        got = session.run(None, {"boxes": boxes.numpy(), "scores": scores.numpy()})
        assert int(expected[3].min()) > 0
        for ours, theirs in zip(expected, got, strict=True):
            np.testing.assert_array_equal(ours.numpy(), theirs)


@pytest.mark.gpu
def test_nms_cuda_equals_cpu(make_boxes, cuda):
    boxes, scores = make_boxes(2000, seed=12), _scores(2000, 12)
    idxs = torch.randint(0, 7, (2000,), generator=torch.Generator().manual_seed(12))
    assert torch.equal(
        cv.nms(boxes.to(cuda), scores.to(cuda), 0.5).cpu(), cv.nms(boxes, scores, 0.5)
    )
    assert torch.equal(
        cv.batched_nms(boxes.to(cuda), scores.to(cuda), idxs.to(cuda), 0.5).cpu(),
        cv.batched_nms(boxes, scores, idxs, 0.5),
    )
