"""YOLOv1: the sum-squared loss against a hand computation on a 2×2 grid, and the detector
contract (candidates decode to pixel boxes, eval forward returns Instances)."""

import math

import pytest
import torch

from cvkit.config import load_config
from cvkit.geometry import Geometry
from cvkit.models.build import build_model
from cvkit.models.detection.yolov1 import decode_grid, yolov1_loss
from cvkit.structures import Target

STEPS = 30


def test_loss_equals_hand_computation_on_a_2x2_grid():
    # 64 px image, 2×2 grid (cells of 32 px), 2 predictors per cell, 2 classes
    boxes = torch.full((1, 2, 2, 2, 4), 0.5)
    boxes[0, 0, 0, 1] = torch.tensor([0.5, 0.5, 0.1, 0.1])  # a tiny box: IoU ~0.0008
    confidence = torch.full((1, 2, 2, 2), 0.6)
    class_probs = torch.tensor([0.3, 0.7]).expand(1, 2, 2, 2)
    # centre (24, 16) lies in cell (0, 0): x = 0.75, y = 0.5, √w = √0.5, √h = 0.5
    target = Target(
        torch.tensor([[8.0, 8.0, 40.0, 24.0]]), torch.tensor([0]), Geometry((64, 64), (1.0, 1.0))
    )
    losses = yolov1_loss(boxes, confidence, class_probs, [target], (64, 64))
    # predictor 0 decodes to (8, 8, 24, 24): IoU 256 / 512 = 0.5, so it is responsible
    box = 5.0 * ((0.5 - 0.75) ** 2 + 0.0 + (0.5 - math.sqrt(0.5)) ** 2 + 0.0)
    obj = (0.6 - 0.5) ** 2
    noobj = 0.5 * 7 * 0.6**2
    cls = (0.3 - 1.0) ** 2 + 0.7**2
    assert losses["box"].item() == pytest.approx(box, rel=1e-5)
    assert losses["obj"].item() == pytest.approx(obj, rel=1e-5)
    assert losses["noobj"].item() == pytest.approx(noobj, rel=1e-5)
    assert losses["cls"].item() == pytest.approx(cls, rel=1e-5)


@pytest.mark.parametrize("order", [[0, 1], [1, 0]])
def test_a_cell_with_two_centres_trains_the_larger_object(order):
    # both centres in cell (0, 0) of a 2×2 grid over 64 px; the larger one has label 1
    boxes = torch.tensor([[12.0, 12.0, 20.0, 20.0], [4.0, 4.0, 28.0, 28.0]])[order]
    labels = torch.tensor([0, 1])[order]
    target = Target(boxes, labels, Geometry((64, 64), (1.0, 1.0)))
    predicted = torch.full((1, 2, 2, 2, 4), 0.5)
    class_probs = torch.tensor([0.0, 1.0]).expand(1, 2, 2, 2)
    losses = yolov1_loss(predicted, torch.zeros(1, 2, 2, 2), class_probs, [target], (64, 64))
    assert losses["cls"].item() == 0.0
    # the larger box's code: centre (16, 16) → x = y = 0.5, √w = √h = √(24 / 64)
    expected = 5.0 * 2 * (0.5 - math.sqrt(24 / 64)) ** 2
    assert losses["box"].item() == pytest.approx(expected, rel=1e-5)


def test_decode_grid_places_a_box_in_its_cell():
    boxes = torch.zeros(1, 2, 2, 1, 4)
    boxes[0, 1, 0, 0] = torch.tensor([0.5, 0.25, 0.5, 0.5])
    decoded = decode_grid(boxes, (64, 64))[0, 1, 0, 0]
    # centre (16, 40), size 16 × 16
    assert torch.allclose(decoded, torch.tensor([8.0, 32.0, 24.0, 48.0]))


def test_candidates_and_eval_forward_follow_the_detector_contract():
    config = load_config(
        None,
        [
            "task=detect",
            "model.name=yolov1",
            "model.backbone=resnet18_tiny",
            "model.yolov1.head_channels=16",
            "eval.score_threshold=0.0",
            "eval.max_det=5",
        ],
    )
    torch.manual_seed(0)
    model = build_model(config, 3).eval()
    images = torch.randn(2, 3, 64, 64)
    boxes, scores = model.candidates(images)
    cells = (64 // model.size_divisibility) ** 2
    assert boxes.shape == (2, cells * 2, 4) and scores.shape == (2, cells * 2, 3)
    assert (scores >= 0).all() and (scores <= 1).all()
    with torch.no_grad():
        detections = model(images)
    assert len(detections) == 2 and all(len(d) == 5 for d in detections)
    assert torch.allclose(detections[0].scores[0], scores[0].max())


def _one_object_per_cell(count: int, size: int = 64, cell: int = 16):
    """Noise images with up to three filled squares, each centred in its own grid cell, their
    colour the class (red, green, blue). YOLOv1 predicts one class per cell, so two centres in
    one cell could never both be found."""
    generator = torch.Generator().manual_seed(7)
    images = torch.rand(count, 3, size, size, generator=generator) * 0.3
    cells_per_side = size // cell
    targets = []
    for image in images:
        chosen = torch.randperm(cells_per_side**2, generator=generator)[: 1 + len(targets) % 3]
        boxes, labels = [], []
        for index in chosen.tolist():
            cx = (index % cells_per_side + 0.5) * cell
            cy = (index // cells_per_side + 0.5) * cell
            half = float(torch.randint(6, 14, (1,), generator=generator))
            box = [max(cx - half, 0), max(cy - half, 0), min(cx + half, size), min(cy + half, size)]
            label = int(torch.randint(0, 3, (1,), generator=generator))
            x1, y1, x2, y2 = (int(v) for v in box)
            image[:, y1:y2, x1:x2] = 0
            image[label, y1:y2, x1:x2] = 1
            boxes.append(box)
            labels.append(label)
        geometry = Geometry((size, size), (1.0, 1.0))
        targets.append(Target(torch.tensor(boxes), torch.tensor(labels), geometry))
    return (images - 0.5) / 0.25, targets


def test_yolov1_overfits_four_images_to_map50_above_0_9(one_thread, overfit_map50):
    config = load_config(
        None,
        [
            "task=detect",
            "model.name=yolov1",
            "model.backbone=resnet18_tiny",
            "model.out_features=[layer3]",
            "model.yolov1.head_channels=32",
        ],
    )
    torch.manual_seed(0)
    model = build_model(config, 3)
    assert model.size_divisibility == 16
    images, targets = _one_object_per_cell(4)
    assert overfit_map50(model, images, targets, STEPS, lr=2e-3) > 0.9
