"""Detection plots: COCO PR curves equal a brute-force computation; the confusion matrix with a
background row/column counts hand-made detections as worked out by hand; the PNGs."""

from pathlib import Path

import numpy as np
import pytest

from cvkit.eval.plots import (
    PR_IOUS,
    detection_confusion,
    image_errors,
    match_image,
    pr_curves,
)

CATEGORY_IDS = [5, 2]  # id order (2, 5) differs from the class order: curves follow id order
NAMES = {5: "disc", 2: "star"}


def random_case(seed: int = 0):
    rng = np.random.default_rng(seed)
    images, annotations, results = [], [], []
    for image_id in range(1, 9):
        images.append({"id": image_id, "width": 200, "height": 160})
        for _ in range(rng.integers(1, 5)):
            w, h = rng.uniform(15, 80, size=2)
            x, y = rng.uniform(0, 200 - w), rng.uniform(0, 160 - h)
            category = int(rng.choice(CATEGORY_IDS))
            box = [x, y, w, h]
            annotations.append(
                {"id": len(annotations) + 1, "image_id": image_id, "category_id": category,
                 "bbox": box, "area": w * h, "iscrowd": 0}
            )  # fmt: skip
            for _ in range(rng.integers(0, 3)):  # jittered copies, sometimes the wrong class
                jitter = rng.normal(0, 0.12, 4) * [w, h, w, h]
                wrong = rng.random() < 0.2
                results.append(
                    {"image_id": image_id, "bbox": list(np.maximum(np.add(box, jitter), 1)),
                     "category_id": CATEGORY_IDS[1 - CATEGORY_IDS.index(category)] if wrong
                     else category, "score": float(rng.uniform(0.05, 1))}
                )  # fmt: skip
        for _ in range(rng.integers(0, 3)):  # false positives anywhere
            w, h = rng.uniform(10, 60, size=2)
            results.append(
                {"image_id": image_id, "bbox": [rng.uniform(0, 140), rng.uniform(0, 100), w, h],
                 "category_id": int(rng.choice(CATEGORY_IDS)), "score": float(rng.uniform(0, 1))}
            )  # fmt: skip
    categories = [{"id": c, "name": NAMES[c]} for c in CATEGORY_IDS]
    return {"images": images, "annotations": annotations, "categories": categories}, results


def iou_xywh(a, b):
    ax2, ay2, bx2, by2 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    w = max(0.0, min(ax2, bx2) - max(a[0], b[0]))
    h = max(0.0, min(ay2, by2) - max(a[1], b[1]))
    return w * h / (a[2] * a[3] + b[2] * b[3] - w * h)


def brute_force_curve(gt, results, category, iou_threshold):
    """Greedy matching in decreasing score order, then precision interpolated as the best
    precision at any recall >= r, for r = 0, 0.01, ..., 1."""
    objects = [a for a in gt["annotations"] if a["category_id"] == category]
    taken = set()
    hits = []
    for det in sorted(
        (r for r in results if r["category_id"] == category), key=lambda r: -r["score"]
    ):
        best, best_iou = None, iou_threshold
        for obj in objects:
            if obj["id"] in taken or obj["image_id"] != det["image_id"]:
                continue
            overlap = iou_xywh(det["bbox"], obj["bbox"])
            if overlap >= best_iou:
                best, best_iou = obj["id"], overlap
        if best is not None:
            taken.add(best)
        hits.append(best is not None)
    tp = np.cumsum(hits)
    recall = tp / len(objects)
    precision = tp / np.arange(1, len(hits) + 1)
    return np.array(
        [max([p for p, rc in zip(precision, recall, strict=True) if rc >= r], default=0.0)
         for r in np.linspace(0, 1, 101)]
    )  # fmt: skip


@pytest.mark.parametrize("backend", ["faster", "pycocotools"])
def test_pr_curves_equal_a_brute_force_computation(backend):
    gt, results = random_case()
    curves = pr_curves(gt, results, backend)
    assert curves.classes == ["star", "disc"]  # category id order
    np.testing.assert_allclose(curves.recall, np.linspace(0, 1, 101))
    for iou in PR_IOUS:
        for row, category in zip(curves.precision[iou], sorted(CATEGORY_IDS), strict=True):
            np.testing.assert_allclose(row, brute_force_curve(gt, results, category, iou),
                                       atol=1e-9)  # fmt: skip
    assert (curves.ap(0.5) > curves.ap(0.75)).all()


