"""The ``style`` task: train a feed-forward stylizer (Johnson et al.) for one style image.

The training data is a folder of content images (``data.train.path``; ``data.val.path``,
default the same folder): each is scaled so its shorter side is ``data.image_size`` and cut to
a square (a random crop with a random flip for training, the centre for validation). Batches
are RGB ``[B, 3, S, S]`` in 0..1 (``data.mean``/``data.std`` are not used: the loss network
normalizes itself). The loss is :class:`~cvkit.style.losses.PerceptualLoss` of the network's
output against the batch (content) and ``model.style.image`` (style); validation reports the
same terms and selects ``best.pt`` on ``neg_loss`` (minus the total). The export takes and
returns images of any batch, height and width; :class:`cvkit.runtime.Stylizer` runs it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from cvkit.config import Config
from cvkit.engine.tasks import Task, register_task
from cvkit.errors import ConfigError, DatasetError
from cvkit.images import IMAGE_SUFFIXES, read_image
from cvkit.style.gatys import to_tensor
from cvkit.style.losses import PerceptualLoss, build_loss_network

CLASSES = ["stylized"]


def shorter_side_to(image: np.ndarray, size: int) -> np.ndarray:
    """RGB ``uint8 [h, w, 3]`` scaled so its shorter side is ``size`` (area filter to shrink)."""
    height, width = image.shape[:2]
    scale = size / min(height, width)
    target = (max(size, round(width * scale)), max(size, round(height * scale)))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    return cv2.resize(image, target, interpolation=interpolation)


class ContentImages(Dataset):
    """The images of a folder as square ``float32 [3, size, size]`` tensors in 0..1.

    Args:
        folder: a folder of image files (searched recursively).
        size: side of the square crops.
        train: random crop and horizontal flip (else the centre crop).

    Raises:
        DatasetError: the folder is missing or holds no image file.
    """

    def __init__(self, folder: str | Path, size: int, train: bool) -> None:
        folder = Path(folder)
        if not folder.is_dir():
            raise DatasetError(f"{folder}: content image folder not found")
        self.paths = sorted(
            path for path in folder.rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES
        )
        if not self.paths:
            raise DatasetError(f"{folder}: no image files ({', '.join(IMAGE_SUFFIXES)})")
        self.size, self.train = size, train
        self.classes = list(CLASSES)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Tensor:
        image = shorter_side_to(read_image(self.paths[index]), self.size)
        height, width = image.shape[:2]
        if self.train:
            top = int(torch.randint(height - self.size + 1, ()))
            left = int(torch.randint(width - self.size + 1, ()))
        else:
            top, left = (height - self.size) // 2, (width - self.size) // 2
        crop = image[top : top + self.size, left : left + self.size]
        if self.train and bool(torch.rand(()) < 0.5):
            crop = crop[:, ::-1]
        return to_tensor(crop)[0]


@register_task("style")
class StyleTask(Task):
    """Fast style transfer: any model ``[B, 3, H, W] → [B, 3, H, W]`` in 0..1."""

    best_metric = "neg_loss"

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self._loss: PerceptualLoss | None = None

    def build_dataset(self, split: str) -> Dataset:
        """The content images of ``data.<split>.path`` (val defaults to the train folder)."""
        data = self.config.data
        folder = data.val.path if split == "val" and data.val.path else data.train.path
        if folder is None:
            raise ConfigError("data.train.path: task style needs a folder of content images")
        return ContentImages(folder, data.image_size, train=split == "train")

    def build_loader(self, dataset: Dataset, train: bool, distributed: bool = False) -> DataLoader:
        """Batches ``Tensor[B, 3, S, S]``: the classifier's plain loader (shuffled, last
        partial batch dropped when training)."""
        from cvkit.engine.tasks.classify import ClassifyTask

        return ClassifyTask.build_loader(self, dataset, train, distributed)

    def to_device(self, batch: Tensor, device: torch.device) -> Tensor:
        """The image batch on ``device``."""
        return batch.to(device, non_blocking=device.type == "cuda")

    def batch_size(self, batch: Tensor) -> int:
        """Images in the batch."""
        return len(batch)

    def perceptual_loss(self, device: torch.device) -> PerceptualLoss:
        """The loss network with the style targets, built on first use.

        Raises:
            ConfigError: ``model.style.image`` is unset.
            ImageError / CheckpointError: the style image or the VGG file is unreadable.
        """
        if self._loss is None:
            options = self.config.model.style
            if options.image is None:
                raise ConfigError("model.style.image: task style needs a style image")
            side = options.style_size or self.config.data.image_size
            style = read_image(options.image)
            scale = side / max(style.shape[:2])
            style = cv2.resize(
                style,
                (max(1, round(style.shape[1] * scale)), max(1, round(style.shape[0] * scale))),
                interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC,
            )
            self._loss = PerceptualLoss(
                build_loss_network(options.vgg, width_mult=options.loss_width_mult),
                [to_tensor(style)],
                content_layer=options.content_layer,
                style_layers=options.style_layers,
                content_weight=options.content_weight,
                style_weight=options.style_weight,
                tv_weight=options.tv_weight,
            )
        return self._loss.to(device)

    def loss(self, model: nn.Module, batch: Tensor) -> dict[str, Tensor]:
        """``{"content", "style", "tv"}`` of ``model(batch)`` (weighted)."""
        perceptual = self.perceptual_loss(batch.device)
        return perceptual(model(batch), perceptual.content_features(batch))

    def evaluate(
        self, model: nn.Module, loader: DataLoader, device: torch.device
    ) -> dict[str, float]:
        """Mean ``content``, ``style``, ``tv`` and ``loss`` over ``loader``, and ``neg_loss``."""
        perceptual = self.perceptual_loss(device)
        sums: dict[str, float] = {}
        count = 0
        with torch.no_grad():
            for batch in loader:
                images = self.to_device(batch, device)
                terms = perceptual(model(images), perceptual.content_features(images))
                terms["loss"] = sum(terms.values())
                for key, value in terms.items():
                    sums[key] = sums.get(key, 0.0) + float(value) * len(images)
                count += len(images)
        if not count:
            raise DatasetError("the validation split is empty: no image to evaluate")
        metrics = {key: value / count for key, value in sums.items()}
        metrics["neg_loss"] = -metrics["loss"]
        return metrics

    def describe(self, metrics: dict[str, Any]) -> str:
        """The total and its three terms."""
        terms = " ".join(f"{key} {metrics[key]:.4g}" for key in ("content", "style", "tv"))
        return f"loss {metrics['loss']:.4g} ({terms})"

    @classmethod
    def export_metadata(cls, config: Config, classes: list[str]) -> Any:
        """Input RGB in 0..1 (``mean = 0``, ``std = 1``); ``input_size`` is only the traced
        example's size, the graph takes any."""
        from cvkit import __version__
        from cvkit.runtime.metadata import ModelMetadata

        size = config.data.image_size
        return ModelMetadata(
            task=cls.name,
            classes=tuple(classes or CLASSES),
            input_size=(size, size),
            mean=(0.0, 0.0, 0.0),
            std=(1.0, 1.0, 1.0),
            resize="resize",
            nms_in_graph=False,
            model_name=config.model.name,
            cvkit_version=__version__,
        )

    @classmethod
    def export_outputs(cls, metadata: Any) -> tuple[str, ...]:
        """One output, ``image [B, 3, H, W]`` in 0..1."""
        return ("image",)

    @classmethod
    def export_dynamic_axes(
        cls, input_name: str, outputs: tuple[str, ...]
    ) -> dict[str, dict[int, str]]:
        """Batch, height and width are all dynamic, as a segmenter's."""
        from cvkit.engine.tasks.segment import SegmentTask

        return SegmentTask.export_dynamic_axes(input_name, outputs)

    @classmethod
    def checkpoint_predictor(cls, weights: str | Path, device: str = "auto") -> Any:
        """A ``.pt`` stylizer: RGB ``uint8`` images → :class:`~cvkit.runtime.style.Stylized`."""
        return CheckpointStylizer(weights, device)


class CheckpointStylizer:
    """A trained ``style`` checkpoint as a callable: each RGB ``uint8 [H, W, 3]`` image is
    stylised at its own size and returned as :class:`~cvkit.runtime.style.Stylized`."""

    def __init__(self, weights: str | Path, device: str = "auto", batch_size: int = 1) -> None:
        from cvkit.engine.checkpoint import load_checkpoint
        from cvkit.engine.environment import select_device
        from cvkit.models.loading import load_model

        self.device = select_device(device)
        checkpoint = load_checkpoint(weights, self.device)
        self.model = load_model(checkpoint, self.device, weights).eval()
        self.classes: list[str] = list(checkpoint["classes"])
        self.batch_size = batch_size

    def __call__(self, images: Sequence[np.ndarray]) -> list[Any]:
        """One :class:`~cvkit.runtime.style.Stylized` per image."""
        from cvkit.runtime.style import Stylized, to_uint8_image

        results = []
        with torch.no_grad():
            for image in images:
                output = self.model(to_tensor(read_image(image)).to(self.device))
                results.append(Stylized(to_uint8_image(output[0].float().cpu().numpy())))
        return results
