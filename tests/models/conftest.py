"""Shared fixtures of the model tests."""

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn


@pytest.fixture
def torchvision_file(tmp_path: Path) -> Callable[..., tuple[nn.Module, Path]]:
    """Factory: a randomly initialized torchvision model (eval mode) and its saved state dict.

    BatchNorm running statistics are randomized too, so a wrongly mapped buffer shows.
    """

    def make(name: str, **kwargs: int) -> tuple[nn.Module, Path]:
        torch.manual_seed(0)
        options = {"init_weights": True} if name == "googlenet" else {}
        reference = getattr(torchvision.models, name)(weights=None, **options, **kwargs).eval()
        for module in reference.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
        path = tmp_path / f"{name}.pth"
        torch.save(reference.state_dict(), path)
        return reference, path

    return make


@pytest.fixture
def one_thread():
    """One intra-op thread: on 2 shared cores, two threads of small convolutions
    thrash (the YOLO overfit tests: 1.3 s against 0.14 s per step)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _coco_ground_truth(targets, size: int, num_classes: int) -> dict:
    """COCO ground truth (category ids ``label + 1``) of square ``size``-px images' targets."""
    annotations = []
    for image_id, target in enumerate(targets):
        for (x1, y1, x2, y2), label in zip(target.boxes.tolist(), target.labels, strict=True):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(label) + 1,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": 0,
                }
            )
    return {
        "images": [{"id": i, "width": size, "height": size} for i in range(len(targets))],
        "annotations": annotations,
        "categories": [{"id": c + 1, "name": str(c)} for c in range(num_classes)],
    }


@pytest.fixture
def overfit_map50() -> Callable[..., float]:
    """``fit(model, images, targets, steps, lr)``: ``steps`` AdamW steps on the batch
    ``images [B, 3, S, S]`` (``targets`` xyxy pixels), then the COCO mAP@.5 of the eval-mode
    detections on those same images."""
    from cvkit.eval.coco import detections_to_coco, evaluate_coco

    def fit(model: nn.Module, images: torch.Tensor, targets, steps: int, lr: float) -> float:
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
        model.train()
        for _ in range(steps):
            loss = sum(model(images, targets).values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            detections = model(images)
        ids = list(range(len(images)))
        categories = list(range(1, model.num_classes + 1))
        truth = _coco_ground_truth(targets, images.shape[-1], model.num_classes)
        return evaluate_coco(truth, detections_to_coco(detections, ids, categories)).as_dict()[
            "mAP50"
        ]

    return fit
