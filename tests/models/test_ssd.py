"""SSD: shapes, anchor/prediction order, the loss against torchvision's, NMS post-processing,
config handling, and a tiny model overfitting four images."""

import pytest
import torch
from torchvision.models.detection import _utils as tv_det_utils
from torchvision.models.detection.ssd import SSD as TorchvisionSSD
from torchvision.ops import batched_nms as tv_batched_nms

from cvkit.config import load_config
from cvkit.config.model import SSDConfig
from cvkit.errors import ConfigError
from cvkit.geometry import Geometry
from cvkit.models.backbones import create_backbone
from cvkit.models.build import build_model
from cvkit.models.detection.losses import multibox_loss
from cvkit.models.detection.postprocess import select_detections
from cvkit.models.detection.ssd import SSD, flatten_level, level_anchor_sizes
from cvkit.ops.anchors import default_ssd_sizes
from cvkit.ops.iou import box_iou
from cvkit.ops.matching import greedy_assign
from cvkit.structures import Target

torch.set_num_threads(2)
NUM_CLASSES = 3
SIZE = 96


def tiny_ssd(**options) -> SSD:
    backbone = create_backbone("resnet18_tiny", out_features=["layer2", "layer3", "layer4"])
    return SSD(backbone, NUM_CLASSES, SSDConfig(extra_blocks=1, extra_channels=32, **options))


def random_targets(generator: torch.Generator, batch: int, size: int = SIZE) -> list[Target]:
    targets = []
    for _ in range(batch):
        n = int(torch.randint(1, 4, (1,), generator=generator))
        xy = torch.rand(n, 2, generator=generator) * size * 0.6
        wh = 8 + torch.rand(n, 2, generator=generator) * size * 0.4
        boxes = torch.cat([xy, (xy + wh).clamp(max=size)], 1)
        labels = torch.randint(0, NUM_CLASSES, (n,), generator=generator)
        targets.append(Target(boxes, labels, Geometry((size, size), (1.0, 1.0))))
    return targets


@pytest.fixture(scope="module")
def model() -> SSD:
    torch.manual_seed(0)
    return tiny_ssd()


def test_forward_backward_shapes(model):
    images = torch.randn(2, 3, SIZE, SIZE)
    features = model.features(images)
    assert [f.shape[-1] for f in features] == [12, 6, 3, 2]
    per_cell = 2 + 3 - 1
    num_anchors = sum(f.shape[-1] * f.shape[-2] * per_cell for f in features)
    logits, deltas, anchors = model.predict(images)
    assert logits.shape == (2, num_anchors, NUM_CLASSES + 1)
    assert deltas.shape == (2, num_anchors, 4)
    assert anchors.shape == (num_anchors, 4)

    model.train()
    losses = model(images, random_targets(torch.Generator().manual_seed(1), 2))
    assert set(losses) == {"cls", "box"}
    assert all(v.ndim == 0 and torch.isfinite(v) and v > 0 for v in losses.values())
    model.zero_grad()
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)

    model.eval()
    with torch.no_grad():
        boxes, scores = model.candidates(images)
        detections = model(images)
    assert boxes.shape == (2, num_anchors, 4) and scores.shape == (2, num_anchors, NUM_CLASSES)
    assert scores.min() >= 0 and scores.sum(-1).max() <= 1 + 1e-6
    assert boxes.min() >= 0 and boxes.max() <= SIZE
    assert len(detections) == 2
    for det in detections:
        assert det.labels.dtype == torch.int64
        assert det.boxes.shape == (len(det.scores), 4)
        assert ((det.labels >= 0) & (det.labels < NUM_CLASSES)).all()


