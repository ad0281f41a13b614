"""Mask R-CNN through ONNX with a dynamic batch, NMS in the graph and per-detection masks.

Exported at batch 2, the file runs at batch 1 and 4, one image without detections; each
image's detections equal the torch model's eval output for that image alone, and its
``masks [K, 28, 28]`` pasted into the image by the runtime's numpy paste-back equal torch's
pasted masks to IoU > 0.99 per instance (torchvision's Mask R-CNN export breaks exactly when
the run batch differs from the export batch: vision #2311). The runtime's ``Detector`` gives
the masks of torch's ``Instances.to_original`` in original image pixels.
"""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from cvkit.config import load_config
from cvkit.config.export import ExportConfig
from cvkit.errors import ExportError
from cvkit.export.onnx import export_model, metadata_from_config
from cvkit.models.build import build_model
from cvkit.runtime import Detector
from cvkit.runtime.masks import paste_masks
from cvkit.runtime.session import OnnxModel

SIZE = 96
CLASSES = ["circle", "rectangle", "triangle"]
CONFIG = Path(__file__).resolve().parents[2] / "configs" / "mask_rcnn.yaml"


@pytest.fixture(scope="module")
def mask_rcnn():
    options = {
        "fpn_channels": 16,
        "representation_size": 32,
        "mask_layers": "[8,8,8,8]",
        "mask_dim_reduced": 8,
        "rpn.pre_nms_top_n_test": 200,
        "rpn.post_nms_top_n_test": 50,
        "topk_candidates": 100,
    }
    settings = [f"model.mask_rcnn.{key}={value}" for key, value in options.items()]
    config = load_config(CONFIG, [f"data.image_size={SIZE}", "eval.max_det=20", *settings])
    torch.manual_seed(0)
    return build_model(config, len(CLASSES)).eval(), config


def _noise(count: int) -> torch.Tensor:
    """Normalized noise images at different scales and offsets, so their detections differ."""
    generator = torch.Generator().manual_seed(7)
    scales = torch.linspace(0.2, 2.0, count)[:, None, None, None]
    offsets = torch.linspace(-1.0, 1.0, count)[:, None, None, None]
    return torch.randn(count, 3, SIZE, SIZE, generator=generator) * scales + offsets


def _iou(first: np.ndarray, second: np.ndarray) -> float:
    union = np.logical_or(first, second).sum()
    return 1.0 if union == 0 else float(np.logical_and(first, second).sum() / union)


def test_exported_at_batch_2_masks_equal_torch_at_batch_1_and_4(mask_rcnn, tmp_path):
    model, config = mask_rcnn
    images = _noise(5)
    with torch.no_grad():
        best = [float(model(image[None])[0].scores.max()) for image in images]
    # between the lowest best score among the batch-4 images and the next: one image of that
    # batch has no detection
    low, next_low = sorted(best[1:])[:2]
    threshold = (low + next_low) / 2
    model.inference = model.inference.model_copy(update={"score_threshold": threshold})
    metadata = dataclasses.replace(metadata_from_config(config, CLASSES), score_threshold=threshold)
    assert metadata.mask_size == 28
    path = tmp_path / "mask_rcnn.onnx"
    result = export_model(model, path, metadata, ExportConfig(dynamic=True), batch_size=2)
    assert result.differences["masks"] <= 1e-4
    session = OnnxModel(path, "cpu")
    assert session.metadata.mask_size == 28
    with torch.no_grad():
        alone = [model(image[None])[0] for image in images]
    counts, ious, pixels = [], [], 0
    for group in (images[:1], images[1:]):
        outputs = session.run(group.numpy())
        assert outputs["masks"].shape == (len(group), 20, 28, 28)
        offset = 0 if len(group) == 1 else 1
        for index in range(len(group)):
            want = alone[offset + index]
            count = int(outputs["num_dets"][index])
            counts.append(count)
            assert count == len(want)
            np.testing.assert_array_equal(outputs["labels"][index, :count], want.labels.numpy())
            boxes = outputs["boxes"][index, :count]
            np.testing.assert_allclose(boxes, want.boxes.numpy(), atol=1e-3)
            pasted = paste_masks(outputs["masks"][index, :count], boxes, (SIZE, SIZE))
            reference = (want.masks > 0.5).numpy()
            pixels += int(reference.sum())
            ious += [_iou(mine, theirs) for mine, theirs in zip(pasted, reference, strict=True)]
    assert 0 in counts and sum(counts) > 5 and pixels > 1000
    assert min(ious) > 0.99


def test_masks_without_nms_in_the_graph_are_refused(mask_rcnn, tmp_path):
    model, config = mask_rcnn
    with pytest.raises(ExportError, match="NMS in the graph"):
        export_model(
            model,
            tmp_path / "raw.onnx",
            metadata_from_config(config, CLASSES),
            ExportConfig(nms=False),
        )


def test_runtime_detector_masks_in_original_pixels_match_torch(mask_rcnn, tmp_path):
    """The torch-free ``Detector`` on 120x80 images (stretched to the input) gives the masks of
    torch's ``Instances.to_original``."""
    model, config = mask_rcnn
    model.inference = model.inference.model_copy(update={"score_threshold": 0.05})
    metadata = dataclasses.replace(metadata_from_config(config, CLASSES), score_threshold=0.05)
    path = tmp_path / "mask_rcnn.onnx"
    export_model(model, path, metadata, ExportConfig(dynamic=True), batch_size=2)
    detector = Detector(path, providers="cpu")
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (120, 80, 3), dtype=np.uint8) for _ in range(2)]
    batch, geometries = detector.preprocess(images)
    with torch.no_grad():
        expected = model(torch.from_numpy(batch))
    ious, pixels = [], 0
    for got, want, geometry in zip(detector.predict(images), expected, geometries, strict=True):
        reference = (want.to_original(geometry).masks > 0.5).numpy()
        assert got.masks.shape == reference.shape == (len(want), 120, 80)
        assert got.masks.dtype == bool
        pixels += int(reference.sum())
        ious += [_iou(mine, theirs) for mine, theirs in zip(got.masks, reference, strict=True)]
    assert len(ious) > 5 and pixels > 100
    assert min(ious) > 0.99
