"""The object-detection task: the detector computes its own losses; validation is COCO mAP.

Training calls ``model(images, targets)``, which returns a ``dict[str, Tensor]`` of losses.
Validation runs ``model(images)`` in eval mode (one :class:`~cvkit.structures.Instances` per
image), maps each image's boxes from network-input pixels back to original pixels with the
target's :class:`~cvkit.geometry.Geometry` (:meth:`Instances.to_original`), and scores them against
``dataset.coco_ground_truth()`` with :func:`cvkit.eval.coco.evaluate_coco`. ``best.pt``
follows ``mAP`` (AP@[.5:.95]). ``model.pretrained`` initializes the detector's backbone.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from cvkit.engine.tasks import Task, register_task
from cvkit.errors import DatasetError
from cvkit.eval.coco import CocoMetrics, detections_to_coco, evaluate_coco
from cvkit.logs import progress


@register_task("detect")
class DetectTask(Task):
    """Object detection with any model that follows the detector contract."""

    best_metric = "mAP"

    def loss(self, model: nn.Module, batch: Any) -> dict[str, Tensor]:
        """The detector's own loss dict for ``(images, targets)``."""
        images, targets = batch
        return model(images, targets)

    def evaluate(
        self, model: nn.Module, loader: DataLoader, device: torch.device
    ) -> dict[str, float]:
        """COCO metrics as a flat dict: ``mAP``, ``mAP50``, ``mAP75``, ``mAP_small`` ...,
        ``AP/<class>``."""
        return self.evaluate_coco(model, loader, device).as_dict()

    @torch.no_grad()
    def evaluate_coco(
        self, model: nn.Module, loader: DataLoader, device: torch.device
    ) -> CocoMetrics:
        """Run ``model`` (eval mode) over ``loader`` and score it with COCO mAP.

        A model with an ``inference`` attribute (score threshold, NMS IoU, ``max_det``) gets
        this task's ``eval:`` section first, so ``--set eval.score_threshold=...`` applies.
        ``loader.dataset`` must provide ``coco_ground_truth()`` (original pixels) and, for
        non-trivial category maps, ``category_ids`` (contiguous label → COCO category id).

        Raises:
            DatasetError: the dataset cannot provide COCO ground truth.
        """
        dataset = loader.dataset
        if not hasattr(dataset, "coco_ground_truth"):
            raise DatasetError(
                f"{type(dataset).__name__}: detection validation needs coco_ground_truth()"
            )
        ground_truth = dataset.coco_ground_truth()
        category_ids = getattr(dataset, "category_ids", None)
        if category_ids is None:
            category_ids = sorted(c["id"] for c in ground_truth["categories"])
        model.eval()
        if hasattr(model, "inference"):
            # Thresholds are this run's eval settings, not the ones frozen into the checkpoint.
            model.inference = self.config.eval
        detections, image_ids = [], []
        for images, targets in progress(loader, desc="val", lines=1):
            outputs = model(images.to(device))
            for output, target in zip(outputs, targets, strict=True):
                detections.append(output.to_original(target.geometry))
                image_ids.append(target.image_id)
        results = detections_to_coco(detections, image_ids, category_ids)
        return evaluate_coco(ground_truth, results, backend=self.config.eval.coco_backend)

    def describe(self, metrics: dict[str, Any]) -> str:
        """``mAP 0.5123 mAP50 0.8012 mAP75 0.5544``."""
        return " ".join(
            f"{key} {metrics[key]:.4f}" for key in ("mAP", "mAP50", "mAP75") if key in metrics
        )
