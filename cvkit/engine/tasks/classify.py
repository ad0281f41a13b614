"""The image-classification task: cross-entropy training, top-1 / per-class accuracy validation.

Data (``data:`` section): a split without ``path`` is the built-in synthetic shapes dataset
(``data.synthetic``) cut into one crop per shape (class = shape); a ``path`` is an ImageFolder
(one sub-folder of images per class) placed into the ``data.image_size`` square by
``data.resize`` exactly as the exported runtime places it; both are normalized with
``data.mean``/``data.std`` (:mod:`cvkit.data.classification`). Batches are
``(images [B, 3, S, S], labels [B] int64)``.

The model is :func:`cvkit.models.build.build_model`'s, then ``model.pretrained``,
``model.reuse_classes`` and ``model.freeze_at`` are applied
(:func:`cvkit.models.transfer.prepare_finetuning`) using the training split's class names.
``best.pt`` follows ``top1``; the last validation's confusion matrix stays on the task
(:attr:`ClassifyTask.confusion`); :func:`train_and_report` (``scripts/train_classifier.py``)
runs ``cvkit train`` (:func:`cvkit.engine.commands.train`) and then draws ``best.pt``'s
confusion matrix into the run's ``plots/`` (:func:`plot_best_confusion`).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from cvkit.data.classification import ObjectCropDataset
from cvkit.engine.tasks import Task, register_task
from cvkit.errors import DatasetError
from cvkit.logs import get_logger
from cvkit.resources import resolve_workers

logger = get_logger("classify")
# Synthetic shapes are convex: a visible mask filling less of its hull than this is occluded.
SHAPE_MIN_SOLIDITY = 0.9


def shape_crops(records: Any, data: Any, train: bool) -> ObjectCropDataset:
    """One crop per (mostly visible) shape of ``records`` at ``data.image_size``, normalized with
    ``data.mean``/``data.std``; ``train`` adds the random crop and flip."""
    return ObjectCropDataset(
        records,
        data.image_size,
        data.mean,
        data.std,
        train=train,
        min_solidity=SHAPE_MIN_SOLIDITY,
    )


@register_task("classify")
class ClassifyTask(Task):
    """Classification with any model mapping ``images [B, 3, H, W]`` to ``logits [B, C]``."""

    best_metric = "top1"

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.classes: list[str] | None = None
        self.confusion: Tensor | None = None

    def build_dataset(self, split: str) -> Dataset:
        """Crops of the synthetic shapes or of a detection split, or an ImageFolder."""
        from cvkit.data.classification import ImageFolderDataset

        data = self.config.data
        source = getattr(data, split)
        train = split == "train"
        if source.path is None:
            from cvkit.data.synthetic import synthetic_records

            count = data.synthetic.num_train if train else data.synthetic.num_val
            records, _ = synthetic_records(
                count, data.synthetic.image_size, data.synthetic.seed, split
            )
            dataset: Dataset = shape_crops(records, data, train)
        else:
            dataset = ImageFolderDataset(
                source.path, data.image_size, data.mean, data.std, data.resize, train=train
            )
        if train:
            self.classes = list(dataset.classes)
        logger.info("%s split: %d samples, classes %s", split, len(dataset), dataset.classes)
        return dataset

    def build_loader(self, dataset: Dataset, train: bool, distributed: bool = False) -> DataLoader:
        """Plain ``(image, label)`` batches; shuffled (and last partial batch dropped) to train."""
        data = self.config.data
        generator = torch.Generator().manual_seed(self.config.seed)
        sampler = (
            DistributedSampler(dataset, shuffle=train, seed=self.config.seed)
            if distributed
            else None
        )
        return DataLoader(
            dataset,
            batch_size=data.batch_size,
            shuffle=train and sampler is None,
            sampler=sampler,
            num_workers=resolve_workers(data.workers),
            drop_last=train and len(dataset) > data.batch_size,
            generator=generator,
            persistent_workers=False,
        )

    def build_model(self, num_classes: int) -> nn.Module:
        """The configured model with ``model.pretrained`` / ``freeze_at`` applied."""
        from cvkit.models.build import build_model
        from cvkit.models.transfer import prepare_finetuning

        model = build_model(self.config, num_classes)
        prepare_finetuning(model, self.config.model, self.classes)
        return model

    @classmethod
    def checkpoint_predictor(cls, weights: Any, device: str = "auto") -> Any:
        """:class:`cvkit.engine.predict.CheckpointClassifier` (``Classification`` per image)."""
        from cvkit.engine.predict import CheckpointClassifier

        return CheckpointClassifier(weights, device=device)

    def loss(self, model: nn.Module, batch: Any) -> dict[str, Tensor]:
        """``{"ce": cross-entropy}`` of ``model(images)`` against the labels."""
        images, labels = batch
        return {"ce": F.cross_entropy(model(images).float(), labels)}

    def evaluate(
        self, model: nn.Module, loader: DataLoader, device: torch.device
    ) -> dict[str, float]:
        """``top1``, ``top5`` (over 5 classes), ``loss`` and ``acc/<class>`` over ``loader``."""
        from cvkit.models.classification.metrics import confusion_matrix, summarize, topk_correct

        classes = list(getattr(loader.dataset, "classes", []))
        matrix = torch.zeros(len(classes), len(classes), dtype=torch.long)
        top5 = 0
        loss_sum = 0.0
        with torch.no_grad():
            for batch in loader:
                images, labels = self.to_device(batch, device)
                logits = model(images).float()
                if logits.shape[1] != len(classes):
                    raise DatasetError(
                        f"model has {logits.shape[1]} outputs but the val split has "
                        f"{len(classes)} classes {classes}"
                    )
                loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
                top5 += topk_correct(logits, labels, 5)
                matrix += confusion_matrix(logits.argmax(1), labels, len(classes))
        total = int(matrix.sum())
        if total == 0:
            raise DatasetError("the validation split is empty: no image to evaluate")
        self.confusion = matrix
        metrics = summarize(matrix, classes)
        result = {"top1": metrics.pop("top1"), "loss": loss_sum / total}
        if len(classes) > 5:
            result["top5"] = top5 / total
        return {**result, **metrics}

    def describe(self, metrics: dict[str, Any]) -> str:
        """Top-1 (and top-5) accuracy, then the accuracy of every class."""
        head = f"top1 {metrics['top1']:.4f}"
        if "top5" in metrics:
            head += f" top5 {metrics['top5']:.4f}"
        per_class = " ".join(
            f"{key[4:]} {value:.3f}"
            for key, value in metrics.items()
            if key.startswith("acc/") and not math.isnan(value)
        )
        return f"{head} | acc {per_class}" if per_class else head


def train_and_report(args: argparse.Namespace) -> int:
    """``cvkit train`` (:func:`cvkit.engine.commands.train`, same ``args``) for a classification
    config, then :func:`plot_best_confusion` of the run; returns ``train``'s exit code."""
    import json
    import tempfile

    from cvkit.engine.commands import train

    with tempfile.TemporaryDirectory() as tmp:
        summary = Path(args.json) if args.json else Path(tmp) / "metrics.json"
        code = train(argparse.Namespace(**{**vars(args), "json": str(summary)}))
        if code != 0:
            return code
        run = Path(json.loads(summary.read_text(encoding="utf-8"))["run"])
    path, metrics = plot_best_confusion(run)
    print(f"confusion matrix (best.pt, val top-1 {metrics['top1']:.4f}): {path}")
    return 0


def plot_best_confusion(run: str | Path) -> tuple[Path, dict[str, float]]:
    """Evaluate ``<run>/weights/best.pt`` on its config's val split (CPU) and draw the
    confusion matrix to ``<run>/plots/confusion_matrix.png``.

    Returns:
        ``(png path, the validation metrics)``.
    """
    from cvkit.config import Config
    from cvkit.engine.checkpoint import load_checkpoint
    from cvkit.models.classification.metrics import plot_confusion_matrix
    from cvkit.models.loading import load_model

    run = Path(run)
    weights = run / "weights" / "best.pt"
    checkpoint = load_checkpoint(weights)
    model = load_model(checkpoint, source=weights)
    task = ClassifyTask(Config.model_validate(checkpoint["config"]))
    val = task.build_dataset("val")
    metrics = task.evaluate(model, task.build_loader(val, train=False), torch.device("cpu"))
    path = plot_confusion_matrix(
        task.confusion, val.classes, run / "plots" / "confusion_matrix.png"
    )
    return path, metrics
