"""The ``data:`` section: which datasets to read, how to batch them and how to augment them."""

from pathlib import Path

from pydantic import Field

from cvkit.config.base import Section


class DatasetSource(Section):
    """One dataset split, named by a path whose kind is detected from what it is.

    A ``.json`` file is COCO (images from ``images``), a ``.yaml`` file is a YOLO data file
    (``split`` picks train or val), a folder with ``Annotations/`` or ``SegmentationClass/`` is
    Pascal VOC. No ``path`` means the built-in synthetic dataset.
    """

    path: Path | None = None
    images: Path | None = None
    split: str | None = None


class SyntheticConfig(Section):
    """Size and seed of the built-in synthetic shapes dataset."""

    num_train: int = Field(600, gt=0)
    num_val: int = Field(150, gt=0)
    image_size: int = Field(160, ge=32)
    seed: int = 0


class DataConfig(Section):
    """Datasets, batching and augmentation."""

    train: DatasetSource = Field(default_factory=lambda: DatasetSource(split="train"))
    val: DatasetSource = Field(default_factory=lambda: DatasetSource(split="val"))
    synthetic: SyntheticConfig = Field(default_factory=SyntheticConfig)
    image_size: int = Field(256, ge=16, description="square model input size in pixels")
    batch_size: int = Field(16, gt=0)
    workers: int = Field(2, ge=0)
    skip_invalid: bool = False
