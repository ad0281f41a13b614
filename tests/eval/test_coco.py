"""COCO box mAP: faster-coco-eval equals pycocotools; labels map to category ids; golden cases."""

import math

import numpy as np
import pytest
import torch

from cvkit.errors import DatasetError
from cvkit.eval.coco import detections_to_coco, evaluate_coco

CATEGORY_IDS = [3, 7, 12]  # non-contiguous, as in real COCO files
NAMES = ["circle", "square", "triangle"]


def make_ground_truth(rng: np.random.Generator, num_images: int = 12) -> dict:
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        images.append({"id": image_id, "width": 320, "height": 240, "file_name": f"{image_id}.jpg"})
        for _ in range(rng.integers(0, 6)):
            w, h = rng.uniform(8, 150, size=2)
            x, y = rng.uniform(0, 320 - w), rng.uniform(0, 240 - h)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(rng.choice(CATEGORY_IDS[:2])),  # class 2 has no GT
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": int(rng.random() < 0.05),
                }
            )
    categories = [{"id": i, "name": n} for i, n in zip(CATEGORY_IDS, NAMES, strict=True)]
    return {"images": images, "annotations": annotations, "categories": categories}


def noisy_detections(rng: np.random.Generator, gt: dict) -> list[dict]:
    """Per image: jittered GT boxes (sometimes with the wrong class) plus random false positives."""
    per_image = []
    for image in gt["images"]:
        anns = [a for a in gt["annotations"] if a["image_id"] == image["id"]]
        boxes, labels = [], []
        for ann in anns:
            x, y, w, h = ann["bbox"]
            jitter = rng.normal(0, 0.08, size=4) * [w, h, w, h]
            boxes.append(np.array([x, y, x + w, y + h]) + jitter)
            label = CATEGORY_IDS.index(ann["category_id"])
            labels.append(label if rng.random() > 0.1 else int(rng.integers(0, 3)))
        for _ in range(rng.integers(0, 4)):
            x1, y1 = rng.uniform(0, 250), rng.uniform(0, 180)
            boxes.append([x1, y1, x1 + rng.uniform(5, 70), y1 + rng.uniform(5, 60)])
            labels.append(int(rng.integers(0, 3)))
        per_image.append(
            {
                "boxes": torch.tensor(np.array(boxes).reshape(-1, 4), dtype=torch.float32),
                "scores": torch.tensor(rng.uniform(0.05, 1.0, size=len(boxes))),
                "labels": torch.tensor(labels, dtype=torch.int64),
            }
        )
    return per_image


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_faster_coco_eval_equals_pycocotools(seed):
    rng = np.random.default_rng(seed)
    gt = make_ground_truth(rng)
    results = detections_to_coco(
        noisy_detections(rng, gt), [i["id"] for i in gt["images"]], CATEGORY_IDS
    )
    fast = evaluate_coco(gt, results, backend="faster")
    reference = evaluate_coco(gt, results, backend="pycocotools")
    assert 0.2 < reference.AP < 0.95  # a non-trivial case
    for key, value in reference.as_dict().items():
        got = fast.as_dict()[key]
        assert (math.isnan(got) and math.isnan(value)) or got == pytest.approx(value, abs=1e-12)
    assert math.isnan(fast.per_class["triangle"])  # no ground truth for that class


def test_labels_map_to_category_ids_and_boxes_to_xywh():
    detections = [
        {
            "boxes": torch.tensor([[10.0, 20.0, 40.0, 60.0]]),
            "scores": torch.tensor([0.9]),
            "labels": torch.tensor([2]),
        },
        {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0)},
    ]
    results = detections_to_coco(detections, [5, 6], CATEGORY_IDS)
    assert results == [
        {"image_id": 5, "category_id": 12, "bbox": [10, 20, 30, 40], "score": pytest.approx(0.9)}
    ]
    with pytest.raises(DatasetError, match=r"label 3 outside 0\.\.2"):
        detections_to_coco([{**detections[0], "labels": torch.tensor([3])}], [5], CATEGORY_IDS)


def test_golden_case_one_hit_one_miss():
    """'circle': one of two boxes found exactly, so precision is 1 up to recall 0.5 and 0 after:
    on COCO's 101 recall points (0, 0.01, ..., 1) that is 51/101 at every IoU threshold.
    'square': its one box found at IoU 0.6, a hit for thresholds 0.50, 0.55, 0.60 of the ten
    → AP 3/10, AP50 1, AP75 0."""
    box = {"image_id": 1, "area": 2500, "iscrowd": 0}
    gt = {
        "images": [{"id": 1, "width": 200, "height": 200}],
        "annotations": [
            {**box, "id": 1, "category_id": 3, "bbox": [0, 0, 50, 50]},
            {**box, "id": 2, "category_id": 3, "bbox": [100, 100, 50, 50]},
            {**box, "id": 3, "category_id": 7, "bbox": [0, 100, 50, 50]},
        ],
        "categories": [{"id": 3, "name": "circle"}, {"id": 7, "name": "square"}],
    }
    detections = [
        {
            "boxes": torch.tensor([[0.0, 0.0, 50.0, 50.0], [0.0, 100.0, 30.0, 150.0]]),
            "scores": torch.tensor([0.9, 0.8]),
            "labels": torch.tensor([0, 1]),
        }
    ]
    half = 51 / 101
    metrics = evaluate_coco(gt, detections_to_coco(detections, [1], [3, 7]))
    assert metrics.per_class == pytest.approx({"circle": half, "square": 0.3})
    assert metrics.per_class_ap50 == pytest.approx({"circle": half, "square": 1.0})
    expected = {"mAP": (half + 0.3) / 2, "mAP50": (half + 1) / 2, "mAP75": half / 2}
    assert {k: metrics.as_dict()[k] for k in expected} == pytest.approx(expected)
    assert math.isnan(metrics.APs) and math.isnan(metrics.APl)
    assert metrics.APm == pytest.approx(metrics.AP)
    assert "circle" in metrics.table()


def test_no_detections_scores_zero():
    gt = make_ground_truth(np.random.default_rng(0), num_images=3)
    metrics = evaluate_coco(gt, [], class_names=NAMES)
    assert metrics.AP == 0.0 and metrics.per_class["circle"] == 0.0
    assert math.isnan(metrics.per_class["triangle"])
