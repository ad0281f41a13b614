"""ONNX export of toy models that follow cvkit's contracts, served by the numpy runtime.

References: the torch model itself on the same pre-processed batch; parity is checked for batch
1 and 4 from one dynamic file, and in a process where importing torch fails.
"""

import dataclasses
import json
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import onnx.numpy_helper
import pytest
import torch

from cvkit.config.export import ExportConfig
from cvkit.errors import ExportError
from cvkit.export.onnx import export_model
from cvkit.runtime import Classifier, Detector, InputError, ModelMetadata, OnnxModel, Segmenter

from .conftest import BLOCK_TORCH

DETECT_META = ModelMetadata(
    task="detect",
    classes=("circle", "square", "triangle"),
    input_size=(64, 64),
    score_threshold=0.3,
    iou_threshold=0.5,
    max_det=20,
)
CLASSIFY_META = ModelMetadata(task="classify", classes=tuple("abcd"), input_size=(32, 32))
SEGMENT_META = ModelMetadata(task="segment", classes=("bg", "fg", "edge"), input_size=(32, 32))


def _images(count: int, seed: int = 0, square: bool = False) -> list[np.ndarray]:
    """Random images; non-square ones get letterbox padding, whose constant pixels give many
    anchors exactly equal scores (so a top-k cut among them is a tie)."""
    rng = np.random.default_rng(seed)
    sizes = [(64, 64), (32, 32), (128, 128)] if square else [(48, 80), (64, 64), (100, 30)]
    return [rng.integers(0, 256, (*sizes[i % 3], 3), dtype=np.uint8) for i in range(count)]


def _torch_detections(model, predictor, images):
    """The torch model's eval forward on the runtime's own pre-processed batch."""
    batch, geometries = predictor.preprocess(images)
    with torch.no_grad():
        outputs = model(torch.from_numpy(batch))
    results = []
    for output, geometry in zip(outputs, geometries, strict=True):
        boxes = output.boxes.numpy()
        sx, sy = geometry.scale
        boxes = (boxes / np.array([sx, sy, sx, sy], np.float32)).clip(0)
        height, width = geometry.orig_size
        boxes[:, 0::2] = boxes[:, 0::2].clip(max=width)
        boxes[:, 1::2] = boxes[:, 1::2].clip(max=height)
        results.append((boxes, output.scores.numpy(), output.labels.numpy()))
    return results


def _canonical(boxes, scores, labels):
    """Detections sorted by score, then label and box: letterbox padding gives anchors equal
    scores, and equal scores may come out of torch and onnxruntime in either order."""
    order = np.lexsort((*np.round(boxes, 2).T[::-1], labels, -np.round(scores, 4)))
    return boxes[order], scores[order], labels[order]


def _assert_same_detections(got, expected, image_size):
    assert len(got) == len(expected)
    for detections, reference in zip(got, expected, strict=True):
        assert len(reference[2]) > 0
        boxes, scores, labels = _canonical(*reference)
        got_boxes, got_scores, got_labels = _canonical(
            detections.boxes, detections.scores, detections.labels
        )
        np.testing.assert_array_equal(got_labels, labels)
        np.testing.assert_allclose(got_scores, scores, atol=1e-4, rtol=0)
        assert np.abs(got_boxes - boxes).max() <= 1e-3 * image_size


@pytest.mark.parametrize("topk", [None, 12])
def test_nms_in_graph_matches_torch_for_batch_1_and_4(toy_detector, tmp_path, topk):
    toy_detector.topk_candidates = topk
    meta = dataclasses.replace(DETECT_META, topk_candidates=topk)
    path = tmp_path / "nms.onnx"
    result = export_model(toy_detector, path, meta, ExportConfig(dynamic=True))
    assert result.differences["boxes"] < 1e-5 and result.differences["scores"] < 1e-5
    graph = onnx.load(str(path)).graph
    assert any(node.op_type == "NonMaxSuppression" for node in graph.node)
    detector = Detector(path, providers="cpu", batch_size=4)
    assert detector.model.output_names == ["boxes", "scores", "labels", "num_dets"]
    for count in (1, 4):
        images = _images(count, square=topk is not None)
        outputs = detector.model.run(detector.preprocess(images)[0])
        assert outputs["boxes"].shape == (count, 20, 4) and outputs["num_dets"].shape == (count,)
        expected = _torch_detections(toy_detector, detector, images)
        _assert_same_detections(detector.predict(images), expected, 64)


