"""Soft-NMS and DIoU-NMS in padded, fixed-shape form: equal to the eager per-class references,
exported inside a detector graph with dynamic batch, and served by the runtime.

References: :func:`cvkit.ops.soft_nms` / :func:`cvkit.ops.diou_nms` applied class by class (the
eager algorithms), the torch graph on the runtime's own pre-processed batch.
"""

import numpy as np
import onnx
import pytest
import torch

from cvkit.config.export import ExportConfig
from cvkit.export.onnx import build_graph, export_model
from cvkit.ops import diou_nms, padded_nms, soft_nms
from cvkit.runtime import Detector, ModelMetadata

META = ModelMetadata(
    task="detect",
    classes=("circle", "square", "triangle"),
    input_size=(64, 64),
    score_threshold=0.3,
    iou_threshold=0.5,
    max_det=20,
)


def _candidates(batch: int, num_boxes: int, num_classes: int, seed: int):
    """Crowded random boxes ``[B, N, 4]`` (many overlaps) and scores ``[B, N, C]``."""
    gen = torch.Generator().manual_seed(seed)
    xy = torch.rand(batch, num_boxes, 2, generator=gen) * 60
    wh = torch.rand(batch, num_boxes, 2, generator=gen) * 30 + 2
    return torch.cat([xy, xy + wh], -1), torch.rand(batch, num_boxes, num_classes, generator=gen)


def _reference(method, boxes, scores, iou_threshold, score_threshold, max_det, sigma):
    """Per class: the eager algorithm on the boxes above ``score_threshold``; then the best
    ``max_det`` of all classes. Returns ``(boxes [k, 4], scores [k], labels [k])``."""
    picked = []
    for label in range(scores.shape[1]):
        index = torch.nonzero(scores[:, label] > score_threshold).flatten()
        if method == "soft":
            keep, kept_scores = soft_nms(
                boxes[index], scores[index, label], sigma=sigma, score_threshold=score_threshold
            )
        else:
            keep = diou_nms(boxes[index], scores[index, label], iou_threshold)
            kept_scores = scores[index[keep], label]
        picked += [(float(s), index[k], label) for k, s in zip(keep, kept_scores, strict=True)]
    picked = sorted(picked, key=lambda p: -p[0])[:max_det]
    return (
        torch.stack([boxes[p[1]] for p in picked]).reshape(-1, 4),
        torch.tensor([p[0] for p in picked]),
        torch.tensor([p[2] for p in picked], dtype=torch.int64),
    )


@pytest.mark.parametrize(
    ("method", "sigma", "max_det"),
    [("soft", 0.5, 25), ("soft", 0.1, 200), ("diou", 0.5, 25), ("diou", 0.5, 200)],
)
@pytest.mark.parametrize("seed", [0, 1])
def test_padded_method_equals_the_eager_reference_per_class(method, sigma, max_det, seed):
    boxes, scores = _candidates(3, 40, 3, seed)
    out = padded_nms(method, boxes, scores, 0.45, 0.2, max_det, sigma)
    out_boxes, out_scores, out_labels, num_dets = out
    assert out_boxes.shape == (3, max_det, 4) and out_scores.shape == (3, max_det)
    assert out_labels.dtype == torch.int64 and num_dets.shape == (3,)
    for image in range(3):
        ref_boxes, ref_scores, ref_labels = _reference(
            method, boxes[image], scores[image], 0.45, 0.2, max_det, sigma
        )
        count = int(num_dets[image])
        assert count == len(ref_scores)
        torch.testing.assert_close(out_scores[image, :count], ref_scores, rtol=1e-5, atol=1e-6)
        assert torch.equal(out_labels[image, :count], ref_labels)
        torch.testing.assert_close(out_boxes[image, :count], ref_boxes)
        assert (out_labels[image, count:] == -1).all() and (out_scores[image, count:] == 0).all()
        assert (out_boxes[image, count:] == 0).all()


def test_soft_nms_lowers_scores_where_hard_nms_would_drop():
    boxes = torch.tensor([[[0.0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60]]])
    scores = torch.tensor([[[0.9], [0.8], [0.7]]])
    _, hard_scores, _, hard_count = padded_nms("hard", boxes, scores, 0.5, 0.05, 5)
    _, soft_scores, _, soft_count = padded_nms("soft", boxes, scores, 0.5, 0.05, 5, 0.5)
    _, diou_scores, _, diou_count = padded_nms("diou", boxes, scores, 0.5, 0.05, 5)
    iou = 90 / 110
    assert hard_count.tolist() == diou_count.tolist() == [2] and soft_count.tolist() == [3]
    torch.testing.assert_close(diou_scores[0, :2], hard_scores[0, :2])
    torch.testing.assert_close(
        soft_scores[0, :3], torch.tensor([0.9, 0.7, 0.8 * float(np.exp(-(iou**2) / 0.5))])
    )


def test_padded_nms_rejects_an_unknown_method():
    boxes, scores = _candidates(1, 4, 2, 0)
    with pytest.raises(ValueError, match="method"):
        padded_nms("fast", boxes, scores)


def test_export_config_nms_spellings():
    assert ExportConfig().nms == "hard" and ExportConfig(nms=True).nms == "hard"
    assert ExportConfig(nms=False).nms is False and ExportConfig(nms="soft").nms == "soft"
    with pytest.raises(ValueError):
        ExportConfig(nms="fast")


@pytest.mark.parametrize("method", ["soft", "diou"])
def test_exported_method_matches_torch_and_the_runtime_at_two_batch_sizes(
    toy_detector, tmp_path, method
):
    path = tmp_path / f"{method}.onnx"
    options = ExportConfig(dynamic=True, nms=method, soft_sigma=0.3)
    result = export_model(toy_detector, path, META, options)
    assert result.metadata.nms_in_graph is True
    assert not any(n.op_type == "NonMaxSuppression" for n in onnx.load(str(path)).graph.node)
    graph = build_graph(toy_detector, result.metadata, options)
    detector = Detector(path, providers="cpu", batch_size=4)
    rng = np.random.default_rng(0)
    for count in (1, 4):
        images = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(count)]
        batch, _ = detector.preprocess(images)
        with torch.no_grad():
            expected = [t.numpy() for t in graph(torch.from_numpy(batch))]
        got = detector.model.run(batch)
        for name, want in zip(("boxes", "scores", "labels", "num_dets"), expected, strict=True):
            assert got[name].shape == want.shape == got[name].shape
            np.testing.assert_allclose(got[name], want, atol=1e-4, rtol=0)
        assert expected[3].min() > 0
        for image, detections in enumerate(detector.predict(images)):
            num = int(expected[3][image])
            np.testing.assert_array_equal(detections.labels, expected[2][image, :num])
            np.testing.assert_allclose(detections.scores, expected[1][image, :num], atol=1e-4)
            want_boxes = expected[0][image, :num].clip(0, 64)
            np.testing.assert_allclose(detections.boxes, want_boxes, atol=1e-3 * 64)
