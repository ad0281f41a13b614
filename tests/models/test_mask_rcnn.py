"""Mask R-CNN's mask branch against torchvision's functions, and the whole model against
torchvision's ``MaskRCNN`` on the same weights.

Mask targets, the mask loss and the paste-back are compared with ``torchvision``'s
``roi_heads`` functions on the same inputs; the runtime's numpy paste-back with both. The whole
model is the Faster R-CNN pair of benchmarks/bench_rcnn.py with torchvision's mask pool, head
and predictor attached (what torchvision's ``MaskRCNN`` constructor does), loaded with cvkit's
weights: the mask loss under the same sampling seed and the eval masks must agree.
"""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.models.detection import roi_heads as tv_roi_heads
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor

from cvkit.config import load_config
from cvkit.geometry import Geometry
from cvkit.models.build import build_model
from cvkit.models.detection.mask_heads import (
    MaskHead,
    MaskPredictor,
    mask_loss,
    paste_masks_in_image,
    project_masks_on_boxes,
)
from cvkit.models.detection.mask_rcnn import MaskRCNN
from cvkit.runtime.masks import paste_masks
from cvkit.structures import Target

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "mask_rcnn.yaml"


def _random_boxes(count: int, size: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """Boxes of 0.5..40 px inside the image or reaching past its top-left edges."""
    xy = torch.rand(count, 2, generator=generator) * torch.tensor([size[1], size[0]]) - 8
    wh = 0.5 + torch.rand(count, 2, generator=generator) * 40
    xy = torch.maximum(xy, 1 - wh)
    return torch.cat([xy, xy + wh], 1)


def test_mask_targets_equal_torchvision_project_masks_on_boxes():
    generator = torch.Generator().manual_seed(0)
    gt_masks = (torch.rand(4, 48, 64, generator=generator) > 0.5).to(torch.uint8)
    boxes = _random_boxes(20, (48, 64), generator)
    matched = torch.randint(0, 4, (20,), generator=generator)
    got = project_masks_on_boxes(gt_masks, boxes, matched, 28)
    want = tv_roi_heads.project_masks_on_boxes(gt_masks, boxes, matched, 28)
    assert got.shape == (20, 28, 28) and 0 < got.mean() < 1
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_mask_loss_equals_torchvision_maskrcnn_loss():
    generator = torch.Generator().manual_seed(1)
    masks = [(torch.rand(n, 40, 40, generator=generator) > 0.4).to(torch.uint8) for n in (3, 2)]
    labels = [torch.tensor([0, 2, 1]), torch.tensor([1, 1])]
    boxes = [_random_boxes(n, (40, 40), generator) for n in (6, 5)]
    matched = [torch.tensor([0, 1, 2, 2, 1, 0]), torch.tensor([1, 0, 0, 1, 1])]
    logits = torch.randn(11, 4, 28, 28, generator=generator, requires_grad=True)
    got = mask_loss(logits, boxes, masks, labels, matched)
    want = tv_roi_heads.maskrcnn_loss(logits, boxes, masks, [lab + 1 for lab in labels], matched)
    torch.testing.assert_close(got, want)
    (grad,) = torch.autograd.grad(got, logits)
    assert grad[:, 0].abs().sum() == 0 and grad.abs().sum() > 0  # only the ground-truth class


def test_mask_loss_without_positives_is_zero_and_keeps_the_graph():
    logits = torch.randn(0, 4, 28, 28, requires_grad=True)
    loss = mask_loss(
        logits,
        [torch.zeros(0, 4)],
        [torch.zeros(1, 32, 32, dtype=torch.uint8)],
        [torch.tensor([0])],
        [torch.zeros(0, dtype=torch.int64)],
    )
    assert loss.item() == 0 and loss.requires_grad


@pytest.mark.parametrize("size", [(48, 64), (33, 21)])
def test_paste_back_equals_torchvision_and_the_numpy_runtime_equals_both(size):
    generator = torch.Generator().manual_seed(2)
    masks = torch.rand(25, 28, 28, generator=generator)
    boxes = _random_boxes(25, size, generator)
    got = paste_masks_in_image(masks, boxes, size)
    want = tv_roi_heads.paste_masks_in_image(masks[:, None], boxes, size)[:, 0]
    assert got.shape == (25, *size) and (got > 0.5).sum() > 100
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    probabilities = paste_masks(masks.numpy(), boxes.numpy(), size, threshold=None)
    np.testing.assert_allclose(probabilities, want.numpy(), rtol=0, atol=1e-5)
    binary = paste_masks(masks.numpy(), boxes.numpy(), size)
    decided = (want - 0.5).abs().numpy() > 1e-5  # pixels rounding could not flip
    assert binary.dtype == bool
    np.testing.assert_array_equal(binary[decided], (want > 0.5).numpy()[decided])


def test_boxes_outside_the_image_paste_empty_masks():
    # torchvision's paste raises on these; detections are clipped to the image before pasting
    masks = torch.ones(2, 28, 28)
    boxes = torch.tensor([[-20.0, -20.0, -5.0, -3.0], [70.0, 5.0, 90.0, 20.0]])
    assert paste_masks_in_image(masks, boxes, (48, 64)).sum() == 0
    assert not paste_masks(masks.numpy(), boxes.numpy(), (48, 64)).any()


def test_numpy_paste_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="boxes must be"):
        paste_masks(np.zeros((2, 28, 28)), np.zeros((3, 4)), (10, 10))
    with pytest.raises(ValueError, match="masks must be"):
        paste_masks(np.zeros((2, 28, 14)), np.zeros((2, 4)), (10, 10))