@pytest.mark.parametrize("topk", [None, 12])
def test_raw_candidate_export_matches_torch_for_batch_1_and_4(toy_detector, tmp_path, topk):
    toy_detector.topk_candidates = topk
    meta = dataclasses.replace(DETECT_META, topk_candidates=topk)

    path = tmp_path / "raw.onnx"
    result = export_model(toy_detector, path, meta, ExportConfig(dynamic=True, nms=False))
    assert result.differences["boxes"] < 1e-5 and result.differences["scores"] < 1e-5
    detector = Detector(path, providers="cpu", batch_size=4)
    assert detector.model.input_shape[0] == "batch"
    assert [o.name for o in detector.model.session.get_outputs()] == ["boxes", "scores"]
    for count in (1, 4):
        images = _images(count, square=topk is not None)
        expected = _torch_detections(toy_detector, detector, images)
        _assert_same_detections(detector.predict(images), expected, 64)
    single = detector.predict(_images(1)[0])
    assert single.names == [DETECT_META.classes[label] for label in single.labels]


def test_metadata_round_trips_with_export_settings(toy_detector, tmp_path):
    path = tmp_path / "raw.onnx"
    export_model(toy_detector, path, DETECT_META, ExportConfig(nms=False), check=False)
    metadata = OnnxModel(path, "cpu").metadata
    assert metadata.classes == DETECT_META.classes
    assert metadata.input_size == (64, 64) and metadata.resize == "letterbox"
    assert metadata.mean == DETECT_META.mean and metadata.std == DETECT_META.std
    assert (metadata.task, metadata.box_format, metadata.nms_in_graph) == ("detect", "xyxy", False)
    assert metadata.cvkit_version == __import__("cvkit").__version__
    props = {p.key: json.loads(p.value) for p in onnx.load(str(path)).metadata_props}
    assert props["classes"] == ["circle", "square", "triangle"]


def test_static_export_has_a_fixed_batch_and_the_runtime_pads_to_it(toy_detector, tmp_path):
    path = tmp_path / "static.onnx"
    export_model(toy_detector, path, DETECT_META, ExportConfig(nms=False), batch_size=2)
    detector = Detector(path, providers="cpu")
    assert detector.model.input_shape[0] == 2 and detector.batch_size == 2
    with pytest.raises(InputError, match="axis 0 is 4, the graph needs 2"):
        detector.model.run(np.zeros((4, 3, 64, 64), np.float32))
    images = _images(3)
    expected = _torch_detections(toy_detector, detector, images)
    _assert_same_detections(detector.predict(images), expected, 64)


def test_classifier_export_matches_torch_for_batch_1_and_4(toy_classifier, tmp_path):
    path = tmp_path / "cls.onnx"
    export_model(toy_classifier, path, CLASSIFY_META, ExportConfig(dynamic=True))
    classifier = Classifier(path, providers="cpu")
    for count in (1, 4):
        images = _images(count)
        batch, _ = classifier.preprocess(images)
        with torch.no_grad():
            expected = toy_classifier(torch.from_numpy(batch)).softmax(-1).numpy()
        got = np.stack([r.probabilities for r in classifier.predict(images)])
        np.testing.assert_allclose(got, expected, atol=1e-5)
        assert [r.label for r in classifier.predict(images)] == expected.argmax(1).tolist()


