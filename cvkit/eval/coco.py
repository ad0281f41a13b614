"""COCO box mAP: detections → COCO results JSON → AP@[.5:.95], AP50, AP75, APs/m/l, per class.

Detections use cvkit's convention (``boxes [N, 4]`` xyxy in original-image pixels, ``labels``
contiguous ``0..C-1``); :func:`detections_to_coco` converts them to COCO's result format
(``bbox`` = ``[x, y, w, h]``, ``category_id`` from the dataset's map). :func:`evaluate_coco`
scores them against a COCO ground-truth dict with faster-coco-eval (C++, default) or the
reference pycocotools; both return the same numbers.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from cvkit.errors import DatasetError

Backend = Literal["faster", "pycocotools"]


@dataclass
class CocoMetrics:
    """COCO box metrics; NaN where the ground truth has nothing to score (e.g. no small boxes).

    Attributes:
        AP: mean AP over IoU 0.50:0.95 (COCO's primary metric, "mAP").
        AP50, AP75: AP at IoU 0.50 and 0.75.
        APs, APm, APl: AP of small (< 32² px), medium and large (> 96² px) objects.
        per_class: class name → AP@[.5:.95] (NaN for a class without ground truth).
        per_class_ap50: class name → AP@.5.
    """

    AP: float
    AP50: float
    AP75: float
    APs: float
    APm: float
    APl: float
    per_class: dict[str, float] = field(default_factory=dict)
    per_class_ap50: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, float]:
        """Flat metrics: ``mAP``, ``mAP50``, ``mAP75``, ``mAP_small|medium|large``, ``AP/<name>``.

        NaN marks a metric without ground truth to score.
        """
        metrics = {
            "mAP": self.AP,
            "mAP50": self.AP50,
            "mAP75": self.AP75,
            "mAP_small": self.APs,
            "mAP_medium": self.APm,
            "mAP_large": self.APl,
        }
        metrics.update({f"AP/{name}": value for name, value in self.per_class.items()})
        return metrics

    def table(self) -> str:
        """A plain-text report: the summary line and one row per class."""
        width = max([5, *(len(name) for name in self.per_class)])
        lines = [
            f"mAP {self.AP:.4f}  mAP50 {self.AP50:.4f}  mAP75 {self.AP75:.4f}  "
            f"APs {self.APs:.4f}  APm {self.APm:.4f}  APl {self.APl:.4f}",
            f"{'class':<{width}}  {'AP':>6}  {'AP50':>6}",
        ]
        for name, value in self.per_class.items():
            lines.append(f"{name:<{width}}  {value:6.4f}  {self.per_class_ap50[name]:6.4f}")
        return "\n".join(lines)


def detections_to_coco(
    detections: Sequence[Any],
    image_ids: Sequence[int],
    category_ids: Sequence[int],
) -> list[dict[str, Any]]:
    """COCO result records for per-image detections.

    Args:
        detections: per image, a :class:`~cvkit.structures.Instances`, a runtime
            :class:`~cvkit.runtime.results.Detections` or a dict with ``boxes`` (Tensor/array
            [N, 4], xyxy in original image pixels), ``scores`` [N] and ``labels`` [N]
            (contiguous 0..C-1).
        image_ids: COCO ``image_id`` of each image, same order as ``detections``.
        category_ids: COCO category id of each contiguous label.

    Returns:
        ``[{"image_id", "category_id", "bbox": [x, y, w, h], "score"}, ...]``.

    Raises:
        DatasetError: a label outside ``0..len(category_ids)-1``.
    """
    lookup = np.asarray(category_ids, dtype=np.int64)
    results = []
    for image_id, detection in zip(image_ids, detections, strict=True):
        fields = detection if isinstance(detection, Mapping) else vars(detection)
        boxes = _numpy(fields["boxes"]).reshape(-1, 4).astype(np.float64)
        scores = _numpy(fields["scores"]).reshape(-1).astype(np.float64)
        labels = _numpy(fields["labels"]).reshape(-1).astype(np.int64)
        if labels.size and (labels.min() < 0 or labels.max() >= len(lookup)):
            raise DatasetError(
                f"image {image_id}: label {int(labels.max())} outside 0..{len(lookup) - 1}"
            )
        xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
        for box, score, label in zip(xywh.tolist(), scores.tolist(), labels.tolist(), strict=True):
            results.append(
                {
                    "image_id": int(image_id),
                    "category_id": int(lookup[label]),
                    "bbox": box,
                    "score": score,
                }
            )
    return results


def evaluate_coco(
    ground_truth: dict[str, Any],
    results: list[dict[str, Any]],
    class_names: Sequence[str] | None = None,
    backend: Backend = "faster",
) -> CocoMetrics:
    """Box mAP of ``results`` against ``ground_truth``.

    Args:
        ground_truth: a COCO dict (``images``, ``annotations`` with ``bbox``/``area``/``iscrowd``,
            ``categories``) in original image pixels.
        results: COCO result records (see :func:`detections_to_coco`).
        class_names: names for the per-class table, in category-id order (default: the
            ground truth's category names).
        backend: ``faster`` (faster-coco-eval) or ``pycocotools``.

    Returns:
        The metrics; all zero when there are no detections.
    """
    categories = sorted(ground_truth.get("categories", []), key=lambda c: c["id"])
    names = list(class_names) if class_names is not None else [c["name"] for c in categories]
    if len(names) != len(categories):
        raise DatasetError(
            f"{len(names)} class names for {len(categories)} ground-truth categories"
        )
    if not results:
        zeros = {
            name: 0.0 if _has_gt(ground_truth, c["id"]) else math.nan
            for name, c in zip(names, categories, strict=True)
        }
        return CocoMetrics(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, zeros, dict(zeros))
    evaluator = _run(ground_truth, results, backend)
    stats = [_nan_if_missing(float(v)) for v in evaluator.stats[:6]]
    precision = np.asarray(evaluator.eval["precision"])  # [IoU T, recall R, class K, area A, M]
    cat_ids = list(evaluator.params.catIds)
    per_class, per_class_ap50 = {}, {}
    for name, category in zip(names, categories, strict=True):
        k = cat_ids.index(category["id"])
        per_class[name] = _mean_valid(precision[:, :, k, 0, -1])
        per_class_ap50[name] = _mean_valid(precision[0, :, k, 0, -1])
    return CocoMetrics(*stats, per_class=per_class, per_class_ap50=per_class_ap50)


def _run(ground_truth: dict[str, Any], results: list[dict[str, Any]], backend: Backend) -> Any:
    gt_dict = copy.deepcopy(ground_truth)
    gt_dict.setdefault("info", {})
    gt_dict.setdefault("licenses", [])
    if backend == "faster":
        from faster_coco_eval import COCO, COCOeval_faster

        gt = COCO(gt_dict)
        evaluator = COCOeval_faster(
            gt, gt.loadRes(copy.deepcopy(results)), "bbox", print_function=lambda *args: None
        )
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
        return evaluator
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = gt_dict
        gt.createIndex()
        evaluator = COCOeval(gt, gt.loadRes(copy.deepcopy(results)), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def _has_gt(ground_truth: dict[str, Any], category_id: int) -> bool:
    return any(a["category_id"] == category_id for a in ground_truth.get("annotations", []))


def _mean_valid(values: np.ndarray) -> float:
    valid = values[values > -1]
    return float(valid.mean()) if valid.size else math.nan


def _nan_if_missing(value: float) -> float:
    return math.nan if value < 0 else value


def _numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)
