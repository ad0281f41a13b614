"""``cvkit.load``: a ``.pt`` checkpoint and its ``.onnx`` give matching typed results."""

import numpy as np

import cvkit
from cvkit.export.commands import export_checkpoint
from cvkit.runtime import Detections


def test_pt_and_onnx_give_matching_detections(tiny_ssd_weights):
    weights = tiny_ssd_weights
    onnx_path = export_checkpoint(weights).path
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, shape, np.uint8) for shape in [(64, 64, 3), (90, 50, 3)]]
    pt, onnx = cvkit.load(weights, "cpu"), cvkit.load(onnx_path, "cpu")
    single = pt.predict(images[0])
    assert isinstance(single, Detections) and single.orig_size == (64, 64)
    for a, b in zip(pt.predict(images), onnx.predict(images), strict=True):
        assert isinstance(a, Detections) and isinstance(b, Detections)
        assert len(a) > 0 and a.names == b.names
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-4)
        np.testing.assert_allclose(a.boxes, b.boxes, atol=0.02)
        assert a.orig_size == b.orig_size
        assert a.draw(np.zeros((*a.orig_size, 3), np.uint8)).shape == (*a.orig_size, 3)
        assert a.to_dict()["names"] == a.names