def test_segmenter_export_has_dynamic_height_and_width(toy_segmenter, tmp_path):
    path = tmp_path / "seg.onnx"
    export_model(toy_segmenter, path, SEGMENT_META, ExportConfig(dynamic=True))
    model = OnnxModel(path, "cpu")
    assert model.input_shape == ["batch", 3, "height", "width"]
    batch = np.random.default_rng(0).standard_normal((2, 3, 48, 40), dtype=np.float32)
    with torch.no_grad():
        expected = toy_segmenter(torch.from_numpy(batch)).numpy()
    np.testing.assert_allclose(model.run(batch)["logits"], expected, atol=1e-5)
    mask = Segmenter(path, providers="cpu").predict(_images(1)[0]).mask
    assert mask.shape == (48, 80) and set(np.unique(mask)) <= {0, 1, 2}


def test_half_export_keeps_float32_io_and_passes_parity(toy_classifier, tmp_path):
    path = tmp_path / "half.onnx"
    result = export_model(toy_classifier, path, CLASSIFY_META, ExportConfig(half=True))
    model = OnnxModel(path, "cpu")
    assert model.input_dtype == np.float32
    weights = [t.data_type for t in onnx.load(str(path)).graph.initializer if len(t.dims) > 1]
    assert weights and set(weights) == {onnx.TensorProto.FLOAT16}
    assert result.differences["logits"] < 1e-2
    assert all(p.dtype == torch.float32 for p in toy_classifier.parameters())


def test_nms_results_that_differ_only_at_tied_scores_are_judged_on_the_candidates(
    toy_detector, tmp_path, caplog
):
    """A briefly trained detector gives every candidate the same score (YOLO's class bias
    starts near the threshold): NMS keeps another of the tied boxes in onnxruntime than in
    torch, which once failed the export; the candidates, equal in both, decide instead."""
    tied = float(torch.sigmoid(torch.logit(torch.tensor(DETECT_META.score_threshold)) + 1e-3))
    with torch.no_grad():
        toy_detector.head.weight[4:] = 0
        toy_detector.head.bias[4:] = torch.logit(torch.tensor(tied))
    path = tmp_path / "tied.onnx"
    with caplog.at_level("WARNING", logger="cvkit"):
        result = export_model(toy_detector, path, DETECT_META, ExportConfig(dynamic=True))
    assert "scores tied within float rounding" in caplog.text
    assert result.differences["scores"] <= 1e-6 and result.differences["boxes"] <= 1e-6
    for got in Detector(path, providers="cpu").predict(_images(2, square=True)):
        np.testing.assert_allclose(got.scores, tied, rtol=1e-6)


def test_half_detector_export_is_checked_through_its_candidates(toy_detector, tmp_path):
    path = tmp_path / "half_det.onnx"
    result = export_model(toy_detector, path, DETECT_META, ExportConfig(half=True, dynamic=True))
    assert result.differences["boxes"] < 1e-2 and result.differences["scores"] < 1e-2
    detector = Detector(path, providers="cpu")
    assert detector.model.input_dtype == np.float32 and detector.metadata.nms_in_graph
    images = _images(2, square=True)
    expected = _torch_detections(toy_detector, detector, images)
    for got, (_, scores, _) in zip(detector.predict(images), expected, strict=True):
        assert abs(len(got.scores) - len(scores)) <= 2
        np.testing.assert_allclose(got.scores[:3], scores[:3], atol=1e-2)


class _TracesDifferently(torch.nn.Module):
    """Returns other logits while being traced: the parity check must catch it."""

    def forward(self, images):
        logits = images.mean(dim=(2, 3))
        return logits * 1.5 if torch.jit.is_tracing() else logits


def test_parity_failure_fails_the_export_with_the_difference(tmp_path):
    meta = ModelMetadata(task="classify", classes=("r", "g", "b"), input_size=(8, 8))
    with pytest.raises(ExportError, match=r"parity check failed: logits differ .* up to \d"):
        export_model(_TracesDifferently(), tmp_path / "bad.onnx", meta)
    assert list(tmp_path.iterdir()) == []


def test_detector_without_candidates_is_refused(toy_classifier, tmp_path):
    with pytest.raises(ExportError, match="candidates"):
        export_model(toy_classifier, tmp_path / "x.onnx", DETECT_META)


