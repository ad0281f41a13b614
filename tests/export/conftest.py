"""Toy models that implement cvkit's model contracts, small enough to export in a second."""

import pytest
import torch
from torch import Tensor, nn
from torchvision.ops import batched_nms

from cvkit.models.detection.postprocess import select_detections
from cvkit.structures import ImageBatch, Instances

BLOCK_TORCH = """
import importlib.abc, sys
class _NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith(("torch.", "torchvision")):
            raise ImportError(f"torch is blocked in this test: {name}")
sys.meta_path.insert(0, _NoTorch())
"""
"""Python source that makes every later ``import torch`` (or torchvision) fail: prepended to
the code of a subprocess that must run without torch."""


class ToyDetector(nn.Module):
    """One anchor per cell of a stride-8 grid, a conv head predicting box deltas and scores.

    ``candidates`` returns decoded boxes ``[B, N, 4]`` in input pixels and sigmoid scores
    ``[B, N, C]``; the eval forward adds class-aware NMS, as every cvkit detector does.
    """

    def __init__(self, num_classes: int = 3, image_size: int = 64) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=4, padding=1),
            nn.ReLU(),
        )
        self.head = nn.Conv2d(16, 4 + num_classes, 1)
        cells = image_size // 8
        centers = (torch.arange(cells, dtype=torch.float32) + 0.5) * 8
        cy, cx = torch.meshgrid(centers, centers, indexing="ij")
        anchors = torch.stack([cx, cy, torch.full_like(cx, 16), torch.full_like(cy, 16)], -1)
        self.register_buffer("anchors", anchors.reshape(-1, 4))
        self.score_threshold, self.iou_threshold, self.max_det = 0.3, 0.5, 20
        self.topk_candidates: int | None = None

    def candidates(self, images: Tensor) -> tuple[Tensor, Tensor]:
        out = self.head(self.body(images)).flatten(2).transpose(1, 2)
        deltas, logits = out[..., :4], out[..., 4:]
        centers = self.anchors[:, :2] + deltas[..., :2] * self.anchors[:, 2:]
        sizes = self.anchors[:, 2:] * torch.exp(deltas[..., 2:].clamp(max=4))
        boxes = torch.cat([centers - sizes / 2, centers + sizes / 2], dim=-1)
        return boxes, logits.sigmoid()

    def forward(self, images: Tensor) -> list[Instances]:
        """Threshold, best ``topk_candidates`` (box, class) pairs, class-aware NMS, max_det."""
        results = []
        for boxes, scores in zip(*self.candidates(images), strict=True):
            flat = scores.flatten()
            keep = torch.nonzero(flat > self.score_threshold).squeeze(1)
            if self.topk_candidates is not None and keep.numel() > self.topk_candidates:
                keep = keep[flat[keep].topk(self.topk_candidates).indices]
            labels = keep % scores.shape[1]
            kept_boxes, kept_scores = boxes[keep // scores.shape[1]], flat[keep]
            survivors = batched_nms(kept_boxes, kept_scores, labels, self.iou_threshold)
            survivors = survivors[: self.max_det]
            results.append(
                Instances(
                    kept_boxes[survivors],
                    kept_scores[survivors],
                    labels[survivors],
                    (int(images.shape[-2]), int(images.shape[-1])),
                )
            )
        return results


class PerClassDetector(nn.Module):
    """One anchor per stride-8 cell; the head regresses a separate box for every class."""

    def __init__(self, num_classes: int = 3, image_size: int = 64) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=4, padding=1),
        )
        self.head = nn.Conv2d(16, 5 * num_classes, 1)
        centers = (torch.arange(image_size // 8, dtype=torch.float32) + 0.5) * 8
        cy, cx = torch.meshgrid(centers, centers, indexing="ij")
        self.register_buffer("centers", torch.stack([cx, cy], -1).reshape(-1, 2))
        self.score_threshold, self.iou_threshold, self.max_det = 0.3, 0.5, 20
        self.topk_candidates = 10_000

    def candidates(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """``boxes [B, N, C, 4]`` xyxy input pixels, ``scores [B, N, C]``."""
        out = self.head(self.body(images)).flatten(2).transpose(1, 2)
        count = self.num_classes
        deltas = out[..., : 4 * count].reshape(*out.shape[:2], count, 4)
        middle = self.centers[None, :, None] + deltas[..., :2] * 16
        half = 8 * torch.exp(deltas[..., 2:].clamp(max=3))
        return torch.cat([middle - half, middle + half], -1), out[..., 4 * count :].sigmoid()

    def forward(self, images: Tensor | ImageBatch) -> list[Instances]:
        batch = ImageBatch.of(images)
        boxes, scores = self.candidates(batch.tensor)
        return select_detections(
            boxes,
            scores,
            batch.image_sizes,
            self.score_threshold,
            self.iou_threshold,
            self.max_det,
            self.topk_candidates,
        )


class ToyClassifier(nn.Module):
    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(8, num_classes),
        )

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images)


class ToySegmenter(nn.Module):
    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, num_classes, 1),
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
        )

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images)


def _seeded(module: nn.Module, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    for parameter in module.parameters():
        nn.init.normal_(parameter, std=0.15)
    return module.eval()


@pytest.fixture
def toy_detector() -> ToyDetector:
    return _seeded(ToyDetector(), 0)


@pytest.fixture
def toy_classifier() -> ToyClassifier:
    return _seeded(ToyClassifier(), 1)


@pytest.fixture
def toy_segmenter() -> ToySegmenter:
    return _seeded(ToySegmenter(), 2)


@pytest.fixture
def tiny_ssd_weights(tmp_path):
    """A seeded, untrained tiny SSD saved as a cvkit checkpoint ``ssd.pt`` for classes
    cat/dog/bird (64 px input, score threshold 0.2)."""
    from cvkit.config import config_to_dict, load_config
    from cvkit.engine.checkpoint import save_checkpoint
    from cvkit.models.build import build_model

    config = load_config(
        None,
        [
            "model.backbone=resnet18_tiny",
            "data.image_size=64",
            "model.ssd.extra_channels=16",
            "eval.score_threshold=0.2",
        ],
    )
    classes = ["cat", "dog", "bird"]
    torch.manual_seed(0)
    model = build_model(config, len(classes)).eval()
    checkpoint = {"model": model.state_dict(), "config": config_to_dict(config), "ema": None}
    return save_checkpoint({**checkpoint, "classes": classes}, tmp_path / "ssd.pt")


@pytest.fixture
def per_class_detector() -> PerClassDetector:
    torch.manual_seed(0)
    return PerClassDetector().eval()
