"""The semantic-segmentation task: per-pixel cross-entropy for training, mIoU for validation.

A segmenter maps ``images [B, 3, H, W]`` to logits ``[B, C, H, W]`` and knows nothing about
losses; this task stacks each target's ``semantic`` mask (``int64 [H, W]``, 255 = ignore) into
``[B, H, W]``, scores the logits with cross-entropy that skips ignored pixels, and validates
with the confusion-matrix metrics of :mod:`cvkit.eval.segmentation` (``best.pt`` follows mIoU).
``model.pretrained`` initializes the segmenter's backbone.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from cvkit.engine.tasks import Task, register_task
from cvkit.errors import DatasetError
from cvkit.eval.segmentation import IGNORE_INDEX, SegmentationEvaluator
from cvkit.structures import Target


def stack_semantic(targets: Sequence[Target]) -> Tensor:
    """The batch's semantic masks as one ``Tensor[B, H, W]`` int64 (255 = ignore).

    Raises:
        DatasetError: a target has no ``semantic`` mask (the dataset was not loaded for the
            ``segment`` task) or the masks differ in size.
    """
    masks = []
    for target in targets:
        if target.semantic is None:
            raise DatasetError(
                f"image {target.image_id}: target has no semantic mask; a segmentation "
                "dataset must give one per image"
            )
        masks.append(target.semantic)
    sizes = {tuple(mask.shape) for mask in masks}
    if len(sizes) > 1:
        raise DatasetError(f"semantic masks of one batch differ in size: {sorted(sizes)}")
    return torch.stack(masks).long()


def segmentation_loss(logits: Tensor, semantic: Tensor) -> Tensor:
    """Mean cross-entropy over the pixels that are not ignored.

    Args:
        logits: ``Tensor[B, C, H, W]``.
        semantic: ``Tensor[B, H, W]`` int64 class indices, 255 = ignore.

    Returns:
        A scalar; 0 (with a gradient) when every pixel is ignored.
    """
    if not bool((semantic != IGNORE_INDEX).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float(), semantic, ignore_index=IGNORE_INDEX)


@register_task("segment")
class SegmentTask(Task):
    """Semantic segmentation with any model that returns ``logits [B, C, H, W]``."""

    best_metric = "mIoU"

    def loss(self, model: nn.Module, batch: Any) -> dict[str, Tensor]:
        """``{"ce": cross-entropy}`` of ``model(images)`` against the stacked semantic masks."""
        images, targets = batch
        return {"ce": segmentation_loss(model(images), stack_semantic(targets))}

    def evaluate(
        self, model: nn.Module, loader: DataLoader, device: torch.device
    ) -> dict[str, float]:
        """``mIoU``, ``pixel_acc`` and ``IoU/<class>`` over ``loader``, from one confusion matrix.

        The number of classes is the model's output channels; classes are named after
        ``loader.dataset.classes`` when that list has one name per channel.
        """
        evaluator: SegmentationEvaluator | None = None
        names = list(getattr(loader.dataset, "classes", []) or [])
        with torch.no_grad():
            for batch in loader:
                images, targets = self.to_device(batch, device)
                logits = model(images)
                if evaluator is None:
                    channels = logits.shape[1]
                    evaluator = SegmentationEvaluator(
                        channels, names if len(names) == channels else None
                    )
                evaluator.update(logits.argmax(1), stack_semantic(targets))
        if evaluator is None:
            raise DatasetError("the validation split is empty: no image to evaluate")
        return evaluator.compute()

    def describe(self, metrics: dict[str, Any]) -> str:
        """mIoU and pixel accuracy, then the IoU of every class."""
        head = f"mIoU {metrics['mIoU']:.4f} pixel_acc {metrics['pixel_acc']:.4f}"
        classes = " ".join(
            f"{key[4:]} {value:.3f}" for key, value in metrics.items() if key.startswith("IoU/")
        )
        return f"{head} | IoU {classes}" if classes else head

    @classmethod
    def export_dynamic_axes(
        cls, input_name: str, outputs: tuple[str, ...]
    ) -> dict[str, dict[int, str]]:
        """A fully convolutional segmenter takes and returns any height and width too."""
        from cvkit.export.onnx import dynamic_axes

        return dynamic_axes((input_name, *outputs), spatial=True)

    @classmethod
    def predict_folder(
        cls,
        paths: list[Path],
        weights: str | Path,
        out: str | Path,
        score_threshold: float | None = None,
    ) -> Path:
        """Class masks at the original size, colour overlays and ``predictions.json``
        (:func:`cvkit.engine.predict_segment.predict_segments`)."""
        from cvkit.engine.predict_segment import predict_segments

        return predict_segments(paths, weights, out)