def test_anchor_order_matches_prediction_order(model):
    """Anchor i sits at the cell whose prediction is row i of the flattened head output."""
    images = torch.zeros(1, 3, SIZE, SIZE)
    features = model.features(images)
    anchors = model.anchors(features, (SIZE, SIZE))
    start = 0
    for feature in features:
        h, w = feature.shape[-2:]
        per_cell = 4
        # a head output whose value at (anchor a, column k, row y, column x) encodes y and x
        ys = torch.arange(h).view(1, 1, h, 1).expand(1, per_cell * 4, h, w)
        xs = torch.arange(w).view(1, 1, 1, w).expand(1, per_cell * 4, h, w)
        flat = flatten_level((ys * 1000 + xs).float(), 4)[0, :, 0]
        level = anchors[start : start + h * w * per_cell]
        centers = (level[:, :2] + level[:, 2:]) / 2
        cell_y = torch.div(flat, 1000, rounding_mode="floor")
        cell_x = flat - cell_y * 1000
        torch.testing.assert_close(centers[:, 0], (cell_x + 0.5) * SIZE / w)
        torch.testing.assert_close(centers[:, 1], (cell_y + 0.5) * SIZE / h)
        start += h * w * per_cell
    assert start == len(anchors)


def test_loss_equals_torchvision_ssd_loss(model):
    """Same head outputs, anchors and matches → the same two losses as torchvision's SSD."""
    generator = torch.Generator().manual_seed(2)
    images = torch.randn(3, 3, SIZE, SIZE)
    targets = random_targets(generator, 3)
    with torch.no_grad():
        logits, deltas, anchors = model.predict(images)
    cls_targets, box_targets = model.match(anchors, targets)
    ours = multibox_loss(logits, deltas, cls_targets, box_targets, 3.0, "smooth_l1")

    matched = [greedy_assign(box_iou(anchors, t.boxes), 0.5) for t in targets]
    reference = TorchvisionSSD.compute_loss(
        _TorchvisionLoss(),
        [{"boxes": t.boxes, "labels": t.labels + 1} for t in targets],
        {"cls_logits": logits, "bbox_regression": deltas},
        [anchors] * 3,
        matched,
    )
    torch.testing.assert_close(ours["cls"], reference["classification"])
    torch.testing.assert_close(ours["box"], reference["bbox_regression"])
    expected_cls = [
        torch.where(m >= 0, t.labels[m.clamp(min=0)] + 1, 0)
        for m, t in zip(matched, targets, strict=True)
    ]
    assert torch.equal(cls_targets, torch.stack(expected_cls))


class _TorchvisionLoss:
    """The attributes torchvision's ``SSD.compute_loss`` reads (SSD variances 0.1 / 0.2)."""

    box_coder = tv_det_utils.BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))
    neg_to_pos_ratio = 3.0


def test_match_marks_labels_and_background(model):
    anchors = torch.tensor([[0, 0, 10, 10], [0, 0, 20, 20], [50, 50, 60, 60]], dtype=torch.float32)
    geometry = Geometry((SIZE, SIZE), (1.0, 1.0))
    targets = [
        Target(torch.tensor([[0.0, 0, 19, 19]]), torch.tensor([2]), geometry),
        Target(torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), geometry),
    ]
    cls_targets, box_targets = model.match(anchors, targets)
    assert cls_targets.tolist() == [[0, 3, 0], [0, 0, 0]]
    assert box_targets.shape == (2, 3, 4)
    assert box_targets[1].abs().max() < 1e-5


