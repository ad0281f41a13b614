"""The numpy box ops give exactly the torch ops' results, and import no torch."""

import math
import subprocess
import sys

import numpy as np
import pytest

from cvkit.runtime import ops_np

torch = pytest.importorskip("torch")
cvops = pytest.importorskip("cvkit.ops")


def _boxes(n, seed, extent=1000.0, max_size=100.0):
    rng = np.random.default_rng(seed)
    xy = rng.random((n, 2), dtype=np.float32) * np.float32(extent)
    wh = rng.random((n, 2), dtype=np.float32) * np.float32(max_size) + 1
    return np.concatenate([xy, xy + wh], axis=1)


def _distinct_scores(n, seed):
    return ((np.random.default_rng(seed).permutation(n) + 1) / n).astype(np.float32)


def test_module_imports_without_torch():
    code = "import sys, cvkit.runtime.ops_np; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_box_iou_is_bit_identical_to_torch():
    boxes1, boxes2 = _boxes(400, 1), _boxes(300, 2)
    boxes1[5:9] = boxes1[0]
    boxes1[10:12, 2:] = boxes1[10:12, :2]  # zero area: NaN against other zero-area boxes
    boxes2[:2] = boxes1[10:12]
    expected = cvops.box_iou(torch.from_numpy(boxes1), torch.from_numpy(boxes2)).numpy()
    np.testing.assert_array_equal(ops_np.box_iou(boxes1, boxes2), expected)


@pytest.mark.parametrize("threshold", [0.0, 0.45, 0.6, 0.7])
def test_nms_and_batched_nms_equal_torch(threshold):
    rng = np.random.default_rng(3)
    for n, extent in ((1000, 1000.0), (3000, 300.0)):
        boxes, scores = _boxes(n, n, extent), _distinct_scores(n, n)
        boxes[:20] = boxes[20]  # duplicates
        scores[30:60] = scores[60]  # ties
        boxes[70, 1] = math.nan
        boxes[71, 2:] = math.inf
        idxs = rng.integers(0, 7, n)
        tb, ts = torch.from_numpy(boxes), torch.from_numpy(scores)
        np.testing.assert_array_equal(
            ops_np.nms(boxes, scores, threshold), cvops.nms(tb, ts, threshold).numpy()
        )
        ours = ops_np.batched_nms(boxes, scores, idxs, threshold)
        theirs = cvops.batched_nms(tb, ts, torch.from_numpy(idxs), threshold).numpy()
        # the same boxes kept in the same score order; above 1000 boxes cvkit.ops orders equal
        # scores as torchvision's unstable sort does, which numpy cannot reproduce
        np.testing.assert_array_equal(np.sort(ours), np.sort(theirs))
        np.testing.assert_array_equal(scores[ours], scores[theirs])
        if n <= 1000:
            np.testing.assert_array_equal(ours, theirs)


def test_nms_edge_cases():
    disjoint = np.array([[0, 0, 1, 1], [2, 2, 3, 3], [5, 5, 6, 6]], np.float32)
    scores = np.array([0.2, 0.9, 0.5], np.float32)
    np.testing.assert_array_equal(ops_np.nms(disjoint, scores, 0.5), [1, 2, 0])
    assert ops_np.nms(disjoint[:0], scores[:0], 0.5).shape == (0,)


def test_multiclass_nms_equals_batched_nms_padded():
    rng = np.random.default_rng(4)
    boxes = _boxes(300, 4, extent=300)
    scores = rng.random((300, 5), dtype=np.float32)
    out = cvops.batched_nms_padded(
        torch.from_numpy(boxes)[None], torch.from_numpy(scores)[None], 0.5, 0.4, 60
    )
    k = int(out[3][0])
    got = ops_np.multiclass_nms(boxes, scores, 0.5, 0.4, 60)
    for ours, theirs in zip(got, (out[0][0, :k], out[1][0, :k], out[2][0, :k]), strict=True):
        np.testing.assert_array_equal(ours, theirs.numpy())


def test_decode_matches_torch():
    anchors = _boxes(500, 5)
    deltas = np.random.default_rng(5).normal(size=(2, 500, 4)).astype(np.float32) * 2
    deltas[0, 0, 2] = 50.0  # clamped before exp
    stds = (0.1, 0.1, 0.2, 0.2)
    expected = cvops.decode_boxes(torch.from_numpy(deltas), torch.from_numpy(anchors), stds=stds)
    got = ops_np.decode_boxes(deltas, anchors, stds=stds)
    assert got.dtype == np.float32
    # exp() of numpy and torch may differ in the last bit; everything else is the same ops.
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-6, atol=1e-4)


def test_bad_shapes_raise_value_errors():
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        ops_np.nms(np.zeros((3, 5), np.float32), np.zeros(3, np.float32), 0.5)
    with pytest.raises(ValueError, match="scores"):
        ops_np.nms(np.zeros((3, 4), np.float32), np.zeros(2, np.float32), 0.5)