def test_simplify_with_onnxslim(toy_classifier, tmp_path):
    pytest.importorskip("onnxslim")
    path = tmp_path / "slim.onnx"
    result = export_model(toy_classifier, path, CLASSIFY_META, ExportConfig(simplify=True))
    assert OnnxModel(path, "cpu").metadata.classes == CLASSIFY_META.classes
    assert result.differences["logits"] < 1e-5


def test_simplify_that_changes_results_is_blamed_on_onnxslim(toy_classifier, tmp_path, monkeypatch):
    def corrupting_simplify(proto):
        weights = proto.graph.initializer[0]
        values = onnx.numpy_helper.to_array(weights) * 2
        weights.CopyFrom(onnx.numpy_helper.from_array(values, weights.name))
        return proto

    monkeypatch.setattr("cvkit.export.onnx._simplify", corrupting_simplify)
    with pytest.raises(ExportError, match="before --simplify matches torch"):
        export_model(
            toy_classifier, tmp_path / "s.onnx", CLASSIFY_META, ExportConfig(simplify=True)
        )
    assert not (tmp_path / "s.onnx").exists()


def test_runtime_works_where_importing_torch_fails(toy_detector, tmp_path):
    path = tmp_path / "raw.onnx"
    export_model(toy_detector, path, DETECT_META, ExportConfig(nms=False, dynamic=True))
    images = _images(2)
    np.save(tmp_path / "images.npy", np.stack([images[1], images[1][::-1]]))
    code = BLOCK_TORCH + textwrap.dedent(
        f"""
        import json, numpy as np
        from cvkit.runtime import Detector
        try:
            import torch
        except ImportError:
            pass
        else:
            raise SystemExit("torch was importable")
        detector = Detector({str(path)!r}, providers="cpu")
        results = detector.predict(list(np.load({str(tmp_path / "images.npy")!r})))
        print(json.dumps([r.to_dict() for r in results]))
        print(detector.provider, "torch" in sys.modules)
        """
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.strip().splitlines()
    assert lines[-1] == "CPUExecutionProvider False"
    got = json.loads(lines[-2])
    detector = Detector(path, providers="cpu")
    expected = detector.predict([images[1], images[1][::-1]])
    for child, parent in zip(got, expected, strict=True):
        assert child["labels"] == parent.labels.tolist() and child["names"] == parent.names
        np.testing.assert_allclose(child["boxes"], parent.boxes, atol=1e-4)


def test_per_class_boxes_are_selected_per_class(per_class_detector):
    model = per_class_detector
    torch.manual_seed(0)
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        boxes, scores = model.candidates(images)
        (detections,) = model(images)
    assert boxes.shape == (1, 64, 3, 4) and len(detections) > 0
    # each detection's box is the box its own class regressed for its candidate
    flat_boxes = boxes[0].reshape(-1, 4)
    for box, label, score in zip(
        detections.boxes, detections.labels, detections.scores, strict=True
    ):
        pair = torch.nonzero(scores[0, :, label] == score).squeeze(1)
        assert any(
            torch.allclose(flat_boxes[index * 3 + label].clamp(0, 64), box) for index in pair
        )


@pytest.mark.parametrize(("nms", "topk"), [(True, None), (True, 12), (False, None)])
def test_per_class_export_matches_torch_for_batch_1_and_4(per_class_detector, tmp_path, nms, topk):
    model = per_class_detector
    model.topk_candidates = topk if topk is not None else 10_000
    meta = dataclasses.replace(DETECT_META, topk_candidates=topk)
    path = tmp_path / "per_class.onnx"
    result = export_model(model, path, meta, ExportConfig(dynamic=True, nms=nms))
    assert result.differences["boxes"] < 1e-5 and result.differences["scores"] < 1e-5
    detector = Detector(path, providers="cpu", batch_size=4)
    for count in (1, 4):
        images = _images(count, square=True)
        if not nms:
            outputs = detector.model.run(detector.preprocess(images)[0])
            assert outputs["boxes"].shape == (count, 64, 3, 4)
        expected = _torch_detections(model, detector, images)
        _assert_same_detections(detector.predict(images), expected, 64)
