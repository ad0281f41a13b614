"""Classification: metrics against hand-computed values, the classify task's evaluation and
datasets from the config, and (slow) a tiny ResNet reaching 95% top-1 on shape crops."""

import math

import cv2
import numpy as np
import pytest
import torch

from cvkit.models.classification.metrics import (
    confusion_matrix,
    plot_confusion_matrix,
    summarize,
    topk_correct,
)

torch.set_num_threads(2)


def test_confusion_matrix_counts_pairs():
    predictions = torch.tensor([0, 1, 1, 2, 2, 2, 0])
    targets = torch.tensor([0, 1, 2, 2, 2, 0, 0])
    expected = torch.tensor([[2, 0, 1], [0, 1, 0], [0, 1, 2]])
    assert torch.equal(confusion_matrix(predictions, targets, 3), expected)


def test_summary_accuracy_and_per_class_recall():
    matrix = torch.tensor([[2, 0, 1], [0, 1, 0], [0, 0, 0]])
    metrics = summarize(matrix, ["a", "b", "c"])
    assert metrics["top1"] == pytest.approx(3 / 4)
    assert metrics["acc/a"] == pytest.approx(2 / 3) and metrics["acc/b"] == 1.0
    assert math.isnan(metrics["acc/c"])


def test_topk_correct():
    logits = torch.tensor([[0.1, 0.5, 0.4], [0.9, 0.05, 0.05], [0.2, 0.3, 0.5]])
    targets = torch.tensor([2, 0, 0])
    assert topk_correct(logits, targets, 1) == 1
    assert topk_correct(logits, targets, 2) == 2
    assert topk_correct(logits, targets, 10) == 3


def test_confusion_png_is_written(tmp_path):
    path = plot_confusion_matrix(
        torch.tensor([[5, 1], [0, 4]]), ["cat", "dog"], tmp_path / "cm.png"
    )
    image = cv2.imread(str(path))
    assert image is not None and image.shape[0] > 100 and image.shape[1] > 100


class _Oracle(torch.nn.Module):
    """Predicts class 0 (``bright``) for crops brighter than the normalized 0.5, else 1."""

    def forward(self, images):
        bright = images.mean(dim=(1, 2, 3)) > 0.5
        return torch.stack([bright.float(), (~bright).float()], dim=1)


def test_classify_task_normalizes_with_the_config_and_evaluates_accuracy(tmp_path):
    from cvkit.config import load_config
    from cvkit.engine.tasks import get_task

    for name, value in (("bright", 230), ("dark", 20)):
        (tmp_path / name).mkdir()
        cv2.imwrite(str(tmp_path / name / "0.png"), np.full((20, 30, 3), value, np.uint8))
    overrides = ["task=classify", "data.batch_size=1", "data.image_size=16"]
    overrides += [f"data.val.path={tmp_path}", f"data.train.path={tmp_path}"]
    overrides += ["data.mean=[0.2,0.3,0.4]", "data.std=[0.5,0.5,0.5]"]
    task = get_task("classify")(load_config(None, overrides))
    dataset = task.build_dataset("val")
    image, _ = dataset[0]  # bright: (230 / 255 - mean) / std in the image, zero padding below
    expected = (230 / 255 - torch.tensor([0.2, 0.3, 0.4])) / 0.5
    torch.testing.assert_close(image[:, 0, 0], expected)
    metrics = task.evaluate(_Oracle(), task.build_loader(dataset, train=False), torch.device("cpu"))
    assert metrics["top1"] == 1.0 and metrics["acc/bright"] == 1.0
    assert torch.equal(task.confusion, torch.eye(2, dtype=torch.long))
    assert task.describe(metrics).startswith("top1 1.0000")
    images, labels = next(iter(task.build_loader(task.build_dataset("train"), train=True)))
    assert images.shape == (1, 3, 16, 16) and labels.dtype == torch.int64


@pytest.mark.slow
def test_tiny_resnet_learns_shape_crops(tmp_path):
    from pathlib import Path

    from cvkit.config import load_config
    from cvkit.engine.tasks import get_task
    from cvkit.engine.trainer import Trainer

    torch.set_num_threads(1)  # one thread trains faster than two on a loaded 2-core machine
    config_path = Path(__file__).resolve().parents[2] / "configs" / "classify_resnet.yaml"
    # The shipped config, validated once, after the last epoch (no best-epoch selection).
    config = load_config(config_path, ["train.val_every=100", "train.plots=false"])
    task = get_task("classify")(config)
    train, val = task.build_dataset("train"), task.build_dataset("val")
    torch.manual_seed(config.seed)
    model = task.build_model(len(train.classes))
    loaders = task.build_loader(train, True), task.build_loader(val, False)
    metrics = Trainer(config, task, model, *loaders).fit()
    torch.set_num_threads(2)
    assert metrics["top1"] >= 0.95, task.describe(metrics)
    assert task.confusion.sum() == len(val)
