"""Float16 exports of the two-stage detectors (``cvkit export --half``) on onnxruntime's CPU.

The float16 network keeps its proposals float32 (RoIs read the float16 features in float32),
so a small seeded Faster R-CNN and Mask R-CNN export, and their fp16 files' detections match
the fp32 files' on the same images.

Tolerances: float16 keeps 11 significant bits (relative spacing 2**-10 ~ 1e-3). Box offsets
come out of float16 linear layers with about that relative error and are decoded in float32
with the weights (10, 10, 5, 5), i.e. ~1e-4 of the box side for the centre and ~2e-4 for the
size, on top of the same error in the RPN's proposals: ~0.05 px at most for boxes up to the
96-px input. We allow 0.1 px (about 1e-3 of the input side; measured 0.006 px) and scores
within 2e-3 (measured 3e-4); labels of the top detections must be equal. Mask
probabilities pass six more float16 layers: within 2e-2 (the export's float16 logit
tolerance; measured 1e-2), so a 0/1 mask may differ only where fp32's probability lies that
close to the 0.5 threshold.
"""

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from cvkit.config import load_config
from cvkit.config.export import ExportConfig
from cvkit.errors import ExportError
from cvkit.export.onnx import (
    Tolerances,
    compare_detections,
    export_model,
    match_detections,
    metadata_from_config,
)
from cvkit.models.build import build_model
from cvkit.models.detection.mask_heads import MASK_THRESHOLD
from cvkit.runtime.masks import paste_masks
from cvkit.runtime.metadata import ModelMetadata
from cvkit.runtime.session import OnnxModel

SIZE = 96
CLASSES = ["circle", "rectangle", "triangle"]
CONFIGS = Path(__file__).resolve().parents[2] / "configs"
TOP = 5
BOX_TOLERANCE_PX = 0.1
SCORE_TOLERANCE = 2e-3
MASK_TOLERANCE = 2e-2
DETECT_META = ModelMetadata(task="detect", classes=["a", "b"], input_size=(100, 100))


def _small(name: str):
    options = {
        "fpn_channels": 16,
        "representation_size": 32,
        "rpn.pre_nms_top_n_test": 200,
        "rpn.post_nms_top_n_test": 50,
        "topk_candidates": 100,
    }
    if name == "mask_rcnn":
        options.update({"mask_layers": "[8,8,8,8]", "mask_dim_reduced": 8})
    settings = [f"model.{name}.{key}={value}" for key, value in options.items()]
    config = load_config(
        CONFIGS / f"{name}.yaml", [f"data.image_size={SIZE}", "eval.max_det=20", *settings]
    )
    torch.manual_seed(0)
    return build_model(config, len(CLASSES)).eval(), config


@pytest.mark.parametrize("name", ["faster_rcnn", "mask_rcnn"])
def test_fp16_export_runs_on_cpu_and_matches_the_fp32_export(name, tmp_path):
    model, config = _small(name)
    metadata = metadata_from_config(config, CLASSES)
    fp32, fp16 = tmp_path / "fp32.onnx", tmp_path / "fp16.onnx"
    export_model(model, fp32, metadata, ExportConfig(dynamic=True), batch_size=2, check=False)
    # the built-in check pairs the fp16 file's detections with float32 torch's
    result = export_model(model, fp16, metadata, ExportConfig(dynamic=True, half=True), 2)
    assert result.differences["matched"] >= 0.9
    weights = [t.data_type for t in onnx.load(str(fp16)).graph.initializer if len(t.dims) > 1]
    assert weights and set(weights) == {onnx.TensorProto.FLOAT16}

    images = torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(7)).numpy()
    want = OnnxModel(fp32, "cpu").run(images)
    got = OnnxModel(fp16, "cpu").run(images)
    for index in range(len(images)):
        assert int(got["num_dets"][index]) >= TOP and int(want["num_dets"][index]) >= TOP
        np.testing.assert_array_equal(got["labels"][index, :TOP], want["labels"][index, :TOP])
        boxes = got["boxes"][index, :TOP]
        np.testing.assert_allclose(boxes, want["boxes"][index, :TOP], atol=BOX_TOLERANCE_PX)
        np.testing.assert_allclose(
            got["scores"][index, :TOP], want["scores"][index, :TOP], atol=SCORE_TOLERANCE
        )
        if name == "mask_rcnn":
            pasted = paste_masks(got["masks"][index, :TOP], boxes, (SIZE, SIZE), threshold=None)
            reference = paste_masks(
                want["masks"][index, :TOP], want["boxes"][index, :TOP], (SIZE, SIZE), threshold=None
            )
            np.testing.assert_allclose(pasted, reference, rtol=0, atol=MASK_TOLERANCE)
            # so the 0/1 masks differ only where fp32's probability is that close to 0.5
            decided = np.abs(reference - MASK_THRESHOLD) > MASK_TOLERANCE
            assert (reference[decided] > MASK_THRESHOLD).sum() >= 20
            np.testing.assert_array_equal(
                (pasted > MASK_THRESHOLD)[decided], (reference > MASK_THRESHOLD)[decided]
            )


def test_match_detections_pairs_by_label_box_and_score_in_reference_order():
    ref_boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30]], np.float32)
    ref_scores = np.array([0.9, 0.8, 0.7], np.float32)
    ref_labels = np.array([1, 1, 2])
    # the second reference detection's twin lost its score (0.5): unmatched; the third is
    # found out of order; a box 0.5 px off is too far at 0.1 px
    boxes = np.array([[20, 20, 30, 30], [0, 0, 10, 10.05], [0, 0, 10, 10], [0, 0, 10.5, 10]])
    scores = np.array([0.7, 0.9, 0.5, 0.8])
    labels = np.array([2, 1, 1, 1])
    pairs = match_detections(ref_boxes, ref_scores, ref_labels, boxes, scores, labels, 0.1, 0.01)
    assert pairs == [(0, 1), (2, 0)]
    # another label never pairs, however close the box and score
    shifted = labels + 1
    assert match_detections(ref_boxes, ref_scores, ref_labels, boxes, scores, shifted, 1, 1) == []


def test_matched_comparison_refuses_when_too_few_detections_pair():
    metadata = dataclasses.replace(DETECT_META, nms_in_graph=True)
    tolerances = Tolerances(box=1e-2, score=1e-2, logit=2e-2)
    boxes = np.tile(np.array([[0, 0, 10, 10]], np.float32), (1, 10, 1))
    boxes[0] += np.arange(10, dtype=np.float32)[:, None] * 5
    scores = np.linspace(0.9, 0.5, 10, dtype=np.float32)[None]
    labels = np.zeros((1, 10), np.int64)
    count = np.array([10])
    expected = [boxes, scores, labels, count]
    # one detection of ten changes class: 90% still pair
    relabelled = labels.copy()
    relabelled[0, 3] = 1
    result = compare_detections(
        expected, [boxes, scores, relabelled, count], metadata, tolerances, "f", matched=True
    )
    assert result["matched"] == 0.9 and result["boxes"] == 0.0
    relabelled[0, 4] = 1
    with pytest.raises(ExportError, match="only 8 of 10"):
        compare_detections(
            expected, [boxes, scores, relabelled, count], metadata, tolerances, "f", matched=True
        )
