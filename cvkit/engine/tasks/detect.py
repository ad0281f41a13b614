"""The object-detection task: the detector computes its own losses; validation is COCO mAP.

Training calls ``model(images, targets)``, which returns a ``dict[str, Tensor]`` of losses.
Validation runs ``model(images)`` in eval mode (one :class:`~cvkit.structures.Instances` per
image), maps each image's boxes from network-input pixels back to original pixels with the
target's :class:`~cvkit.geometry.Geometry` (:meth:`Instances.to_original`), and scores them against
``dataset.coco_ground_truth()`` with :func:`cvkit.eval.coco.evaluate_coco`. ``best.pt``
follows ``mAP`` (AP@[.5:.95]). A model whose detections carry masks (Mask R-CNN) is also
scored on them (COCO ``segm``) against the split's segmentations: ``segm_mAP``, ``segm_mAP50`` ...
``model.pretrained`` initializes the detector's backbone.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from cvkit.engine.tasks import Task, register_task
from cvkit.errors import DatasetError, ExportError
from cvkit.eval.coco import CocoMetrics, detections_to_coco, evaluate_coco, write_coco_results
from cvkit.logs import progress

if TYPE_CHECKING:
    from cvkit.config import Config
    from cvkit.config.export import ExportConfig
    from cvkit.runtime.metadata import ModelMetadata


@register_task("detect")
class DetectTask(Task):
    """Object detection with any model that follows the detector contract."""

    best_metric = "mAP"
    exports_nms = True

    def loss(self, model: nn.Module, batch: Any) -> dict[str, Tensor]:
        """The detector's own loss dict for ``(images, targets)``."""
        images, targets = batch
        return model(images, targets)

    def evaluate(
        self,
        model: nn.Module,
        loader: DataLoader,
        device: torch.device,
        plots: str | Path | None = None,
        detections: str | Path | None = None,
    ) -> dict[str, float]:
        """COCO metrics as a flat dict: ``mAP``, ``mAP50``, ``mAP75``, ``mAP_small`` ...,
        ``AP/<class>``, and the same behind ``segm_`` for a model with masks; with ``plots``,
        the detection plots (boxes) are written there too, and with ``detections`` the scored
        detections as a COCO results file (see :meth:`evaluate_coco_types`)."""
        metrics = self.evaluate_coco_types(model, loader, device, plots, detections)
        out = metrics["bbox"].as_dict()
        if "segm" in metrics:
            out.update(metrics["segm"].as_dict("segm_"))
        return out

    def evaluate_coco(
        self,
        model: nn.Module,
        loader: DataLoader,
        device: torch.device,
        plots: str | Path | None = None,
    ) -> CocoMetrics:
        """The box metrics of :meth:`evaluate_coco_types`."""
        return self.evaluate_coco_types(model, loader, device, plots)["bbox"]

    @torch.no_grad()
    def evaluate_coco_types(
        self,
        model: nn.Module,
        loader: DataLoader,
        device: torch.device,
        plots: str | Path | None = None,
        detections: str | Path | None = None,
    ) -> dict[str, CocoMetrics]:
        """Run ``model`` (eval mode) over ``loader`` and score it with COCO mAP: ``{"bbox": ...}``
        plus ``"segm"`` when the detections carry masks.

        With ``plots`` (a folder), :func:`cvkit.eval.plots.write_detection_plots` draws the PR
        curves, the confusion matrix and the worst images of the same detections there. With
        ``detections`` (a file), the very records that were scored are written there by
        :func:`cvkit.eval.coco.write_coco_results`: a COCO results list with the dataset's image
        and category ids, boxes ``[x, y, w, h]`` in original pixels and, for masks, compressed
        RLE ``segmentation``.

        A model with an ``inference`` attribute (score threshold, NMS IoU, ``max_det``) gets
        this task's ``eval:`` section first, so ``--set eval.score_threshold=...`` applies.
        ``loader.dataset`` must provide ``coco_ground_truth()`` (original pixels) and, for
        non-trivial category maps, ``category_ids`` (contiguous label → COCO category id); mask
        scoring needs its ``records`` (the segmentations; objects without one count as their
        box, as in training).

        Raises:
            DatasetError: the dataset cannot provide COCO ground truth (or, for masks, records).
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
        results, has_masks = [], False
        for images, targets in progress(loader, desc="val", lines=1):
            outputs = model(images.to(device))
            for output, target in zip(outputs, targets, strict=True):
                # Converted per image: masks at the original size would not fit for a whole split.
                detection = output.to_original(target.geometry)
                has_masks |= getattr(detection, "masks", None) is not None
                results += detections_to_coco([detection], [target.image_id], category_ids)
        if detections is not None:
            write_coco_results(detections, results)
        backend = self.config.eval.coco_backend
        if plots is not None:
            from cvkit.eval.plots import write_detection_plots

            records = getattr(dataset, "records", None)
            write_detection_plots(plots, ground_truth, results, records, backend=backend)
        metrics = {"bbox": evaluate_coco(ground_truth, results, backend=backend)}
        if has_masks:
            metrics["segm"] = evaluate_coco(
                _segm_ground_truth(dataset), results, backend=backend, iou_type="segm"
            )
        return metrics

    def describe(self, metrics: dict[str, Any]) -> str:
        """``mAP 0.5123 mAP50 0.8012 mAP75 0.5544`` (then ``segm_mAP ...`` with masks)."""
        keys = ("mAP", "mAP50", "mAP75", "segm_mAP", "segm_mAP50", "segm_mAP75")
        return " ".join(f"{key} {metrics[key]:.4f}" for key in keys if key in metrics)

    @classmethod
    def export_metadata(cls, config: Config, classes: list[str]) -> ModelMetadata:
        """The base metadata, with ``mask_size`` (twice ``mask_roi_size``) for a model whose
        section has a mask branch (``model.mask_rcnn``)."""
        metadata = super().export_metadata(config, classes)
        mask_roi_size = getattr(getattr(config.model, config.model.name, None), "mask_roi_size", 0)
        return dataclasses.replace(metadata, mask_size=2 * mask_roi_size)

    @classmethod
    def export_graph(
        cls, model: nn.Module, metadata: ModelMetadata, options: ExportConfig
    ) -> nn.Module:
        """``model.candidates`` then, with ``options.nms``, padded NMS
        (:class:`cvkit.export.onnx.DetectorGraph`; inputs the model declares after the images,
        ``model.export_inputs``, are passed on to ``candidates``), and the masks of the
        detections when the model declares a ``masks`` output
        (:class:`cvkit.export.onnx.MaskDetectorGraph`).

        Raises:
            ExportError: the model has no ``candidates(images)`` method, or masks are asked
                for without NMS in the graph or without ``metadata.mask_size``.
        """
        from cvkit.export.onnx import DetectorGraph, MaskDetectorGraph, export_output_names

        if not hasattr(model, "candidates"):
            raise ExportError(
                f"{type(model).__name__} has no candidates(images) method; detectors must "
                "implement it to be exported"
            )
        masks = "masks" in export_output_names(model, metadata)
        if masks and not (options.nms and metadata.nms_in_graph):
            raise ExportError(
                f"{type(model).__name__}: masks are computed for the detections after NMS; "
                "export it with NMS in the graph (export.nms)"
            )
        if masks and not metadata.mask_size:
            raise ExportError(
                f"{type(model).__name__} exports masks but metadata.mask_size is 0: its "
                "model section must set mask_roi_size"
            )
        graph = MaskDetectorGraph if masks else DetectorGraph
        return graph(
            model,
            options.nms,
            metadata.score_threshold,
            metadata.iou_threshold,
            metadata.max_det,
            metadata.topk_candidates,
            options.half,
            options.soft_sigma,
        )

    @classmethod
    def export_outputs(cls, metadata: ModelMetadata) -> tuple[str, ...]:
        """``boxes, scores, labels, num_dets`` with NMS in the graph, else the candidates'
        ``boxes, scores``; a model adds outputs (Mask R-CNN's ``masks``) by declaring
        ``export_output_names(metadata)``."""
        if metadata.nms_in_graph:
            return ("boxes", "scores", "labels", "num_dets")
        return ("boxes", "scores")

    @classmethod
    def compare_exported(
        cls,
        expected: list[Any],
        got: list[Any],
        metadata: ModelMetadata,
        tolerances: Any,
        label: str,
    ) -> dict[str, float]:
        """:func:`cvkit.export.onnx.compare_detections` on the detection outputs; masks (the
        next output with ``metadata.mask_size``) of the real detections within the score
        tolerance; any further output a model declares as logits
        (:func:`cvkit.export.onnx.compare_logits`, reported as ``extra``)."""
        from cvkit.export.onnx import compare_detections, compare_logits

        standard = len(cls.export_outputs(metadata))
        differences = compare_detections(
            expected[:standard], got[:standard], metadata, tolerances, label
        )
        if metadata.nms_in_graph and metadata.mask_size:
            valid = np.arange(got[4].shape[1])[None, :] < got[3][:, None]
            diff = float(np.abs(got[4][valid] - expected[4][valid]).max(initial=0.0))
            if diff > tolerances.score:
                raise ExportError(
                    f"{label}: parity check failed: masks differ from torch by up to {diff:.3g}"
                )
            differences["masks"] = diff
            standard += 1
        if len(got) > standard:
            extra = compare_logits(expected[standard:], got[standard:], tolerances, label)
            differences["extra"] = extra["logits"]
        return differences

    @classmethod
    def checkpoint_predictor(cls, weights: str | Path, device: str = "auto") -> Any:
        """:class:`cvkit.engine.predict.CheckpointDetector` (``Detections`` per image)."""
        from cvkit.engine.predict import CheckpointDetector

        return CheckpointDetector(weights, device=device)

    @classmethod
    def predict_folder(
        cls,
        paths: list[Path],
        weights: str | Path,
        out: str | Path,
        score_threshold: float | None = None,
    ) -> Path:
        """Detections scoring at least ``score_threshold`` (default
        :data:`cvkit.engine.predict.DEFAULT_SCORE_THRESHOLD`), drawn, and ``predictions.json``
        with boxes in original pixels."""
        from cvkit.engine.predict import (
            DEFAULT_SCORE_THRESHOLD,
            PredictionWriter,
            open_model,
            predict_images,
        )

        detector = open_model(weights, cls.checkpoint_predictor)
        threshold = DEFAULT_SCORE_THRESHOLD if score_threshold is None else score_threshold
        writer = PredictionWriter(out, detector.classes)
        total = 0
        predicted = predict_images(paths, detector, detector.batch_size, writer.skip)
        for path, image, prediction in predicted:
            kept = prediction.above(threshold)
            writer.add(path, image, kept)
            total += len(kept.scores)
        json_path = writer.finish()
        print(
            f"{total} detections, {writer.summary('predicted')}; drawings and JSON in "
            f"{json_path.parent}"
        )
        return json_path


def _segm_ground_truth(dataset: Any) -> dict[str, Any]:
    """``dataset``'s COCO ground truth with the segmentations (original pixels)."""
    records = getattr(dataset, "records", None)
    if records is None:
        raise DatasetError(
            f"{type(dataset).__name__}: mask (segm) validation needs the dataset's records"
        )
    from cvkit.data.formats.coco import coco_dict

    return coco_dict(records, include_segmentation=True)