def reference_selection(boxes, scores, score_threshold, iou_threshold, max_det, topk):
    num_classes = scores.shape[-1]
    flat = scores.flatten()
    order = flat.argsort(descending=True)
    order = order[flat[order] > score_threshold][:topk]
    labels = order % num_classes
    kept_boxes = boxes[order // num_classes]
    keep = tv_batched_nms(kept_boxes, flat[order], labels, iou_threshold)[:max_det]
    return kept_boxes[keep], flat[order][keep], labels[keep]


def test_select_detections_matches_torchvision_nms():
    generator = torch.Generator().manual_seed(3)
    xy = torch.rand(2, 300, 2, generator=generator) * 80
    boxes = torch.cat([xy, xy + 5 + torch.rand(2, 300, 2, generator=generator) * 30], -1)
    scores = torch.rand(2, 300, 4, generator=generator).softmax(-1)
    detections = select_detections(boxes, scores, [(128, 128)] * 2, 0.2, 0.45, 50, 400)
    for det, image_boxes, image_scores in zip(detections, boxes, scores, strict=True):
        ref_boxes, ref_scores, ref_labels = reference_selection(
            image_boxes, image_scores, 0.2, 0.45, 50, 400
        )
        assert len(det.scores) == 50
        torch.testing.assert_close(det.boxes, ref_boxes)
        torch.testing.assert_close(det.scores, ref_scores)
        assert torch.equal(det.labels, ref_labels)
    empty = select_detections(boxes, scores * 0, [(128, 128)] * 2, 0.2, 0.45, 50, 400)
    assert all(len(det.boxes) == 0 and det.boxes.shape == (0, 4) for det in empty)


def test_anchor_sizes_follow_the_paper_rule_or_the_config():
    rule = level_anchor_sizes(SSDConfig(min_scale=0.15, max_scale=0.8), 5)
    assert rule == default_ssd_sizes(5, 0.15, 0.8)
    explicit = [[0.1], [0.3, 0.4]]
    assert level_anchor_sizes(SSDConfig(anchor_sizes=explicit), 2) == explicit
    with pytest.raises(ConfigError, match=r"model\.ssd\.anchor_sizes"):
        level_anchor_sizes(SSDConfig(anchor_sizes=explicit), 3)


def test_build_model_uses_the_config(tmp_path):
    config = load_config(
        None,
        [
            "model.name=ssd",
            "model.backbone=resnet18_tiny",
            "model.out_features=[layer3, layer4]",
            "model.freeze_at=2",
            "model.ssd.extra_blocks=1",
            "model.ssd.anchor_ratios=[1, 2, 0.5, 3]",
            "model.head_lr_mult=10",
        ],
    )
    ssd = build_model(config, 5)
    assert isinstance(ssd, SSD)
    assert list(ssd.backbone.channels) == ["layer3", "layer4"] and len(ssd.extras) == 1
    assert ssd.head.classifiers[0].out_channels == (2 + 4 - 1) * 6
    assert not any(p.requires_grad for p in ssd.backbone.conv1.parameters())
    groups = {g["name"]: g["lr_mult"] for g in ssd.parameter_groups()}
    assert groups == {"body": 1.0, "head": 10.0}


def painted_batch(generator: torch.Generator, batch: int) -> tuple[torch.Tensor, list[Target]]:
    """Noise images with filled rectangles whose colour is their class (red, green, blue)."""
    images = torch.rand(batch, 3, SIZE, SIZE, generator=generator) * 0.3
    targets = random_targets(generator, batch)
    for image, target in zip(images, targets, strict=True):
        target.boxes = target.boxes.round()
        for box, label in zip(target.boxes.int().tolist(), target.labels, strict=True):
            x1, y1, x2, y2 = box
            image[:, y1:y2, x1:x2] = 0
            image[label, y1:y2, x1:x2] = 1
    return (images - 0.5) / 0.25, targets


def test_loss_decreases_when_overfitting_four_images():
    torch.manual_seed(0)
    ssd = tiny_ssd()
    images, targets = painted_batch(torch.Generator().manual_seed(4), 4)
    optimizer = torch.optim.AdamW(ssd.parameters(), lr=3e-3)
    ssd.train()
    history = []
    for _ in range(120):
        losses = ssd(images, targets)
        loss = sum(losses.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    assert sum(history[-5:]) / 5 < 0.2 * history[0]
    ssd.eval()
    with torch.no_grad():
        detections = ssd(images)
    for det, target in zip(detections, targets, strict=True):
        confident = det.scores > 0.5
        iou = box_iou(target.boxes, det.boxes[confident])
        same_class = target.labels[:, None] == det.labels[confident][None, :]
        assert ((iou > 0.5) & same_class).any(1).all()
