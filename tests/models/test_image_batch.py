"""Per-image sizes: images of unequal, non-square sizes padded into one ImageBatch give each
image the detections it gets alone; typed results map back to the original image."""

import pytest
import torch
from torch import Tensor, nn

from cvkit.config import load_config
from cvkit.geometry import Geometry
from cvkit.models.build import build_model
from cvkit.models.detection.postprocess import select_detections
from cvkit.structures import ImageBatch, Instances


class BorderExactDetector(nn.Module):
    """A stride-8 detector whose features of padding stay exactly zero (bias-free convolutions
    and ReLU) and score below the threshold there, with anchors in absolute pixels: batched and
    alone must agree when the batch plumbing (padding, per-image sizes, per-image clipping) is
    right. (A network with biases or batch norm sees the padding near the border, so only
    border-exact models can promise equality.)"""

    size_divisibility = 8

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=4, padding=1, bias=False),
            nn.ReLU(),
        )
        self.head = nn.Conv2d(16, 4 + num_classes, 1, bias=False)
        nn.init.normal_(self.head.weight, std=2.0)

    def candidates(self, images: Tensor) -> tuple[Tensor, Tensor]:
        out = self.head(self.body(images))
        height, width = out.shape[-2:]
        ys, xs = torch.meshgrid(
            (torch.arange(height) + 0.5) * 8, (torch.arange(width) + 0.5) * 8, indexing="ij"
        )
        centers = torch.stack([xs, ys], -1).reshape(-1, 2)
        out = out.flatten(2).transpose(1, 2)
        deltas, logits = out[..., :4], out[..., 4:]
        middle = centers + deltas[..., :2] * 16
        half = 8 * torch.exp(deltas[..., 2:].clamp(max=2))
        # zero features (padding) score sigmoid(-3) = 0.05, below the 0.2 threshold
        return torch.cat([middle - half, middle + half], -1), (logits - 3).sigmoid()

    def forward(self, images: Tensor | ImageBatch) -> list[Instances]:
        batch = ImageBatch.of(images)
        boxes, scores = self.candidates(batch.tensor)
        return select_detections(boxes, scores, batch.image_sizes, 0.2, 0.5, 50, 200)


def test_from_tensors_pads_bottom_right_to_the_divisibility():
    a, b = torch.rand(3, 37, 50), torch.rand(3, 20, 65)
    batch = ImageBatch.from_tensors([a, b], size_divisibility=16, pad_value=-1.0)
    assert batch.tensor.shape == (2, 3, 48, 80) and batch.image_sizes == [(37, 50), (20, 65)]
    assert torch.equal(batch.tensor[0, :, :37, :50], a) and torch.equal(
        batch.tensor[1, :, :20, :65], b
    )
    assert (batch.tensor[0, :, 37:] == -1).all() and (batch.tensor[1, :, :, 65:] == -1).all()
    assert len(batch) == 2 and batch.to("cpu").image_sizes == batch.image_sizes
    with pytest.raises(ValueError, match="no images"):
        ImageBatch.from_tensors([])
    with pytest.raises(ValueError, match=r"\[C, h, w\]"):
        ImageBatch.from_tensors([a, torch.rand(1, 20, 20)])


def test_two_non_square_sizes_batched_equal_each_alone():
    torch.manual_seed(0)
    model = BorderExactDetector().eval()
    images = [torch.randn(3, 40, 72), torch.randn(3, 56, 24)]
    with torch.no_grad():
        batched = model(ImageBatch.from_tensors(images, model.size_divisibility))
        alone = [
            model(ImageBatch.from_tensors([image], model.size_divisibility))[0] for image in images
        ]
    for together, single, image in zip(batched, alone, images, strict=True):
        height, width = image.shape[1:]
        assert together.image_size == single.image_size == (height, width)
        assert len(together) == len(single) > 0
        torch.testing.assert_close(together.boxes, single.boxes, rtol=0, atol=1e-5)
        torch.testing.assert_close(together.scores, single.scores, rtol=0, atol=1e-6)
        assert torch.equal(together.labels, single.labels)
        # every box lies inside its own image, not the padded canvas
        assert (together.boxes[:, 0::2] <= width).all() and (
            together.boxes[:, 1::2] <= height
        ).all()


def test_ssd_takes_an_image_batch_like_a_tensor():
    config = load_config(
        None,
        ["task=detect", "model.name=ssd", "model.backbone=resnet18_tiny", "data.image_size=64"],
    )
    torch.manual_seed(0)
    model = build_model(config, 3).eval()
    # resnet18_tiny stages to stride 32, then extra blocks each halve the resolution
    assert model.size_divisibility == 32 * 2**config.model.ssd.extra_blocks
    model.inference = config.eval.model_copy(update={"score_threshold": 0.0})
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        from_tensor = model(images)
        from_batch = model(ImageBatch.of(images))
        # a smaller valid region clips that image's boxes to it
        clipped = model(ImageBatch(images, [(64, 64), (40, 24)]))
    for a, b in zip(from_tensor, from_batch, strict=True):
        assert torch.equal(a.boxes, b.boxes) and torch.equal(a.scores, b.scores)
    assert clipped[1].image_size == (40, 24)
    assert (clipped[1].boxes[:, 0::2] <= 24).all() and (clipped[1].boxes[:, 1::2] <= 40).all()


def test_instances_map_boxes_and_masks_back_to_the_original_image():
    masks = torch.zeros(1, 32, 32)
    masks[0, :16, :24] = 1.0  # the valid region of a 40 x 60 image letterboxed to 32
    detections = Instances(
        torch.tensor([[0.0, 0.0, 12.0, 8.0]]),
        torch.tensor([0.9]),
        torch.tensor([2]),
        (32, 32),
        masks,
    )
    original = detections.to_original(Geometry((40, 60), (0.4, 0.4)))
    torch.testing.assert_close(original.boxes, torch.tensor([[0.0, 0.0, 30.0, 20.0]]))
    assert original.image_size == (40, 60) and original.masks.shape == (1, 40, 60)
    torch.testing.assert_close(original.masks, torch.ones(1, 40, 60))
    # an image without detections keeps its (empty) masks in the original size
    empty = Instances.empty((32, 32))
    empty.masks = torch.zeros(0, 32, 32)
    mapped = empty.to_original(Geometry((40, 60), (0.4, 0.4)))
    assert len(mapped) == 0 and mapped.masks.shape == (0, 40, 60)
