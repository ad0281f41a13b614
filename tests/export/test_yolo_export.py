"""YOLOv1 and the anchor-free YOLO through ONNX: exported once at batch 2 with a dynamic batch
and NMS in the graph, the file runs at batch 1, 3 and 7, and every image's detections equal
the torch model's eval output for that image run alone (batch 1). One image scores below the
threshold everywhere, so an empty row is checked too."""

import dataclasses

import numpy as np
import onnx
import pytest
import torch

from cvkit.config import load_config
from cvkit.config.export import ExportConfig
from cvkit.export.onnx import export_model, metadata_from_config
from cvkit.models.build import build_model
from cvkit.runtime.session import OnnxModel

SIZE = 64
CLASSES = ["circle", "rectangle", "triangle"]
COUNT = 7


MODELS = {
    "yolov1": [
        "model.out_features=[layer3]",
        "model.yolov1.head_channels=16",
        "model.yolov1.topk_candidates=100",
    ],
    "yolo": ["model.out_features=[layer2,layer3,layer4]", "model.yolo.topk_candidates=100"],
}


@pytest.fixture(scope="module", params=list(MODELS))
def detector(request):
    overrides = MODELS[request.param]
    config = load_config(
        None,
        [
            "task=detect",
            f"model.name={request.param}",
            "model.backbone=resnet18_tiny",
            *overrides,
            f"data.image_size={SIZE}",
            "eval.max_det=10",
        ],
    )
    torch.manual_seed(0)
    return build_model(config, len(CLASSES)).eval(), config


def test_batch_2_export_equals_torch_per_image_at_batch_1_3_7(detector, tmp_path):
    model, config = detector
    generator = torch.Generator().manual_seed(3)
    spread = torch.linspace(0.1, 3.0, COUNT)[:, None, None, None]
    images = torch.randn(COUNT, 3, SIZE, SIZE, generator=generator) * spread
    with torch.no_grad():
        _, scores = model.candidates(images)
    best = scores.flatten(1).max(1).values.sort().values
    threshold = float(best[:2].mean())  # exactly one image keeps nothing
    model.inference = model.inference.model_copy(update={"score_threshold": threshold})
    with torch.no_grad():
        alone = [model(image[None])[0] for image in images]
    assert sum(len(found) == 0 for found in alone) == 1

    metadata = dataclasses.replace(metadata_from_config(config, CLASSES), score_threshold=threshold)
    path = tmp_path / "model.onnx"
    export_model(model, path, metadata, ExportConfig(dynamic=True, nms=True), batch_size=2)
    assert any(node.op_type == "NonMaxSuppression" for node in onnx.load(str(path)).graph.node)
    session = OnnxModel(path, providers="cpu")
    for chosen in ([4], [6, 0, 2], list(range(COUNT))[::-1]):
        outputs = session.run(images[chosen].numpy())
        for row, index in enumerate(chosen):
            want = alone[index]
            kept = int(outputs["num_dets"][row])
            assert kept == len(want), (chosen, index)
            np.testing.assert_array_equal(outputs["labels"][row, :kept], want.labels.numpy())
            np.testing.assert_allclose(outputs["scores"][row, :kept], want.scores, atol=1e-5)
            np.testing.assert_allclose(outputs["boxes"][row, :kept], want.boxes, atol=1e-3)
            assert (outputs["labels"][row, kept:] == -1).all()