def test_runtime_masks_import_no_torch():
    import subprocess

    code = "import sys, cvkit.runtime.masks; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_mask_modules_load_torchvisions_weights_and_compute_the_same():
    torch.manual_seed(0)
    theirs_head, theirs_predictor = MaskRCNNHeads(8, [16, 16], 1), MaskRCNNPredictor(16, 12, 4)
    ours_head, ours_predictor = MaskHead(8, [16, 16]), MaskPredictor(16, 12, 4)
    ours_head.load_state_dict(theirs_head.state_dict())
    ours_predictor.load_state_dict(theirs_predictor.state_dict())
    pooled = torch.randn(5, 8, 14, 14)
    got = ours_predictor(ours_head(pooled))
    assert got.shape == (5, 4, 28, 28)
    torch.testing.assert_close(got, theirs_predictor(theirs_head(pooled)))


# --- the whole model against torchvision's MaskRCNN --------------------------------------------

SIZE = 128


@pytest.fixture(scope="module")
def bench():
    benchmarks = str(ROOT / "benchmarks")
    sys.path.insert(0, benchmarks)
    try:
        import bench_rcnn

        yield bench_rcnn
    finally:
        sys.path.remove(benchmarks)


def _small_config(size: int, width: int, proposals: tuple[int, int, int, int], *extra: str):
    """configs/mask_rcnn.yaml at ``size`` px, FPN and mask convs ``width`` channels wide, the
    box head ``4 * width`` wide, and RPN top-n ``(pre train, post train, pre test, post
    test)``."""
    rpn = (
        "pre_nms_top_n_train",
        "post_nms_top_n_train",
        "pre_nms_top_n_test",
        "post_nms_top_n_test",
    )
    options = {
        "fpn_channels": width,
        "representation_size": 4 * width,
        "mask_layers": [width] * 4,
        "mask_dim_reduced": width,
        **{f"rpn.{name}": count for name, count in zip(rpn, proposals, strict=True)},
    }
    settings = [f"model.mask_rcnn.{key}={value}" for key, value in options.items()]
    return load_config(CONFIG, [f"data.image_size={size}", *settings, *extra])


