"""Numpy post-processing against torchvision references and hand-computed values."""

import numpy as np
import pytest
import torch
from torchvision.ops import batched_nms

from cvkit.runtime.postprocess import (
    classification,
    segmentation,
    select_detections,
)
from cvkit.runtime.preprocess import Geometry


def _reference_selection(boxes, scores, score_threshold, iou_threshold, max_det, topk):
    """Threshold, top-k (candidate, class) pairs, torchvision class-aware NMS, max_det."""
    boxes, scores = torch.from_numpy(boxes), torch.from_numpy(scores)
    flat = scores.flatten()
    keep = torch.nonzero(flat > score_threshold).squeeze(1)
    if topk is not None and keep.numel() > topk:
        keep = keep[flat[keep].topk(topk).indices]
    labels = keep % scores.shape[1]
    kept_boxes, kept_scores = boxes[keep // scores.shape[1]], flat[keep]
    survivors = batched_nms(kept_boxes, kept_scores, labels, iou_threshold)[:max_det]
    return kept_boxes[survivors].numpy(), kept_scores[survivors].numpy(), labels[survivors].numpy()


@pytest.mark.parametrize(("max_det", "topk"), [(5, None), (300, None), (300, 40)])
def test_select_detections_matches_torchvision(max_det, topk):
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 80, (200, 2)).astype(np.float32)
    boxes = np.concatenate([xy, xy + rng.uniform(4, 30, (200, 2)).astype(np.float32)], axis=1)
    scores = rng.random((200, 4), dtype=np.float32)
    got = select_detections(boxes, scores, 0.3, 0.5, max_det, topk)
    expected = _reference_selection(boxes, scores, 0.3, 0.5, max_det, topk)
    assert len(got[0]) == min(max_det, len(expected[0]))
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_array_equal(g, e)
    assert got[2].dtype == np.int64


def test_select_detections_with_nothing_above_threshold():
    boxes, scores, labels = select_detections(
        np.zeros((3, 4), np.float32), np.full((3, 2), 0.1, np.float32), 0.5, 0.5, 10
    )
    assert boxes.shape == (0, 4) and scores.shape == (0,) and labels.shape == (0,)


def test_boxes_to_original_inverts_the_geometry_and_clips():
    geometry = Geometry(orig_size=(100, 200), scale=(0.5, 0.25), offset=(2.0, 4.0))
    boxes = np.array([[12, 9, 52, 29], [-10, -10, 500, 500]], np.float32)
    np.testing.assert_allclose(
        geometry.boxes_to_original(boxes), [[20, 20, 100, 100], [0, 0, 200, 100]]
    )


def test_classification_softmax_hand_computed():
    result = classification(np.log(np.array([1.0, 3.0, 4.0], np.float32)), ("a", "b", "c"))
    np.testing.assert_allclose(result.probabilities, [0.125, 0.375, 0.5], rtol=1e-6)
    assert (result.label, result.name) == (2, "c") and result.score == pytest.approx(0.5)


def test_segmentation_crops_the_padding_and_resizes_to_the_original():
    # A 20x40 image letterboxed into 16x16: the valid region is 8 rows x 16 columns.
    logits = np.zeros((3, 16, 16), np.float32)
    logits[1, :8, :8] = 5.0
    logits[2, :8, 8:] = 5.0
    logits[0, 8:] = 50.0  # padding must not leak into the mask
    mask = segmentation(logits, Geometry((20, 40), (0.4, 0.4)), ("bg", "left", "right")).mask
    assert mask.shape == (20, 40) and mask.dtype == np.int64
    assert (mask[:, :19] == 1).all() and (mask[:, 21:] == 2).all()
