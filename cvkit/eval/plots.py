"""Detection plots: precision–recall curves per class, a confusion matrix with a background
row and column, and the images with the most errors drawn.

Inputs are the COCO world of :mod:`cvkit.eval.coco`: a ground-truth dict (original pixels,
``bbox`` ``[x, y, w, h]``) and result records from :func:`~cvkit.eval.coco.detections_to_coco`.

- :func:`pr_curves`: COCO's interpolated precision at 101 recall points per class at IoU 0.5
  and 0.75, read from the same evaluator that computes mAP (faster-coco-eval or pycocotools).
- :func:`match_image` / :func:`detection_confusion`: detections scoring at least
  ``score_threshold`` are matched to ground truth at IoU >= ``iou_threshold``, greedily by
  decreasing score — first to an unmatched object of their own class (a true positive, the
  diagonal), then what is left to an unmatched object of another class (a confusion). An
  unmatched detection is a false positive (row ``background``); an unmatched object a false
  negative (column ``background``). Crowd objects are left out.
- :func:`write_detection_plots`: what ``cvkit eval`` writes for a detector.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from cvkit.eval.coco import Backend, _run
from cvkit.runtime.ops_np import box_iou

if TYPE_CHECKING:
    from cvkit.data.records import Records

PR_IOUS = (0.5, 0.75)
TP_COLOUR, FP_COLOUR = (40, 200, 40), (230, 30, 30)
FN_COLOUR, SWAP_COLOUR = (255, 200, 0), (200, 0, 220)


@dataclass
class PRCurves:
    """COCO precision–recall curves (area ``all``, up to 100 detections per image).

    Attributes:
        recall: ``float [R]`` recall thresholds (COCO's 101 points 0, 0.01, ..., 1).
        precision: IoU threshold → ``float [C, R]`` interpolated precision of each class at
            each recall (0 beyond the class's highest recall; NaN rows: no ground truth).
        classes: class names, in category-id order.
    """

    recall: np.ndarray
    precision: dict[float, np.ndarray]
    classes: list[str]

    def ap(self, iou: float) -> np.ndarray:
        """``float [C]`` AP of each class at ``iou``: the mean of its curve."""
        return self.precision[iou].mean(axis=1)


def pr_curves(
    ground_truth: dict[str, Any], results: list[dict[str, Any]], backend: Backend = "faster"
) -> PRCurves:
    """Per-class PR curves at IoU 0.5 and 0.75 of ``results`` against ``ground_truth``.

    Args:
        ground_truth: COCO dict (``images``, ``annotations``, ``categories``).
        results: COCO result records ``{"image_id", "category_id", "bbox", "score"}``.
        backend: ``faster`` (faster-coco-eval) or ``pycocotools``.
    """
    categories = sorted(ground_truth.get("categories", []), key=lambda c: c["id"])
    classes = [c["name"] for c in categories]
    recall = np.linspace(0.0, 1.0, 101)
    if not results:
        zeros = np.zeros((len(classes), len(recall)))
        return PRCurves(recall, {iou: zeros.copy() for iou in PR_IOUS}, classes)
    evaluator = _run(ground_truth, results, backend)
    precision = np.asarray(evaluator.eval["precision"], dtype=np.float64)  # [T, R, K, A, M]
    thresholds = np.asarray(evaluator.params.iouThrs)
    cat_ids = list(evaluator.params.catIds)
    order = [cat_ids.index(c["id"]) for c in categories]
    curves = {}
    for iou in PR_IOUS:
        t = int(np.argmin(np.abs(thresholds - iou)))
        rows = precision[t, :, order, 0, -1]  # [C, R]
        curves[iou] = np.where(rows < 0, np.nan, rows)
    return PRCurves(np.asarray(evaluator.params.recThrs, dtype=np.float64), curves, classes)


@dataclass
class ImageMatch:
    """How one image's detections met its ground truth (see the module docstring).

    Attributes:
        matched: ``int64 [D]`` the ground-truth index each detection matched, -1 for none.
        missed: ``int64 [G']`` indices of ground-truth objects no detection matched.
    """

    matched: np.ndarray
    missed: np.ndarray


def match_image(
    gt_boxes: np.ndarray,
    gt_labels: np.ndarray,
    boxes: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    iou_threshold: float = 0.5,
) -> ImageMatch:
    """Match one image's detections to its objects: own class first, then any class.

    Args:
        gt_boxes: ``[G, 4]`` xyxy pixels; gt_labels: ``[G]`` class indices.
        boxes: ``[D, 4]`` xyxy pixels; scores: ``[D]``; labels: ``[D]`` class indices.
        iou_threshold: minimum IoU of a match.
    """
    gt_boxes = np.asarray(gt_boxes, np.float64).reshape(-1, 4)
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    gt_labels, labels = np.asarray(gt_labels).reshape(-1), np.asarray(labels).reshape(-1)
    matched = np.full(len(boxes), -1, np.int64)
    taken = np.zeros(len(gt_boxes), bool)
    if len(boxes) and len(gt_boxes):
        iou = box_iou(boxes, gt_boxes)
        order = np.argsort(-np.asarray(scores, np.float64).reshape(-1), kind="stable")
        for same_class in (True, False):
            for d in order:
                if matched[d] >= 0:
                    continue
                allowed = (~taken) & (iou[d] >= iou_threshold)
                allowed &= (gt_labels == labels[d]) if same_class else (gt_labels != labels[d])
                if allowed.any():
                    g = int(np.argmax(np.where(allowed, iou[d], -1.0)))
                    matched[d], taken[g] = g, True
    return ImageMatch(matched, np.flatnonzero(~taken))


@dataclass
class ImageErrors:
    """One image's objects and kept detections with their :class:`ImageMatch`.

    Attributes:
        image_id: COCO image id.
        gt_boxes, gt_labels: non-crowd objects (xyxy original pixels, class indices).
        boxes, scores, labels: detections scoring at least the threshold.
        match: how they met.
    """

    image_id: int
    gt_boxes: np.ndarray
    gt_labels: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    match: ImageMatch

    @property
    def false_positives(self) -> int:
        """Detections that matched nothing."""
        return int((self.match.matched < 0).sum())

    @property
    def confusions(self) -> int:
        """Detections that matched an object of another class."""
        hit = self.match.matched >= 0
        return int((self.gt_labels[self.match.matched[hit]] != self.labels[hit]).sum())

    @property
    def errors(self) -> int:
        """False positives + missed objects + confusions."""
        return self.false_positives + len(self.match.missed) + self.confusions


def image_errors(
    ground_truth: dict[str, Any],
    results: list[dict[str, Any]],
    iou_threshold: float = 0.5,
    score_threshold: float = 0.3,
) -> list[ImageErrors]:
    """:func:`match_image` of every ground-truth image, labels as contiguous class indices
    (category-id order)."""
    categories = sorted(c["id"] for c in ground_truth.get("categories", []))
    index = {category: i for i, category in enumerate(categories)}
    objects: dict[int, list[tuple[list[float], int]]] = {}
    for ann in ground_truth.get("annotations", []):
        if not ann.get("iscrowd", 0):
            objects.setdefault(int(ann["image_id"]), []).append(
                (ann["bbox"], index[ann["category_id"]])
            )
    detections: dict[int, list[tuple[list[float], float, int]]] = {}
    for record in results:
        if record["score"] >= score_threshold:
            detections.setdefault(int(record["image_id"]), []).append(
                (record["bbox"], float(record["score"]), index[record["category_id"]])
            )
    errors = []
    for image in ground_truth.get("images", []):
        image_id = int(image["id"])
        gt = objects.get(image_id, [])
        found = detections.get(image_id, [])
        gt_boxes = _xyxy([box for box, _ in gt])
        gt_labels = np.array([label for _, label in gt], np.int64)
        boxes = _xyxy([box for box, _, _ in found])
        scores = np.array([score for _, score, _ in found], np.float64)
        labels = np.array([label for _, _, label in found], np.int64)
        match = match_image(gt_boxes, gt_labels, boxes, scores, labels, iou_threshold)
        errors.append(ImageErrors(image_id, gt_boxes, gt_labels, boxes, scores, labels, match))
    return errors


def detection_confusion(errors: Sequence[ImageErrors], num_classes: int) -> np.ndarray:
    """``int64 [C + 1, C + 1]`` counts; rows = true class, columns = predicted class, index
    ``C`` = background (row ``C``: false positives, column ``C``: missed objects)."""
    matrix = np.zeros((num_classes + 1, num_classes + 1), np.int64)
    for image in errors:
        matched = image.match.matched
        hit = matched >= 0
        np.add.at(matrix, (image.gt_labels[matched[hit]], image.labels[hit]), 1)
        np.add.at(matrix, (num_classes, image.labels[~hit]), 1)
        np.add.at(matrix, (image.gt_labels[image.match.missed], num_classes), 1)
    return matrix


def plot_pr_curves(curves: PRCurves, path: str | Path) -> Path:
    """One panel per IoU threshold, one curve per class (AP in the legend)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.5 * len(curves.precision), 4.5))
    for axes, (iou, precision) in zip(
        figure.subplots(1, len(curves.precision), squeeze=False)[0],
        curves.precision.items(),
        strict=True,
    ):
        for name, row in zip(curves.classes, precision, strict=True):
            if not np.isnan(row).all():
                axes.plot(curves.recall, row, label=f"{name} (AP {row.mean():.3f})")
        axes.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision")
        axes.set_title(f"IoU {iou:g}: mAP {np.nanmean(curves.ap(iou)):.3f}")
        axes.grid(alpha=0.3)
        axes.legend(loc="lower left", fontsize=8)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    return path


def draw_errors(image: np.ndarray, errors: ImageErrors, classes: Sequence[str]) -> np.ndarray:
    """A copy of ``image`` (RGB ``uint8 [H, W, 3]``) with true positives in green, false
    positives in red, missed objects in yellow and confused classes in magenta
    (``true>predicted``)."""
    canvas = image.copy()
    thickness = max(1, round(max(image.shape[:2]) / 250))
    matched = errors.match.matched

    def box(xyxy: np.ndarray, colour: tuple[int, int, int], text: str) -> None:
        x1, y1, x2, y2 = (round(float(v)) for v in xyxy)
        cv2.rectangle(canvas, (x1, y1), (x2 - 1, y2 - 1), colour, thickness)
        cv2.putText(canvas, text, (x1 + 2, max(y1 - 3, 10)), cv2.FONT_HERSHEY_SIMPLEX, 0.35,
                    colour, 1)  # fmt: skip

    for g in errors.match.missed:
        box(errors.gt_boxes[g], FN_COLOUR, f"missed {classes[errors.gt_labels[g]]}")
    for d, g in enumerate(matched):
        name = f"{classes[errors.labels[d]]} {errors.scores[d]:.2f}"
        if g < 0:
            box(errors.boxes[d], FP_COLOUR, name)
        elif errors.gt_labels[g] != errors.labels[d]:
            box(errors.boxes[d], SWAP_COLOUR, f"{classes[errors.gt_labels[g]]}>{name}")
        else:
            box(errors.boxes[d], TP_COLOUR, name)
    return canvas


def plot_worst_images(
    errors: Sequence[ImageErrors],
    records: Records,
    classes: Sequence[str],
    path: str | Path,
    count: int = 8,
) -> Path | None:
    """The ``count`` images with the most errors (:meth:`ImageErrors.errors`) drawn with
    :func:`draw_errors` in a grid; None when no image has an error."""
    from matplotlib.figure import Figure

    samples = {int(sample.image_id): sample for sample in records.samples}
    worst = sorted((e for e in errors if e.errors), key=lambda e: (-e.errors, e.image_id))[:count]
    if not worst:
        return None
    columns = min(4, len(worst))
    rows = -(-len(worst) // columns)
    figure = Figure(figsize=(3.2 * columns, 3.4 * rows))
    for axes, image in zip(figure.subplots(rows, columns, squeeze=False).flat, worst, strict=False):
        axes.imshow(draw_errors(samples[image.image_id].load_image(), image, classes))
        axes.set_title(
            f"image {image.image_id}: {image.false_positives} FP, {len(image.match.missed)} "
            f"missed, {image.confusions} swapped",
            fontsize=8,
        )
    for axes in figure.axes:
        axes.axis("off")
    figure.suptitle("worst images: TP green, FP red, missed yellow, wrong class magenta")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    return path


def write_detection_plots(
    folder: str | Path,
    ground_truth: dict[str, Any],
    results: list[dict[str, Any]],
    records: Records | None = None,
    iou_threshold: float = 0.5,
    score_threshold: float = 0.3,
    backend: Backend = "faster",
) -> list[Path]:
    """``pr_curves.png``, ``confusion_matrix.png`` and (with ``records``, the images)
    ``worst_images.png`` in ``folder``; returns the files written.

    The confusion matrix and worst images count detections scoring at least
    ``score_threshold`` matched at ``iou_threshold``; the PR curves use every detection.
    """
    import torch

    from cvkit.models.classification.metrics import plot_confusion_matrix

    folder = Path(folder)
    curves = pr_curves(ground_truth, results, backend)
    written = [plot_pr_curves(curves, folder / "pr_curves.png")]
    errors = image_errors(ground_truth, results, iou_threshold, score_threshold)
    matrix = detection_confusion(errors, len(curves.classes))
    written.append(
        plot_confusion_matrix(
            torch.from_numpy(matrix),
            [*curves.classes, "background"],
            folder / "confusion_matrix.png",
            title=f"detections >= {score_threshold:g} at IoU {iou_threshold:g} "
            "(row background: FP, column: missed)",
        )
    )
    if records is not None:
        worst = plot_worst_images(errors, records, curves.classes, folder / "worst_images.png")
        if worst is not None:
            written.append(worst)
    return written


def _xyxy(boxes: list[list[float]]) -> np.ndarray:
    xywh = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