def test_match_prefers_the_own_class_then_takes_another():
    gt_boxes = np.array([[0, 0, 10, 10], [20, 0, 30, 10]], float)
    gt_labels = np.array([0, 1])
    # detection 0 (class 1, best score) lies on object 0 (class 0, IoU 2/3); detection 1
    # (class 1) fits object 1; detection 2 (class 0) fits object 0
    boxes = np.array([[2, 0, 12, 10], [20, 0, 30, 10], [0, 0, 10, 10]], float)
    scores, labels = np.array([0.9, 0.8, 0.7]), np.array([1, 1, 0])
    match = match_image(gt_boxes, gt_labels, boxes, scores, labels)
    assert match.matched.tolist() == [-1, 1, 0] and match.missed.tolist() == []
    # without detection 2, object 0 is left for detection 0: a confusion (true 0, predicted 1)
    match = match_image(gt_boxes, gt_labels, boxes[:2], scores[:2], labels[:2])
    assert match.matched.tolist() == [0, 1]
    # below the IoU threshold nothing matches
    match = match_image(gt_boxes, gt_labels, boxes[:1], scores[:1], labels[:1], 0.7)
    assert match.matched.tolist() == [-1] and match.missed.tolist() == [0, 1]


def test_confusion_matrix_of_hand_made_detections():
    # classes by category id: 2 -> star (0), 5 -> disc (1); background is index 2
    gt = {
        "images": [{"id": 1, "width": 100, "height": 100}, {"id": 2, "width": 100, "height": 100}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 2, "bbox": [0, 0, 20, 20], "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 5, "bbox": [50, 50, 20, 20], "iscrowd": 0},
            {"id": 3, "image_id": 2, "category_id": 5, "bbox": [10, 10, 30, 30], "iscrowd": 0},
            {"id": 4, "image_id": 2, "category_id": 2, "bbox": [60, 0, 30, 30], "iscrowd": 1},
        ],
        "categories": [{"id": 5, "name": "disc"}, {"id": 2, "name": "star"}],
    }
    results = [
        {"image_id": 1, "category_id": 2, "bbox": [1, 1, 20, 20], "score": 0.9},  # TP star
        {"image_id": 1, "category_id": 2, "bbox": [51, 50, 20, 20], "score": 0.8},  # disc->star
        {"image_id": 1, "category_id": 5, "bbox": [0, 70, 10, 10], "score": 0.7},  # FP disc
        {"image_id": 1, "category_id": 2, "bbox": [0, 0, 20, 20], "score": 0.6},  # FP duplicate
        {"image_id": 2, "category_id": 5, "bbox": [10, 10, 30, 30], "score": 0.2},  # below 0.3
        {"image_id": 2, "category_id": 2, "bbox": [60, 0, 30, 30], "score": 0.9},  # on a crowd
    ]
    errors = image_errors(gt, results, iou_threshold=0.5, score_threshold=0.3)
    matrix = detection_confusion(errors, 2)
    expected = np.array(
        [
            [1, 0, 0],  # star: one TP
            [1, 0, 1],  # disc: one predicted as star, one missed (image 2)
            [2, 1, 0],  # background: FPs predicted as star (duplicate, crowd) and as disc
        ]
    )
    np.testing.assert_array_equal(matrix, expected)
    assert [e.errors for e in errors] == [3, 2]  # image 1: 2 FP + 1 swap; image 2: 1 FP + 1 miss


def test_cvkit_eval_writes_the_plots_of_a_detector(tmp_path):
    from cvkit.cli import main
    from cvkit.config import config_to_dict, load_config
    from cvkit.data.synthetic import SHAPE_CLASSES as CLASSES
    from cvkit.engine.checkpoint import save_checkpoint
    from cvkit.models.build import build_model

    settings = [
        "device=cpu", "data.image_size=64", "data.workers=0", "data.synthetic.num_train=4",
        "data.synthetic.num_val=4", "data.synthetic.image_size=64",
        f"data.cache_dir={tmp_path / 'cache'}",
    ]  # fmt: skip
    cfg = Path(__file__).resolve().parents[2] / "configs" / "ssd.yaml"
    config = load_config(cfg, settings)
    weights = tmp_path / "run" / "weights" / "best.pt"
    model = build_model(config, len(CLASSES))
    save_checkpoint(
        {"model": model.state_dict(), "config": config_to_dict(config), "classes": CLASSES},
        weights,
    )
    assert main(["eval", "--cfg", str(cfg), "--weights", str(weights), "--set", *settings]) == 0
    plots = tmp_path / "run" / "plots" / "eval_best"
    assert {p.name for p in plots.iterdir()} == {
        "pr_curves.png",
        "confusion_matrix.png",
        "worst_images.png",
    }
    elsewhere = tmp_path / "elsewhere"
    args = ["eval", "--cfg", str(cfg), "--weights", str(weights), "--plots", str(elsewhere)]
    assert main([*args, "--set", *settings]) == 0 and (elsewhere / "pr_curves.png").is_file()
