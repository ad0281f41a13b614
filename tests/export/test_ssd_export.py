"""SSD through ONNX: with and without NMS in the graph, static and dynamic batch.

Reference: the torch SSD's eval forward (candidates + class-aware NMS) on the runtime's own
pre-processed batch. Tolerances (issue 7): boxes within 1e-3 of the input size, scores within
1e-4, labels equal, for batch 1 and batch 4 from one dynamic file.
"""

import numpy as np
import onnx
import pytest
import torch

from cvkit.config import load_config
from cvkit.config.export import ExportConfig
from cvkit.export.onnx import export_model, metadata_from_config
from cvkit.models.build import build_model
from cvkit.runtime import Detector

SIZE = 96
CLASSES = ["circle", "rectangle", "triangle"]


@pytest.fixture(scope="module")
def ssd():
    config = load_config(
        None,
        [
            "task=detect",
            "model.name=ssd",
            "model.backbone=resnet18_tiny",
            f"data.image_size={SIZE}",
            "model.ssd.extra_channels=32",
            "model.ssd.topk_candidates=200",
            "eval.max_det=50",
        ],
    )
    torch.manual_seed(0)
    return build_model(config, len(CLASSES)).eval(), config


def _images(count):
    """Square images: no letterbox padding, whose constant pixels would tie anchor scores."""
    rng = np.random.default_rng(count)
    return [rng.integers(0, 256, (side, side, 3), np.uint8) for side in (96, 150, 64, 200)[:count]]


def _same_as_torch(model, detector, images):
    batch, geometries = detector.preprocess(images)
    with torch.no_grad():
        expected = model(torch.from_numpy(batch))
    got = detector.predict(images)
    for detections, reference, geometry in zip(got, expected, geometries, strict=True):
        boxes = reference.boxes.numpy() / geometry.scale[0]
        assert len(detections.labels) == len(reference.labels) > 0
        np.testing.assert_array_equal(detections.labels, reference.labels.numpy())
        np.testing.assert_allclose(detections.scores, reference.scores.numpy(), atol=1e-4)
        side = geometry.orig_size[0]
        assert np.abs(detections.boxes - boxes).max() <= 1e-3 * side


@pytest.mark.parametrize("nms", [True, False], ids=["nms", "no-nms"])
def test_dynamic_export_matches_torch_for_batch_1_and_4(ssd, tmp_path, nms):
    model, config = ssd
    path = tmp_path / "ssd.onnx"
    result = export_model(
        model, path, metadata_from_config(config, CLASSES), ExportConfig(dynamic=True, nms=nms)
    )
    assert result.differences["boxes"] <= 1e-3 and result.differences["scores"] <= 1e-4
    has_nms = any(n.op_type == "NonMaxSuppression" for n in onnx.load(str(path)).graph.node)
    assert has_nms == nms
    detector = Detector(path, providers="cpu", batch_size=4)
    assert detector.metadata.nms_in_graph == nms and detector.metadata.topk_candidates == 200
    for count in (1, 4):
        _same_as_torch(model, detector, _images(count))


@pytest.mark.parametrize("nms", [True, False], ids=["nms", "no-nms"])
def test_static_export_matches_torch(ssd, tmp_path, nms):
    model, config = ssd
    path = tmp_path / "ssd_static.onnx"
    export_model(model, path, metadata_from_config(config, CLASSES), ExportConfig(nms=nms))
    detector = Detector(path, providers="cpu")
    assert detector.model.input_shape == [1, 3, SIZE, SIZE]
    _same_as_torch(model, detector, _images(2))
