"""Small deterministic stand-ins for engine tests: a dataset, a model and a task.

They follow the loader and Task contracts without needing cvkit.data or cvkit.models.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from cvkit.config import load_config
from cvkit.engine.callbacks import Callback
from cvkit.engine.tasks import Task
from cvkit.geometry import Geometry
from cvkit.models.build import register_model
from cvkit.structures import Instances, Target


class ToyDataset(Dataset):
    """``n`` fixed 3×4×4 images whose 2-vector target is a fixed linear function of them.

    With ``noise`` > 0 each read adds fresh Gaussian noise from torch's global generator, so
    the loss sequence depends on the RNG state (what resume must restore).
    """

    def __init__(self, n: int = 16, noise: float = 0.0, seed: int = 0) -> None:
        self.classes = ["a", "b"]
        self.category_ids = None
        generator = torch.Generator().manual_seed(seed)
        self.images = torch.randn(n, 3, 4, 4, generator=generator)
        weight = torch.randn(48, 2, generator=generator)
        self.targets = self.images.flatten(1) @ weight / 7
        self.noise = noise

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[index]
        if self.noise:
            image = image + self.noise * torch.randn(image.shape)
        return image, self.targets[index]


class ToyModel(nn.Module):
    """conv → ReLU → (dropout) → global average pool → linear: 3×H×W images to 2 outputs."""

    def __init__(self, dropout: float = 0.0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(8, 2)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.dropout(torch.relu(self.conv(images)))
        return self.head(features.mean(dim=(2, 3)))


class ToyTask(Task):
    """Regression: loss = MSE; the best checkpoint maximises the negative val MSE."""

    name = "toy"
    best_metric = "neg_mse"

    def loss(self, model, batch):
        images, targets = batch
        return {"mse": nn.functional.mse_loss(model(images), targets)}

    def evaluate(self, model, loader, device):
        errors = [
            nn.functional.mse_loss(model(images.to(device)), targets.to(device), reduction="sum")
            for images, targets in loader
        ]
        count = sum(len(targets) for _, targets in loader)
        return {"neg_mse": -float(sum(errors)) / count}


def toy_config(*overrides: str):
    """The default config with engine-friendly settings (CPU, no warm-up surprises)."""
    base = ["device=cpu", "train.lr=0.05", "train.warmup_epochs=0", "train.plots=false"]
    return load_config(overrides=[*base, *overrides])


def toy_loader(
    dataset: Dataset, batch_size: int = 4, shuffle: bool = False, **kwargs
) -> DataLoader:
    """A single-process loader (num_workers=0) over ``dataset``."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=0, **kwargs)


class ToyDetectionDataset(Dataset):
    """Images of different original sizes, placed into a 64×64 input with scale and offset.

    Each image's pixel ``[0, 0, 0]`` holds its index, so :class:`OracleDetector` can look up
    its ground truth. Targets follow the loader contract (a :class:`~cvkit.structures.Target`:
    boxes in input pixels and the geometry back to the original size); ``coco_ground_truth()``
    holds the boxes in original pixels.
    """

    input_size = 64

    def __init__(self) -> None:
        sizes = [(100, 60), (80, 120), (50, 50), (90, 70)]  # (h, w) in original pixels
        self.classes = ["circle", "square"]
        self.category_ids = [4, 9]
        generator = torch.Generator().manual_seed(0)
        self.samples = []
        for index, (height, width) in enumerate(sizes):
            count = 1 + index % 3
            xy = torch.rand(count, 2, generator=generator) * torch.tensor([width, height]) * 0.5
            wh = (torch.rand(count, 2, generator=generator) * 0.4 + 0.1) * torch.tensor(
                [width, height]
            )
            boxes = torch.cat([xy, xy + wh], dim=1)
            labels = torch.arange(count) % 2
            # the longer side fills 60 of the 64 pixels; the image sits 2 px from the corner
            ratio = 60 / max(height, width)
            self.samples.append((boxes, labels, (height, width), ratio, (2.0, 3.0)))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Target]:
        boxes, labels, size, ratio, offset = self.samples[index]
        image = torch.zeros(3, self.input_size, self.input_size)
        image[0, 0, 0] = index
        shift = torch.tensor([*offset, *offset])
        target = Target(
            boxes=boxes * ratio + shift,
            labels=labels,
            geometry=Geometry(orig_size=size, scale=(ratio, ratio), offset=offset),
            image_id=100 + index,
        )
        return image, target

    def coco_ground_truth(self) -> dict:
        images, annotations = [], []
        for index, (boxes, labels, (height, width), _, _) in enumerate(self.samples):
            images.append({"id": 100 + index, "width": width, "height": height})
            for box, label in zip(boxes.tolist(), labels.tolist(), strict=True):
                w, h = box[2] - box[0], box[3] - box[1]
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": 100 + index,
                        "category_id": self.category_ids[label],
                        "bbox": [box[0], box[1], w, h],
                        "area": w * h,
                        "iscrowd": 0,
                    }
                )
        categories = [
            {"id": i, "name": n} for i, n in zip(self.category_ids, self.classes, strict=True)
        ]
        return {"images": images, "annotations": annotations, "categories": categories}


