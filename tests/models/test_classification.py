"""Classification: crops and folders as datasets, metrics against hand-computed values, the
classify task end to end, and (slow) a tiny ResNet reaching 95% top-1 on shape crops."""

import math

import cv2
import numpy as np
import pytest
import torch

from cvkit.data.records import Records, Sample
from cvkit.errors import DatasetError
from cvkit.models.classification.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageFolderDataset,
    ObjectCropDataset,
    crop_square,
)
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


def _white_square_records() -> Records:
    image = np.zeros((40, 60, 3), np.uint8)
    image[10:20, 30:40] = 255  # class 1: a white 10x10 square at x 30..40, y 10..20
    image[25:35, 0:5] = 128  # class 0: grey bar touching the left border
    sample = Sample(
        image_id=1,
        file_name="a.png",
        height=40,
        width=60,
        image=image,
        boxes=np.array([[30, 10, 40, 20], [0, 25, 5, 35]]),
        labels=np.array([1, 0]),
    )
    return Records([sample], ["bar", "square"])


def test_crop_square_maps_the_box_onto_the_output():
    records = _white_square_records()
    crop = crop_square(records.samples[0].image, [30, 10, 40, 20], 20)
    assert crop.shape == (20, 20, 3)
    assert crop[1:-1, 1:-1].min() == 255  # the box fills the crop
    padded = crop_square(records.samples[0].image, [-10, 25, 5, 35], 15)
    assert padded[:, :9].max() == 0  # outside the image: zero padding
    assert padded[4:10, 11:14].min() == 128


def test_object_crops_are_labelled_normalized_tensors():
    dataset = ObjectCropDataset(_white_square_records(), 16, margin=0.0, skip_truncated=False)
    assert len(dataset) == 2 and dataset.classes == ["bar", "square"]
    image, label = dataset[0]
    assert label == 1 and image.shape == (3, 16, 16) and image.dtype == torch.float32
    white = (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(image[:, 8, 8], white)
    assert dataset.labels == [1, 0]
    with pytest.raises(DatasetError, match="no objects"):
        ObjectCropDataset(Records([], ["x"]), 16)


def test_image_folder_reads_classes_from_subfolders(tmp_path):
    for name, value in (("dog", 200), ("cat", 50)):
        (tmp_path / name).mkdir()
        for index in range(2):
            cv2.imwrite(
                str(tmp_path / name / f"{index}.png"), np.full((30, 50, 3), value, np.uint8)
            )
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    dataset = ImageFolderDataset(tmp_path, image_size=24)
    assert dataset.classes == ["cat", "dog"] and len(dataset) == 4
    image, label = dataset[3]
    assert label == 1 and image.shape == (3, 24, 24)
    expected = (200 / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(image.mean(dim=(1, 2)), expected)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="empty"):
        ImageFolderDataset(tmp_path, 24)
    with pytest.raises(DatasetError, match="not a folder"):
        ImageFolderDataset(tmp_path / "missing", 24)


class _Oracle(torch.nn.Module):
    """Predicts class 1 for bright crops (the white square) and 0 otherwise."""

    def forward(self, images):
        bright = images.mean(dim=(1, 2, 3)) > 1.0
        return torch.stack([(~bright).float(), bright.float()], dim=1)


def test_classify_task_evaluates_accuracy_and_confusion():
    from cvkit.config import load_config
    from cvkit.engine.tasks import get_task

    task = get_task("classify")(load_config(None, ["task=classify", "data.batch_size=1"]))
    dataset = ObjectCropDataset(_white_square_records(), 16, margin=0.0, skip_truncated=False)
    loader = task.build_loader(dataset, train=False)
    metrics = task.evaluate(_Oracle(), loader, torch.device("cpu"))
    assert metrics["top1"] == 1.0 and metrics["acc/bar"] == 1.0
    assert torch.equal(task.confusion, torch.eye(2, dtype=torch.long))
    assert task.describe(metrics).startswith("top1 1.0000")
    images, labels = next(iter(task.build_loader(dataset, train=True)))
    assert images.shape == (1, 3, 16, 16) and labels.dtype == torch.int64


def test_truncated_and_occluded_objects_can_be_left_out():
    records = _white_square_records()
    assert len(ObjectCropDataset(records, 16, skip_truncated=False)) == 2
    assert ObjectCropDataset(records, 16).labels == [1]  # the bar touches the left border


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
