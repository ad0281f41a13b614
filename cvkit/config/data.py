"""The ``data:`` section: which datasets to read, how to batch them and how to augment them."""

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

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


class TransformSpec(Section):
    """One albumentations transform: its class name and constructor arguments.

    Compositions nest: ``{name: OneOf, params: {transforms: [{name: ..., params: ...}], p: 0.5}}``.
    """

    name: str
    params: dict[str, Any] = Field(default_factory=dict)


class DataConfig(Section):
    """Datasets, batching and augmentation.

    ``augment`` lists the training augmentations (``None``: the task's preset, see
    :mod:`cvkit.data.transforms`; ``[]``: none). Every split then goes through the same final
    step chosen by ``resize``: ``letterbox`` (keep the aspect ratio, pad bottom/right) or
    ``resize`` (stretch) to ``image_size``, and normalization with ``mean``/``std``.
    ``persistent_workers`` is off by default: fresh workers each epoch take their
    augmentation seeds from the epoch's seed, which makes a resumed run exact.
    """

    train: DatasetSource = Field(default_factory=lambda: DatasetSource(split="train"))
    val: DatasetSource = Field(default_factory=lambda: DatasetSource(split="val"))
    synthetic: SyntheticConfig = Field(default_factory=SyntheticConfig)
    image_size: int = Field(256, ge=16, description="square model input size in pixels")
    batch_size: int = Field(16, gt=0)
    workers: int = Field(2, ge=0)
    skip_invalid: bool = Field(
        False, description="drop samples that fail the dataset check (logged) instead of failing"
    )
    augment: list[TransformSpec] | None = None
    resize: Literal["letterbox", "resize"] = "letterbox"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    pin_memory: bool | None = Field(None, description="None: pin when CUDA is available")
    persistent_workers: bool = False
    instance_masks: bool = Field(False, description="add instance masks to detection targets")
    cache_dir: Path | None = Field(
        None, description="cache folder (default: $CVKIT_CACHE_DIR or ~/.cache/cvkit)"
    )

    @field_validator("augment")
    @classmethod
    def _buildable_augment(cls, specs: list[TransformSpec] | None) -> list[TransformSpec] | None:
        """Build the pipeline once, so an unknown transform or a bad parameter fails when the
        config loads, naming its entry (``data.augment[i]``), not when training starts."""
        if specs:
            from cvkit.data.transforms import build_augment

            build_augment(specs)
        return specs