def _pair(bench):
    config = _small_config(SIZE, 8, (200, 100, 200, 100), "eval.score_threshold=0.2")
    ours, theirs = bench.build_pair(config, 3)
    spread = [ours.rpn.head.cls_logits, ours.roi_heads.box_predictor.cls_score]
    with torch.no_grad():  # spread the scores: a fresh head's near-ties reorder proposals
        for parameter in (p for module in spread for p in module.parameters()):
            parameter.normal_(std=0.3)
    model = theirs.model
    model.rpn.head.load_state_dict(ours.rpn.head.state_dict())
    model.roi_heads.box_predictor.load_state_dict(ours.roi_heads.box_predictor.state_dict())
    import bench_mask_rcnn

    bench_mask_rcnn.attach_mask_branch(ours, model)
    assert isinstance(ours, MaskRCNN)
    return ours, model


def _images():
    return torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))


def _box_masks(boxes: torch.Tensor, size: int) -> torch.Tensor:
    """An ellipse inscribed in each box, ``uint8 [N, size, size]``."""
    ys, xs = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    centres, halves = (boxes[:, :2] + boxes[:, 2:]) / 2, (boxes[:, 2:] - boxes[:, :2]) / 2
    inside = ((xs - centres[:, 0, None, None]) / halves[:, 0, None, None]) ** 2 + (
        (ys - centres[:, 1, None, None]) / halves[:, 1, None, None]
    ) ** 2
    return (inside <= 1).to(torch.uint8)


def test_mask_rcnn_eval_masks_equal_torchvision_maskrcnn(bench):
    ours, theirs = _pair(bench)
    ours.eval(), theirs.eval()
    with torch.no_grad():
        got, want = ours(_images()), theirs(list(_images()))
    assert sum(len(d) for d in got) > 5
    for mine, reference in zip(got, want, strict=True):
        assert len(mine) == len(reference["boxes"])
        torch.testing.assert_close(mine.boxes, reference["boxes"], atol=1e-3, rtol=1e-4)
        assert torch.equal(mine.labels, reference["labels"] - 1)
        assert mine.masks.shape == (len(mine), SIZE, SIZE) and mine.masks.dtype == torch.float32
        torch.testing.assert_close(mine.masks, reference["masks"][:, 0], atol=1e-4, rtol=1e-4)


def test_mask_rcnn_losses_equal_torchvision_maskrcnn_with_the_same_seed(bench):
    ours, theirs = _pair(bench)
    ours.train(), theirs.train()
    geometry = Geometry((SIZE, SIZE), (1.0, 1.0))
    boxes = [
        torch.tensor([[8.0, 10.0, 50.0, 60.0]]),
        torch.tensor([[30.0, 20.0, 120.0, 70.0], [5.0, 5.0, 25.0, 30.0]]),
    ]
    labels = [torch.tensor([1]), torch.tensor([0, 2])]
    targets = [
        Target(b, lab, geometry, masks=_box_masks(b, SIZE))
        for b, lab in zip(boxes, labels, strict=True)
    ]
    torch.manual_seed(5)
    for _ in targets:  # torchvision's training transform draws one number per image (its size)
        torch.empty(1).uniform_()
    got = ours(_images(), targets)
    torch.manual_seed(5)
    want = theirs(
        list(_images()),
        [{"boxes": t.boxes, "labels": t.labels + 1, "masks": t.masks} for t in targets],
    )
    names = {
        "rpn_cls": "loss_objectness",
        "rpn_box": "loss_rpn_box_reg",
        "roi_cls": "loss_classifier",
        "roi_box": "loss_box_reg",
        "roi_mask": "loss_mask",
    }
    assert set(got) == set(names)
    for mine, reference in names.items():
        torch.testing.assert_close(got[mine], want[reference], atol=1e-5, rtol=1e-4)
    got["roi_mask"].backward()
    assert ours.mask_predictor.mask_fcn_logits.weight.grad.abs().sum() > 0


