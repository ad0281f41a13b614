"""Semantic-segmentation metrics from a confusion matrix: pixel accuracy, per-class IoU, mIoU.

Every metric is a function of the ``C × C`` confusion matrix, which is accumulated in one
vectorised pass per batch (a ``bincount`` over ``target · C + prediction``), so evaluation never
loops over pixels in Python. Pixels whose target is the ignore index (255 by default, Pascal
VOC's object borders) count nowhere.

A class that appears neither in the targets nor in the predictions has an undefined IoU; it is
reported as NaN and left out of the mean, as in the Pascal VOC and Cityscapes benchmarks.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

IGNORE_INDEX = 255


def confusion_matrix(
    prediction: Tensor, target: Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> Tensor:
    """Count pixels by (true class, predicted class).

    Args:
        prediction: ``Tensor[...]`` integer class indices in ``0..C-1`` (e.g. ``[B, H, W]``).
        target: ``Tensor[...]`` of the same shape; class indices in ``0..C-1`` or
            ``ignore_index``.
        num_classes: ``C``.
        ignore_index: target value of pixels that are not scored.

    Returns:
        ``Tensor[C, C]`` int64 on the inputs' device; entry ``[t, p]`` counts the pixels of
        true class ``t`` predicted as ``p``.

    Raises:
        ValueError: shapes differ, or a target or prediction value is outside ``0..C-1``
            (other than ``ignore_index`` in the target).
    """
    if prediction.shape != target.shape:
        raise ValueError(
            f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ in shape"
        )
    valid = target != ignore_index
    truth = target[valid].long()
    guess = prediction[valid].long()
    for name, values in (("target", truth), ("prediction", guess)):
        if values.numel() and (int(values.min()) < 0 or int(values.max()) >= num_classes):
            bad = values[(values < 0) | (values >= num_classes)][0]
            raise ValueError(
                f"{name} holds class {int(bad)}, outside 0..{num_classes - 1} "
                f"(ignore index {ignore_index})"
            )
    counts = torch.bincount(truth * num_classes + guess, minlength=num_classes * num_classes)
    return counts.view(num_classes, num_classes)


def pixel_accuracy(confusion: Tensor) -> float:
    """Fraction of scored pixels whose predicted class is the true class (NaN when none)."""
    total = confusion.sum()
    if total == 0:
        return float("nan")
    return float(confusion.diagonal().sum() / total)


def class_iou(confusion: Tensor) -> Tensor:
    """Per-class intersection over union ``TP / (TP + FP + FN)``.

    Args:
        confusion: ``Tensor[C, C]`` from :func:`confusion_matrix` (rows: truth).

    Returns:
        ``Tensor[C]`` float64; NaN for a class absent from both truth and prediction.
    """
    confusion = confusion.double()
    true_positive = confusion.diagonal()
    union = confusion.sum(0) + confusion.sum(1) - true_positive
    return torch.where(union > 0, true_positive / union.clamp(min=1), float("nan"))


def mean_iou(confusion: Tensor) -> float:
    """Mean of :func:`class_iou` over the classes where it is defined (NaN if none is)."""
    iou = class_iou(confusion)
    defined = iou[~iou.isnan()]
    return float(defined.mean()) if defined.numel() else float("nan")


class SegmentationEvaluator:
    """Accumulates a confusion matrix over batches and reports the segmentation metrics.

    Example::

        evaluator = SegmentationEvaluator(num_classes=4)
        for images, targets in loader:
            evaluator.update(model(images).argmax(1), semantic)
        metrics = evaluator.compute()   # {"mIoU": ..., "pixel_acc": ..., "IoU/<class>": ...}
    """

    def __init__(
        self,
        num_classes: int,
        class_names: Sequence[str] | None = None,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names given for {num_classes} classes")
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names is not None else None
        self.ignore_index = ignore_index
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        self.confusion.zero_()

    def update(self, prediction: Tensor, target: Tensor) -> None:
        """Add a batch: ``prediction`` and ``target`` are ``Tensor[B, H, W]`` class indices."""
        batch = confusion_matrix(prediction, target, self.num_classes, self.ignore_index)
        self.confusion += batch.cpu()

    def compute(self) -> dict[str, float]:
        """``mIoU``, ``pixel_acc`` and ``IoU/<class name or index>`` for every class."""
        names = self.class_names or [str(index) for index in range(self.num_classes)]
        metrics = {"mIoU": mean_iou(self.confusion), "pixel_acc": pixel_accuracy(self.confusion)}
        for name, value in zip(names, class_iou(self.confusion).tolist(), strict=True):
            metrics[f"IoU/{name}"] = value
        return metrics
