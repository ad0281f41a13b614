"""The anchor-free YOLO: PAN neck shapes, the detector contract (points and strides, sizes
n/s/m), one hand-checked loss property, and overfitting four painted images to mAP@.5 > 0.9."""

import pytest
import torch

from cvkit.config import load_config
from cvkit.geometry import Geometry
from cvkit.models.build import build_model
from cvkit.models.detection.yolo import anchor_points
from cvkit.models.necks import ShapeSpec, build_neck
from cvkit.structures import Target


def _config(*overrides: str):
    return load_config(
        None,
        [
            "task=detect",
            "model.name=yolo",
            "model.backbone=resnet18_tiny",
            "model.out_features=[layer2,layer3,layer4]",
            *overrides,
        ],
    )


def test_pan_keeps_every_level_size_and_stride_for_odd_sizes():
    import cvkit.models.necks.pan  # noqa: F401  (registers "pan")

    shapes = {"a": ShapeSpec(8, 8), "b": ShapeSpec(16, 16), "c": ShapeSpec(32, 32)}
    neck = build_neck("pan", shapes, channels=24, depth=2)
    sizes = [(13, 9), (7, 5), (4, 3)]  # a 100 × 72 input at strides 8, 16, 32 (ceil)
    features = [
        torch.randn(2, s.channels, *size) for s, size in zip(shapes.values(), sizes, strict=True)
    ]
    out = neck(features)
    assert [tuple(x.shape) for x in out.values()] == [(2, 24, *size) for size in sizes]
    assert [s.stride for s in neck.output_shapes.values()] == [8, 16, 32]


def test_anchor_points_are_cell_centres_level_by_level():
    points, strides = anchor_points([(2, 2), (1, 1)], [8, 16], torch.device("cpu"))
    expected = [[4, 4], [12, 4], [4, 12], [12, 12], [8, 8]]
    assert points.tolist() == expected and strides.tolist() == [8, 8, 8, 8, 16]


@pytest.mark.parametrize(("size", "channels"), [("n", 64), ("s", 128), ("m", 192)])
def test_sizes_scale_the_width_and_follow_the_detector_contract(size, channels):
    torch.manual_seed(0)
    model = build_model(_config(f"model.yolo.size={size}", "eval.max_det=7"), 3).eval()
    assert all(s.channels == channels for s in model.neck.output_shapes.values())
    assert model.size_divisibility == 32
    images = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        boxes, scores = model.candidates(images)
        detections = model(images)
    points = 8 * 12 + 4 * 6 + 2 * 3
    assert boxes.shape == (2, points, 4) and scores.shape == (2, points, 3)
    assert (boxes[..., 0::2] <= 96).all() and (boxes[..., 1::2] <= 64).all() and (boxes >= 0).all()
    assert len(detections) == 2 and all(len(d) <= 7 for d in detections)


def test_an_image_without_objects_trains_only_the_classes_towards_zero():
    torch.manual_seed(0)
    model = build_model(_config(), 2).train()
    geometry = Geometry((64, 64), (1.0, 1.0))
    empty = Target(torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), geometry)
    images = torch.randn(1, 3, 64, 64)
    losses = model(images, [empty])
    logits = model.predict(images)[0]
    # every point is a negative: BCE against 0, summed, divided by 1, times cls_weight 0.5
    expected = 0.5 * torch.nn.functional.softplus(logits).sum()
    assert losses["iou"] == 0 and losses["dfl"] == 0
    torch.testing.assert_close(losses["cls"], expected)


def _squares(count: int, size: int = 64) -> tuple[torch.Tensor, list[Target]]:
    """Noise images with one to three filled squares (possibly overlapping), colour = class."""
    generator = torch.Generator().manual_seed(11)
    images = torch.rand(count, 3, size, size, generator=generator) * 0.3
    targets = []
    for index, image in enumerate(images):
        n = 1 + index % 3
        sides = torch.randint(12, 30, (n, 1), generator=generator).float()
        corners = (torch.rand(n, 2, generator=generator) * (size - sides)).floor()
        boxes = torch.cat([corners, corners + sides], 1)
        labels = torch.randint(0, 3, (n,), generator=generator)
        for (x1, y1, x2, y2), label in zip(boxes.int().tolist(), labels.tolist(), strict=True):
            image[:, y1:y2, x1:x2] = 0
            image[label, y1:y2, x1:x2] = 1
        targets.append(Target(boxes, labels, Geometry((size, size), (1.0, 1.0))))
    return (images - 0.5) / 0.25, targets


def test_yolo_overfits_four_images_to_map50_above_0_9(one_thread, overfit_map50):
    torch.manual_seed(0)
    model = build_model(_config(), 3)
    images, targets = _squares(4)
    assert overfit_map50(model, images, targets, 120, lr=1e-2) > 0.9
