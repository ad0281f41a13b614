"""COCO box and mask mAP: detections → COCO results JSON → AP@[.5:.95], AP50, AP75, APs/m/l,
per class.

Detections use cvkit's convention (``boxes [N, 4]`` xyxy in original-image pixels, ``labels``
contiguous ``0..C-1``, optional ``masks [N, H, W]`` in original pixels); :func:`detections_to_coco`
converts them to COCO's result format (``bbox`` = ``[x, y, w, h]``, ``segmentation`` = compressed
RLE when there are masks, ``category_id`` from the dataset's map), and :func:`write_coco_results`
saves them as the results file COCO tools load (``COCO.loadRes``). :func:`evaluate_coco` scores
boxes (``iou_type="bbox"``) or masks (``"segm"``) against a COCO ground-truth dict with
faster-coco-eval (C++, default) or the reference pycocotools; both return the same numbers.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from cvkit.errors import DatasetError

Backend = Literal["faster", "pycocotools"]
IouType = Literal["bbox", "segm"]


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

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        """Flat metrics: ``mAP``, ``mAP50``, ``mAP75``, ``mAP_small|medium|large``, ``AP/<name>``,
        each key behind ``prefix`` (``segm_`` for mask metrics).

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
        return {f"{prefix}{key}": value for key, value in metrics.items()}

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
            (contiguous 0..C-1), optionally ``masks`` [N, H, W] in original image pixels
            (boolean, or probabilities that count as foreground above 0.5).
        image_ids: COCO ``image_id`` of each image, same order as ``detections``.
        category_ids: COCO category id of each contiguous label.

    Returns:
        ``[{"image_id", "category_id", "bbox": [x, y, w, h], "score"}, ...]``, with
        ``"segmentation": {"size": [H, W], "counts": str}`` (compressed RLE) for detections
        that have masks.

    Raises:
        DatasetError: a label outside ``0..len(category_ids)-1``, or masks whose count
            differs from the boxes'.
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
        masks = fields.get("masks")
        rles = mask_rles(_numpy(masks)) if masks is not None else None
        if rles is not None and len(rles) != len(boxes):
            raise DatasetError(f"image {image_id}: {len(rles)} masks for {len(boxes)} boxes")
        for index, (box, score, label) in enumerate(
            zip(xywh.tolist(), scores.tolist(), labels.tolist(), strict=True)
        ):
            record = {
                "image_id": int(image_id),
                "category_id": int(lookup[label]),
                "bbox": box,
                "score": score,
            }
            if rles is not None:
                record["segmentation"] = rles[index]
            results.append(record)
    return results


def write_coco_results(path: str | Path, results: Sequence[Mapping[str, Any]]) -> Path:
    """Write COCO result records (:func:`detections_to_coco`) as a JSON list to ``path``.

    The file is what pycocotools' ``COCO.loadRes`` and benchmark servers take. Records with
    both ``bbox`` and ``segmentation`` serve box and mask scoring alike; for mask scoring drop
    ``bbox`` first (as Detectron2 does), or ``loadRes`` takes each mask's area from its box and
    the small/medium/large APs change.

    Returns:
        ``path``; its folder is created when missing.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(list(results)), encoding="utf-8")
    return path


def mask_rles(masks: np.ndarray) -> list[dict[str, Any]]:
    """Compressed COCO RLEs of instance masks.

    Args:
        masks: ``[N, H, W]`` boolean, or float probabilities (foreground above 0.5).

    Returns:
        One ``{"size": [H, W], "counts": str}`` per mask (JSON-friendly, what COCO results and
        ``predictions.json`` hold).
    """
    from pycocotools import mask as mask_utils

    masks = np.asarray(masks)
    binary = masks if masks.dtype == bool else masks > 0.5
    if not len(binary):
        return []
    encoded = mask_utils.encode(np.asfortranarray(binary.transpose(1, 2, 0).astype(np.uint8)))
    return [
        {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}
        for rle in encoded
    ]


def evaluate_coco(
    ground_truth: dict[str, Any],
    results: list[dict[str, Any]],
    class_names: Sequence[str] | None = None,
    backend: Backend = "faster",
    iou_type: IouType = "bbox",
) -> CocoMetrics:
    """Box (``iou_type="bbox"``) or mask (``"segm"``) mAP of ``results`` against ``ground_truth``.

    Args:
        ground_truth: a COCO dict (``images``, ``annotations`` with ``bbox``/``area``/``iscrowd``
            and, for ``segm``, ``segmentation``, ``categories``) in original image pixels. For
            ``segm``, an annotation without ``segmentation`` counts as its filled box (what
            training uses for it).
        results: COCO result records (see :func:`detections_to_coco`); for ``segm`` each needs
            a ``segmentation`` RLE, whose area decides small/medium/large.
        class_names: names for the per-class table, in category-id order (default: the
            ground truth's category names).
        backend: ``faster`` (faster-coco-eval) or ``pycocotools``.
        iou_type: ``bbox`` or ``segm``.

    Returns:
        The metrics; all zero when there are no detections.

    Raises:
        DatasetError: an unknown ``iou_type``, or a ``segm`` result without ``segmentation``.
    """
    if iou_type not in ("bbox", "segm"):
        raise DatasetError(f"iou_type {iou_type!r}: expected 'bbox' or 'segm'")
    if iou_type == "segm":
        missing = [r["image_id"] for r in results if "segmentation" not in r]
        if missing:
            raise DatasetError(
                f"segm evaluation: {len(missing)} results without 'segmentation' "
                f"(first in image {missing[0]})"
            )
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
    evaluator = _run(ground_truth, results, backend, iou_type)
    stats = [_nan_if_missing(float(v)) for v in evaluator.stats[:6]]
    precision = np.asarray(evaluator.eval["precision"])  # [IoU T, recall R, class K, area A, M]
    cat_ids = list(evaluator.params.catIds)
    per_class, per_class_ap50 = {}, {}
    for name, category in zip(names, categories, strict=True):
        k = cat_ids.index(category["id"])
        per_class[name] = _mean_valid(precision[:, :, k, 0, -1])
        per_class_ap50[name] = _mean_valid(precision[0, :, k, 0, -1])
    return CocoMetrics(*stats, per_class=per_class, per_class_ap50=per_class_ap50)


def _run(
    ground_truth: dict[str, Any],
    results: list[dict[str, Any]],
    backend: Backend,
    iou_type: IouType = "bbox",
) -> Any:
    gt_dict = copy.deepcopy(ground_truth)
    gt_dict.setdefault("info", {})
    gt_dict.setdefault("licenses", [])
    # Each iou type loads only its own geometry: segm results without ``bbox`` take their
    # area (small/medium/large) from the mask, as COCO's segm results do.
    other = "bbox" if iou_type == "segm" else "segmentation"
    results = [{k: v for k, v in r.items() if k != other} for r in results]
    if iou_type == "segm":
        for ann in gt_dict["annotations"]:
            if not ann.get("segmentation"):
                x, y, w, h = ann["bbox"]
                ann["segmentation"] = [[x, y, x, y + h, x + w, y + h, x + w, y]]
    if backend == "faster":
        from faster_coco_eval import COCO, COCOeval_faster

        gt = COCO(gt_dict)
        evaluator = COCOeval_faster(
            gt, gt.loadRes(results), iou_type, print_function=lambda *args: None
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
        evaluator = COCOeval(gt, gt.loadRes(results), iou_type)
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
