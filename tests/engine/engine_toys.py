"""Small deterministic stand-ins for engine tests: a dataset, a model and a task.

They follow the loader and Task contracts without needing cvkit.data or cvkit.models.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from cvkit.config import load_config
from cvkit.engine.tasks import Task


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
