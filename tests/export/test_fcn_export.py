"""FCN through ONNX: logits [B, C, H, W] with dynamic batch, height and width."""

import numpy as np
import torch

from cvkit.config import load_config
from cvkit.config.export import ExportConfig
from cvkit.export.onnx import export_model, metadata_from_config
from cvkit.models.build import build_model
from cvkit.runtime import OnnxModel, Segmenter

CLASSES = ["background", "circle", "rectangle", "triangle"]


def test_fcn_export_matches_torch_at_other_sizes(tmp_path):
    config = load_config(
        None,
        ["task=segment", "model.name=fcn", "model.backbone=resnet18_tiny", "data.image_size=64"],
    )
    torch.manual_seed(0)
    model = build_model(config, len(CLASSES)).eval()
    path = tmp_path / "fcn.onnx"
    export_model(model, path, metadata_from_config(config, CLASSES), ExportConfig(dynamic=True))
    session = OnnxModel(path, "cpu")
    assert session.input_shape == ["batch", 3, "height", "width"]
    batch = np.random.default_rng(0).standard_normal((2, 3, 96, 64), dtype=np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(batch)).numpy()
    got = session.run(batch)["logits"]
    assert got.shape == expected.shape == (2, len(CLASSES), 96, 64)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)
    segmenter = Segmenter(path, providers="cpu")
    image = np.random.default_rng(1).integers(0, 256, (64, 64, 3), np.uint8)
    with torch.no_grad():
        classes = model(torch.from_numpy(segmenter.preprocess([image])[0])).argmax(1)[0].numpy()
    np.testing.assert_array_equal(segmenter.predict(image).mask, classes)
