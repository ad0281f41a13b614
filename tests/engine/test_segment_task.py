"""The segment task: ignore-aware cross-entropy, mIoU validation, registry lookup."""

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from cvkit.config import load_config
from cvkit.engine.tasks import get_task
from cvkit.engine.tasks.segment import SegmentTask, segmentation_loss, stack_semantic
from cvkit.errors import DatasetError
from cvkit.geometry import Geometry
from cvkit.structures import Target


def semantic_target(semantic: torch.Tensor) -> Target:
    """A segmentation sample's target: no boxes, the ``[H, W]`` class mask."""
    size = tuple(semantic.shape)
    return Target(
        torch.zeros(0, 4),
        torch.zeros(0, dtype=torch.int64),
        Geometry(size, (1.0, 1.0)),
        semantic=semantic,
    )


def test_registered_under_segment():
    assert get_task("segment") is SegmentTask
    assert SegmentTask.best_metric == "mIoU"


def test_loss_is_cross_entropy_averaged_over_scored_pixels():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 5, requires_grad=True)
    semantic = torch.randint(0, 3, (2, 4, 5))
    semantic[0, 0] = 255
    semantic[1, :, 1] = 255
    # -log softmax of the true class, summed over non-ignored pixels, divided by their number
    log_probs = logits.log_softmax(1).permute(0, 2, 3, 1)
    keep = semantic != 255
    expected = -log_probs[keep].gather(1, semantic[keep][:, None]).sum() / keep.sum()
    loss = segmentation_loss(logits, semantic)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    # ignored pixels get no gradient
    assert not logits.grad[0, :, 0].any() and not logits.grad[1, :, :, 1].any()


def test_all_ignored_batch_gives_zero_loss_with_a_graph():
    logits = torch.randn(1, 2, 3, 3, requires_grad=True)
    loss = segmentation_loss(logits, torch.full((1, 3, 3), 255))
    assert loss.item() == 0.0
    loss.backward()
    assert logits.grad is not None


def test_stack_semantic_checks_targets():
    masks = [torch.zeros(4, 5, dtype=torch.int64), torch.ones(4, 5, dtype=torch.int64)]
    stacked = stack_semantic([semantic_target(m) for m in masks])
    assert stacked.shape == (2, 4, 5) and stacked.dtype == torch.int64
    unlabelled = semantic_target(torch.zeros(4, 5))
    unlabelled.semantic, unlabelled.image_id = None, 7
    with pytest.raises(DatasetError, match="image 7: target has no semantic mask"):
        stack_semantic([unlabelled])
    with pytest.raises(DatasetError, match="differ in size"):
        stack_semantic([semantic_target(torch.zeros(4, 5)), semantic_target(torch.zeros(5, 4))])


class _Loader(list):
    """A list of batches that looks like a DataLoader over a two-class dataset."""

    dataset = SimpleNamespace(classes=["background", "disc"])


class _OneHot(nn.Module):
    """Predicts class 1 where the first image channel is positive."""

    def forward(self, images):
        positive = (images[:, :1] > 0).float()
        return torch.cat([1 - positive, positive], dim=1)


def test_evaluate_is_miou_of_argmax_predictions():
    images = torch.zeros(2, 3, 2, 3)
    images[0, 0, 0, :2] = 1.0  # predicted class 1 at (0, 0), (0, 1) of image 0
    semantic = torch.tensor([[[1, 0, 0], [0, 0, 255]], [[0, 0, 0], [1, 0, 0]]])
    batches = _Loader([(images[i : i + 1], [semantic_target(semantic[i])]) for i in range(2)])
    task = SegmentTask(load_config(None, ["task=segment", "model.name=fcn"]))
    metrics = task.evaluate(_OneHot(), batches, torch.device("cpu"))
    # truth/prediction pairs over 11 scored pixels: (1,1) once, (0,1) once, (1,0) once,
    # (0,0) eight times -> IoU_0 = 8/10, IoU_1 = 1/3.
    assert metrics["pixel_acc"] == pytest.approx(9 / 11)
    assert metrics["IoU/background"] == pytest.approx(0.8)
    assert metrics["IoU/disc"] == pytest.approx(1 / 3)
    assert metrics["mIoU"] == pytest.approx((0.8 + 1 / 3) / 2)
    text = task.describe(metrics)
    assert text.startswith("mIoU 0.5667 pixel_acc 0.8182") and "disc 0.333" in text


def test_evaluate_on_an_empty_split_is_an_error():
    task = SegmentTask(load_config(None, ["task=segment"]))
    with pytest.raises(DatasetError, match="empty"):
        task.evaluate(_OneHot(), _Loader(), torch.device("cpu"))


def test_pretrained_file_initializes_the_backbone(tmp_path):
    from cvkit.models.backbones import create_backbone

    torch.manual_seed(3)
    source = create_backbone("resnet18_tiny")
    path = tmp_path / "resnet18_tiny.pth"
    torch.save(source.state_dict(), path)
    overrides = ["task=segment", "model.name=fcn", "model.backbone=resnet18_tiny"]
    task = SegmentTask(load_config(None, [*overrides, f"model.pretrained={path}"]))
    model = task.build_model(4)
    for key, value in source.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[key], value), key
    fresh = SegmentTask(load_config(None, overrides)).build_model(4)
    assert not torch.equal(fresh.backbone.conv1.weight, source.conv1.weight)
