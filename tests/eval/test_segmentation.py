"""Confusion-matrix segmentation metrics against hand computations and a brute-force count."""

import math

import pytest
import torch

from cvkit.eval.segmentation import (
    SegmentationEvaluator,
    class_iou,
    confusion_matrix,
    mean_iou,
    pixel_accuracy,
)

# 3 classes, two ignored pixels (255).
TARGET = torch.tensor([[0, 0, 1, 1], [0, 2, 1, 255], [2, 2, 255, 1]])
PREDICTION = torch.tensor([[0, 1, 1, 1], [0, 2, 2, 0], [2, 0, 1, 1]])
# Rows are truth, columns prediction, counted by hand over the 10 scored pixels.
CONFUSION = torch.tensor([[2, 1, 0], [0, 3, 1], [1, 0, 2]])


def test_hand_computed_example():
    confusion = confusion_matrix(PREDICTION, TARGET, num_classes=3)
    assert torch.equal(confusion, CONFUSION)
    assert pixel_accuracy(confusion) == pytest.approx(7 / 10)
    # IoU_c = TP / (row sum + column sum - TP)
    expected_iou = [2 / (3 + 3 - 2), 3 / (4 + 4 - 3), 2 / (3 + 3 - 2)]
    torch.testing.assert_close(
        class_iou(confusion), torch.tensor(expected_iou, dtype=torch.float64)
    )
    assert mean_iou(confusion) == pytest.approx((0.5 + 0.6 + 0.5) / 3)


def test_ignored_pixels_count_nowhere():
    other = PREDICTION.clone()
    ignored = TARGET == 255
    other[ignored] = 2  # a different guess at ignored pixels changes nothing
    assert torch.equal(confusion_matrix(other, TARGET, 3), CONFUSION)
    assert confusion_matrix(PREDICTION, TARGET, 3).sum() == (~ignored).sum()


def test_custom_ignore_index():
    target = TARGET.clone()
    target[target == 255] = -1
    assert torch.equal(confusion_matrix(PREDICTION, target, 3, ignore_index=-1), CONFUSION)


def test_absent_class_is_nan_and_left_out_of_the_mean():
    confusion = confusion_matrix(PREDICTION, TARGET, num_classes=4)
    iou = class_iou(confusion)
    assert math.isnan(iou[3])
    assert mean_iou(confusion) == pytest.approx(mean_iou(CONFUSION))


def test_class_predicted_but_never_true_scores_zero():
    target = torch.tensor([0, 0, 0, 0])
    prediction = torch.tensor([0, 0, 1, 1])
    iou = class_iou(confusion_matrix(prediction, target, 2))
    assert iou.tolist() == [0.5, 0.0]


def test_matches_a_brute_force_count_on_random_data():
    generator = torch.Generator().manual_seed(0)
    target = torch.randint(0, 5, (3, 17, 13), generator=generator)
    target[torch.rand(target.shape, generator=generator) < 0.1] = 255
    prediction = torch.randint(0, 5, (3, 17, 13), generator=generator)
    expected = torch.zeros(5, 5, dtype=torch.int64)
    for t, p in zip(target.flatten().tolist(), prediction.flatten().tolist(), strict=True):
        if t != 255:
            expected[t, p] += 1
    assert torch.equal(confusion_matrix(prediction, target, 5), expected)


def test_evaluator_accumulates_batches_like_one_pass():
    generator = torch.Generator().manual_seed(1)
    target = torch.randint(0, 3, (4, 8, 8), generator=generator)
    prediction = torch.randint(0, 3, (4, 8, 8), generator=generator)
    evaluator = SegmentationEvaluator(3, class_names=["bg", "circle", "square"])
    evaluator.update(prediction[:1], target[:1])
    evaluator.update(prediction[1:], target[1:])
    whole = confusion_matrix(prediction, target, 3)
    assert torch.equal(evaluator.confusion, whole)
    metrics = evaluator.compute()
    assert metrics["mIoU"] == pytest.approx(mean_iou(whole))
    assert metrics["pixel_acc"] == pytest.approx(pixel_accuracy(whole))
    assert metrics["IoU/circle"] == pytest.approx(float(class_iou(whole)[1]))
    evaluator.reset()
    assert evaluator.confusion.sum() == 0
    assert math.isnan(evaluator.compute()["mIoU"])


def test_out_of_range_values_are_errors():
    with pytest.raises(ValueError, match="target holds class 7"):
        confusion_matrix(torch.zeros(2, dtype=torch.long), torch.tensor([0, 7]), 3)
    with pytest.raises(ValueError, match="prediction holds class 3"):
        confusion_matrix(torch.tensor([0, 3]), torch.zeros(2, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="differ in shape"):
        confusion_matrix(torch.zeros(2, 2), torch.zeros(4), 3)
    with pytest.raises(ValueError, match="2 class names given for 3 classes"):
        SegmentationEvaluator(3, class_names=["a", "b"])