def detection_collate(batch):
    """Stack images, keep targets as a list (the loader contract)."""
    images, targets = zip(*batch, strict=True)
    return torch.stack(images), list(targets)


class OracleDetector(nn.Module):
    """A detector whose eval output is the ground truth shifted by ``10 * (1 - w)`` pixels.

    Training returns ``{"shift": (1 - w)^2, "zero": 0 * w}``, so SGD moves ``w`` to 1 and the
    predictions onto the ground truth; ``mAP`` rises with training.
    """

    def __init__(self, dataset: ToyDetectionDataset) -> None:
        super().__init__()
        self.dataset = dataset
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, images, targets=None):
        if self.training:
            return {"shift": ((1 - self.w) ** 2).sum(), "zero": (0 * self.w).sum()}
        outputs = []
        for image in images:
            _, target = self.dataset[int(image[0, 0, 0])]
            shift = 10 * (1 - self.w.detach())
            outputs.append(
                Instances(
                    target.boxes + shift,
                    torch.linspace(1, 0.5, len(target.labels)),
                    target.labels,
                    tuple(images.shape[-2:]),
                )
            )
        return outputs


@register_model("toy_oracle")
def build_oracle(config, num_classes: int) -> OracleDetector:
    """``model.name: toy_oracle``: an :class:`OracleDetector` over :class:`ToyDetectionDataset`."""
    return OracleDetector(ToyDetectionDataset())


class LossRecorder(Callback):
    """A user callback: the total loss of every training batch, in order."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_batch_end(self, trainer, batch_info) -> None:
        self.losses.append(batch_info["losses"]["loss"])


TINY_SSD = [
    "model.name=ssd",
    "model.backbone=resnet18_tiny",
    "model.out_features=[layer3,layer4]",
    "model.ssd.extra_blocks=1",
    "model.ssd.extra_channels=16",
    "data.image_size=64",
    "data.batch_size=4",
    "data.synthetic.num_val=4",
    "data.synthetic.image_size=64",
    "train.val_every=100",
    "train.plots=false",
    "train.threads=1",
]
"""``--set`` overrides of a detection run small enough for a test: an SSD on 64-px synthetic
images, 4 per batch, one thread, no validation or plots until asked."""


def detect_trainer(config, task, folder, callbacks=(), model_seed=0):
    """A CPU :class:`~cvkit.engine.trainer.Trainer` of ``task`` (a detect task) on its own
    train and val splits, writing into the run folder ``folder`` (created); the model is
    built after ``torch.manual_seed(model_seed)``."""
    from cvkit.engine.rundir import RunDir
    from cvkit.engine.trainer import Trainer

    run = RunDir(folder)
    for path in (run.root, run.weights, run.plots):
        path.mkdir(parents=True, exist_ok=True)
    train = task.build_dataset("train")
    torch.manual_seed(model_seed)
    return Trainer(
        config,
        task,
        task.build_model(len(train.classes)),
        task.build_loader(train, train=True),
        task.build_loader(task.build_dataset("val"), train=False),
        run=run,
        device=torch.device("cpu"),
        callbacks=list(callbacks),
    )


COCO_CATEGORY_IDS = {1: 1, 2: 3, 3: 90}
"""Synthetic category ids 1..3 → COCO-like ids with gaps (:func:`renumber_coco`)."""


def renumber_coco(json_path: Path) -> None:
    """Give a synthetic COCO split's categories the ids 1, 3, 90 and its images ids 10, 17,
    24, ... (rewrites ``json_path``)."""
    data = json.loads(json_path.read_text())
    image_ids = {image["id"]: 10 + 7 * index for index, image in enumerate(data["images"])}
    for image in data["images"]:
        image["id"] = image_ids[image["id"]]
    for category in data["categories"]:
        category["id"] = COCO_CATEGORY_IDS[category["id"]]
    for annotation in data["annotations"]:
        annotation["image_id"] = image_ids[annotation["image_id"]]
        annotation["category_id"] = COCO_CATEGORY_IDS[annotation["category_id"]]
    json_path.write_text(json.dumps(data))
