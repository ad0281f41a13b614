"""Faster R-CNN through ONNX with a dynamic batch and NMS in the graph.

Exported at batch 2, the file runs at batch 1, 3 and 5 on images of different content, one of
which has no detection: each image's detections equal the torch model's eval output for that
image alone (torchvision's two-stage export fails exactly here: vision #8937, #2311, #2309).
The runtime's torch-free ``Detector`` gives the same detections as ``cvkit.load`` on the
``.pt`` checkpoint.
"""

import dataclasses

import numpy as np
import onnx
import pytest
import torch

import cvkit
from cvkit.config import config_to_dict, load_config
from cvkit.config.export import ExportConfig
from cvkit.engine.checkpoint import save_checkpoint
from cvkit.export.onnx import export_model, metadata_from_config
from cvkit.models.build import build_model
from cvkit.runtime import Detector
from cvkit.runtime.session import OnnxModel

SIZE = 96
CLASSES = ["circle", "rectangle", "triangle"]


@pytest.fixture(scope="module")
def faster_rcnn():
    config = load_config(
        None,
        [
            "task=detect",
            "model.name=faster_rcnn",
            "model.backbone=resnet18_tiny",
            "model.out_features=[layer2,layer3,layer4]",
            "model.faster_rcnn.fpn_channels=16",
            "model.faster_rcnn.representation_size=32",
            "model.faster_rcnn.rpn.anchor_sizes=[[16],[32],[64],[128]]",
            "model.faster_rcnn.rpn.pre_nms_top_n_test=200",
            "model.faster_rcnn.rpn.post_nms_top_n_test=50",
            "model.faster_rcnn.topk_candidates=100",
            f"data.image_size={SIZE}",
            "eval.max_det=20",
        ],
    )
    torch.manual_seed(0)
    return build_model(config, len(CLASSES)).eval(), config


def _images(count: int) -> torch.Tensor:
    """``count`` normalized images of different content: noise at different scales and
    offsets, so their detections differ."""
    generator = torch.Generator().manual_seed(count)
    scales = torch.linspace(0.2, 2.0, count)[:, None, None, None]
    offsets = torch.linspace(-1.0, 1.0, count)[:, None, None, None]
    return torch.randn(count, 3, SIZE, SIZE, generator=generator) * scales + offsets


def _alone(model, images, threshold):
    """Torch's detections of each image run alone, above ``threshold``."""
    model.inference = model.inference.model_copy(update={"score_threshold": threshold})
    with torch.no_grad():
        return [model(image[None])[0] for image in images]


def test_exported_at_batch_2_each_image_equals_torch_alone_at_batch_1_3_5(faster_rcnn, tmp_path):
    model, config = faster_rcnn
    images = _images(5)
    with torch.no_grad():
        best = [float(model(image[None])[0].scores.max()) for image in images]
    # between the lowest image's best score and the next: that image has no detection
    low, next_low = sorted(best)[:2]
    threshold = (low + next_low) / 2
    metadata = dataclasses.replace(metadata_from_config(config, CLASSES), score_threshold=threshold)
    path = tmp_path / "faster_rcnn.onnx"
    result = export_model(model, path, metadata, ExportConfig(dynamic=True), batch_size=2)
    assert result.differences["boxes"] <= 1e-4 and result.differences["scores"] <= 1e-5
    graph = onnx.load(str(path)).graph
    assert sum(node.op_type == "NonMaxSuppression" for node in graph.node) == 2  # RPN + final
    expected = _alone(model, images, threshold)
    assert sum(len(e) == 0 for e in expected) == 1 and all(len(e) for e in expected if len(e))
    session = OnnxModel(path, providers="cpu")
    for count in (1, 3, 5):
        chosen = list(range(5))[-count:] if count != 3 else [3, 0, best.index(low)]
        outputs = session.run(images[chosen].numpy())
        boxes, scores, labels, num_dets = (
            outputs[name] for name in ("boxes", "scores", "labels", "num_dets")
        )
        for row, index in enumerate(chosen):
            want = expected[index]
            n = int(num_dets[row])
            assert n == len(want), (count, index)
            np.testing.assert_array_equal(labels[row, :n], want.labels.numpy())
            np.testing.assert_allclose(scores[row, :n], want.scores.numpy(), atol=1e-5)
            np.testing.assert_allclose(boxes[row, :n], want.boxes.numpy(), atol=1e-3)
            assert np.all(labels[row, n:] == -1) and np.all(scores[row, n:] == 0)


def test_runtime_detector_equals_the_checkpoint_predictor(faster_rcnn, tmp_path):
    model, config = faster_rcnn
    checkpoint = {"model": model.state_dict(), "config": config_to_dict(config), "ema": None}
    weights = save_checkpoint({**checkpoint, "classes": CLASSES}, tmp_path / "frcnn.pt")
    path = tmp_path / "frcnn.onnx"
    export_model(model, path, metadata_from_config(config, CLASSES), ExportConfig(dynamic=True))
    rng = np.random.default_rng(0)
    photos = [rng.integers(0, 256, (SIZE, SIZE, 3), np.uint8) for _ in range(3)]
    runtime = Detector(path, providers="cpu", batch_size=3).predict(photos)
    reference = cvkit.load(weights, device="cpu").predict(photos)
    for got, want in zip(runtime, reference, strict=True):
        assert len(got.labels) == len(want.labels) > 0
        np.testing.assert_array_equal(got.labels, want.labels)
        np.testing.assert_allclose(got.scores, want.scores, atol=1e-5)
        np.testing.assert_allclose(got.boxes, want.boxes, atol=1e-2)
