"""``cvkit.load``: a ``.pt`` checkpoint and its ``.onnx`` give matching typed results."""

import numpy as np
import torch

import cvkit
from cvkit.config import config_to_dict, load_config
from cvkit.engine.checkpoint import save_checkpoint
from cvkit.export.commands import export_checkpoint
from cvkit.models.build import build_model
from cvkit.runtime import Detections

CLASSES = ["cat", "dog", "bird"]


def test_pt_and_onnx_give_matching_detections(tmp_path):
    config = load_config(
        None,
        [
            "model.backbone=resnet18_tiny",
            "data.image_size=64",
            "model.ssd.extra_channels=16",
            "eval.score_threshold=0.2",
        ],
    )
    torch.manual_seed(0)
    model = build_model(config, len(CLASSES)).eval()
    checkpoint = {"model": model.state_dict(), "config": config_to_dict(config), "ema": None}
    weights = save_checkpoint({**checkpoint, "classes": CLASSES}, tmp_path / "ssd.pt")
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
