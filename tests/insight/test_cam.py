"""Detector CAM targets: the candidate behind a detection, a gradient that flows only through
it, and grad-cam's methods on classifiers, segmenters and detectors."""

import numpy as np
import pytest
import torch
from torch import nn

from cvkit.errors import InputError
from cvkit.insight.cam import (
    CandidateScores,
    candidate_sources,
    compute_cam,
    model_targets,
)
from cvkit.models.detection.postprocess import select_detections

SIZE = 8  # an 8×8 input: one candidate per pixel


class PixelDetector(nn.Module):
    """One candidate per pixel (row-major), its box a 3×3 square around the pixel, its class
    scores a sigmoid of 1×1 convolutions: a candidate's score depends on its own pixel only."""

    def __init__(self, num_classes: int = 2) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Conv2d(3, 4, 1)
        self.head = nn.Conv2d(4, num_classes, 1)
        ys, xs = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
        centres = torch.stack([xs, ys], -1).reshape(-1, 2).float() + 0.5
        self.register_buffer("boxes", torch.cat([centres - 1.5, centres + 1.5], 1))

    def candidates(self, images):
        logits = self.head(torch.relu(self.features(images)))
        scores = logits.sigmoid().flatten(2).transpose(1, 2)  # [B, H*W, C]
        return self.boxes.expand(len(images), -1, -1), scores

    def forward(self, images):
        boxes, scores = self.candidates(images)
        sizes = [tuple(images.shape[-2:])] * len(images)
        return select_detections(boxes, scores, sizes, 0.05, 0.3, 20, 200)


@pytest.fixture
def detector():
    return PixelDetector().eval()


@pytest.fixture
def image():
    return torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


def test_candidate_sources_find_the_candidate_of_each_detection(detector, image):
    with torch.no_grad():
        detections = detector(image)[0]
        boxes, scores = detector.candidates(image)
    assert len(detections) >= 3
    pairs = candidate_sources(boxes[0], scores[0], detections)
    for k, (n, c) in enumerate(pairs.tolist()):
        # the pair reproduces the detection exactly: its class, score and (clipped) box
        assert c == int(detections.labels[k]) and scores[0, n, c] == detections.scores[k]
        clipped = detector.boxes[n].clamp(0, SIZE)
        torch.testing.assert_close(detections.boxes[k], clipped, rtol=0, atol=0)


def test_a_detection_no_candidate_made_is_refused(detector, image):
    with torch.no_grad():
        detections = detector(image)[0]
        boxes, scores = detector.candidates(image)
    detections.scores = detections.scores + 0.1
    with pytest.raises(InputError, match="matches no candidate"):
        candidate_sources(boxes[0], scores[0], detections[:1])


def test_the_target_gradient_flows_only_through_the_chosen_candidate(detector, image):
    wrapped, target, label, chosen = model_targets(detector, image, ["a", "b"], box=2)
    assert label.startswith("box2_") and len(chosen) == 1
    (n, c), = target.pairs.tolist()  # fmt: skip
    images = image.clone().requires_grad_(True)
    scores = wrapped(images)
    value = target(scores[0])
    assert value == chosen.scores[0]
    score_grad, image_grad = torch.autograd.grad(value, [scores, images])
    expected = torch.zeros_like(score_grad)
    expected[0, n, c] = 1
    torch.testing.assert_close(score_grad, expected, rtol=0, atol=0)
    # through the network: only the chosen candidate's pixel of the input gets a gradient
    pixel_norm = image_grad[0].abs().sum(0).flatten()
    assert pixel_norm[n] > 0 and int((pixel_norm > 0).sum()) == 1


def test_hirescam_on_the_detector_lights_only_the_candidates_pixel(detector, image):
    wrapped, target, _, _ = model_targets(detector, image, ["a", "b"], box=0)
    (n, _), = target.pairs.tolist()  # fmt: skip
    cam = compute_cam(wrapped, image, [detector.features], target, "hirescam")
    assert cam.shape == (SIZE, SIZE)
    # HiResCAM = relu(sum over channels of gradient * activation): only that pixel has both
    assert np.flatnonzero(cam.flatten() > 1e-6).tolist() == [n]


def test_class_target_sums_every_detection_of_the_class(detector, image):
    with torch.no_grad():
        detections = detector(image)[0]
    _, target, label, chosen = model_targets(detector, image, ["a", "b"], class_name="b",
                                             score_threshold=0.2)  # fmt: skip
    expected = detections[(detections.labels == 1) & (detections.scores >= 0.2)]
    assert label == "b" and len(chosen) == len(expected) > 0
    with torch.no_grad():
        value = target(CandidateScores(detector)(image)[0])
    torch.testing.assert_close(value, expected.scores.sum())
    with pytest.raises(InputError, match="--box 99"):
        model_targets(detector, image, ["a", "b"], box=99)


def test_classifier_and_segmenter_targets_and_a_gradient_free_method(image):
    torch.manual_seed(0)
    features = nn.Conv2d(3, 4, 3, padding=1)
    classifier = nn.Sequential(features, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                               nn.Linear(4, 3)).eval()  # fmt: skip
    _, target, label, _ = model_targets(classifier, image, ["x", "y", "z"])
    with torch.no_grad():
        logits = classifier(image)[0]
    assert label == ["x", "y", "z"][int(logits.argmax())]
    for method in ("gradcam", "eigencam", "scorecam"):
        cam = compute_cam(classifier, image, [features], target, method)
        assert cam.shape == (SIZE, SIZE) and cam.min() >= 0 and cam.max() <= 1
    segmenter = nn.Sequential(features, nn.ReLU(), nn.Conv2d(4, 3, 1)).eval()
    _, target, label, _ = model_targets(segmenter, image, ["background", "p", "q"], "q")
    with torch.no_grad():
        logits = segmenter(image)[0]
    mask = logits.argmax(0) == 2
    expected = logits[2][mask].sum() if mask.any() else logits[2].sum()
    torch.testing.assert_close(target(logits), expected)
    with pytest.raises(InputError, match="--box is for detectors"):
        model_targets(segmenter, image, ["background", "p", "q"], box=0)