def test_training_without_masks_names_the_setting():
    torch.manual_seed(0)
    model = build_model(load_config(CONFIG, ["data.image_size=64"]), 3).train()
    box = torch.tensor([[4.0, 4.0, 30.0, 30.0]])
    target = Target(box, torch.tensor([0]), Geometry((64, 64), (1.0, 1.0)))
    with pytest.raises(ValueError, match=r"data\.instance_masks"):
        model(torch.zeros(1, 3, 64, 64), [target])


# --- overfitting -----------------------------------------------------------------------------


def _painted(count: int, size: int = 64) -> tuple[torch.Tensor, list[Target]]:
    """Noise images with filled ellipses whose colour is their class (red, green, blue); later
    shapes occlude earlier ones, masks are the visible pixels and boxes are tight around them."""
    generator = torch.Generator().manual_seed(4)
    images = torch.rand(count, 3, size, size, generator=generator) * 0.3
    targets = []
    for image in images:
        n = int(torch.randint(1, 4, (1,), generator=generator))
        centres = size * (0.2 + 0.6 * torch.rand(n, 2, generator=generator))
        radii = 7 + torch.rand(n, 2, generator=generator) * size * 0.18
        ellipses = torch.cat([centres - radii, centres + radii], 1).clamp(0, size)
        drawn = _box_masks(ellipses, size).bool()
        labels = torch.randint(0, 3, (n,), generator=generator)
        visible = drawn.clone()
        for k in range(n):
            visible[:k] &= ~drawn[k]
            image[:, drawn[k]] = 0
            image[labels[k], drawn[k]] = 1
        keep = visible.flatten(1).sum(1) > 20
        visible, labels = visible[keep], labels[keep]
        boxes = []
        for mask in visible:
            ys, xs = torch.nonzero(mask, as_tuple=True)
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        targets.append(
            Target(
                torch.tensor(boxes, dtype=torch.float32),
                labels,
                Geometry((size, size), (1.0, 1.0)),
                masks=visible.to(torch.uint8),
            )
        )
    return (images - 0.5) / 0.25, targets


def _segm_map50(detections: list, targets: list[Target]) -> float:
    """COCO segm AP@.5 (cvkit's evaluation, = pycocotools': tests/eval/test_coco_segm.py) of the
    predicted masks against the targets' masks."""
    from cvkit.eval.coco import detections_to_coco, evaluate_coco, mask_rles

    annotations = []
    for image_id, target in enumerate(targets):
        masks = target.masks.numpy().astype(bool)
        for rle, area, box, label in zip(
            mask_rles(masks),
            masks.sum((1, 2)).tolist(),
            target.boxes.tolist(),
            target.labels.tolist(),
            strict=True,
        ):
            x1, y1, x2, y2 = box
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": label + 1,
                    "segmentation": rle,
                    "area": float(area),
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "iscrowd": 0,
                }
            )
    size = int(targets[0].masks.shape[-1])
    ground_truth = {
        "images": [{"id": i, "width": size, "height": size} for i in range(len(targets))],
        "annotations": annotations,
        "categories": [{"id": c, "name": str(c)} for c in (1, 2, 3)],
    }
    results = detections_to_coco(detections, list(range(len(targets))), [1, 2, 3])
    return evaluate_coco(ground_truth, results, iou_type="segm").AP50


STEPS = 40


def test_mask_rcnn_overfits_four_images_to_segm_map50_above_0_9():
    torch.manual_seed(0)
    config = _small_config(64, 32, (300, 150, 150, 100))
    model = build_model(config, num_classes=3)
    images, targets = _painted(4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    model.train()
    for _ in range(STEPS):
        optimizer.zero_grad()
        sum(model(images, targets).values()).backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        detections = model(images)
    assert _segm_map50(detections, targets) > 0.9
