"""The ``data:`` section: which datasets to read, how to batch them and how to augment them."""

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator

from cvkit.config.base import Section


class DatasetSource(Section):
    """One dataset split, named by a path whose kind is detected from what it is.

    A ``.json`` file is COCO (images from ``images``), a ``.yaml`` file is a YOLO data file
    (``split`` picks train, val or test), a folder with ``Annotations/`` or
    ``SegmentationClass/`` is Pascal VOC (``split`` picks an ``ImageSets`` list). No ``path``
    means the built-in synthetic dataset.
    """

    path: Path | None = None
    images: Path | None = None
    split: str | None = Field(
        None,
        description=(
            "YOLO: the data file's split; VOC: the ImageSets list; COCO: unused (a file is one "
            "split). null: every image (all the data file's splits, every annotated VOC "
            "image). data.train / data.val given without it take their own name"
        ),
    )


class SyntheticConfig(Section):
    """Size and seed of the built-in synthetic shapes dataset, and its objects: ``objects``
    (min, max) shapes tried per image and ``object_size`` (min, max) extent of a shape as a
    fraction of the image side; e.g. ``image_size: 320, objects: [4, 20], object_size:
    [0.03, 0.12]`` for many small objects."""

    num_train: int = Field(600, gt=0)
    num_val: int = Field(150, gt=0)
    image_size: int = Field(160, ge=32)
    seed: int = 0
    objects: tuple[int, int] = (1, 6)
    object_size: tuple[float, float] = (0.12, 0.5)

    @field_validator("objects")
    @classmethod
    def _objects(cls, objects: tuple[int, int]) -> tuple[int, int]:
        if not 1 <= objects[0] <= objects[1] <= 200:
            raise ValueError(
                f"objects must be [min, max] with 1 <= min <= max <= 200, got {objects}"
            )
        return objects

    @field_validator("object_size")
    @classmethod
    def _object_size(cls, size: tuple[float, float]) -> tuple[float, float]:
        if not 0 < size[0] <= size[1] <= 1:
            raise ValueError(f"object_size must be [min, max] with 0 < min <= max <= 1, got {size}")
        return size


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
    Training samples take their augmentation seeds from (``seed``, epoch, sample index)
    (:mod:`cvkit.data.sampling`), so workers persist across epochs and a resumed run is still
    exact. ``workers: auto`` and ``cache: auto`` choose from the machine
    (:func:`cvkit.resources.plan_cpu`, :mod:`cvkit.data.cache`).

    Detection training can first combine samples (:mod:`cvkit.data.mosaic`): with probability
    ``mosaic`` a sample becomes a mosaic of itself and three others, then with probability
    ``mixup`` it is blended with a second one built the same way; ``augment`` and the fit step
    follow. Both are off for the last ``close_mosaic`` epochs.
    """

    train: DatasetSource = Field(default_factory=lambda: DatasetSource(split="train"))
    val: DatasetSource = Field(default_factory=lambda: DatasetSource(split="val"))
    synthetic: SyntheticConfig = Field(default_factory=SyntheticConfig)
    image_size: int = Field(256, ge=16, description="square model input size in pixels")
    batch_size: int = Field(16, gt=0)
    workers: int | Literal["auto"] = Field(
        "auto", description="loader processes (auto: from the cores and the load)"
    )
    cache: Literal["auto", "ram", "disk", "off"] = Field(
        "auto", description="decoded-image cache (auto: ram when the split fits in memory)"
    )
    skip_invalid: bool = Field(
        False, description="drop samples that fail the dataset check (logged) instead of failing"
    )
    augment: list[TransformSpec] | None = None
    resize: Literal["letterbox", "resize"] = "letterbox"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    pin_memory: bool | None = Field(None, description="None: pin when CUDA is available")
    persistent_workers: bool = True
    instance_masks: bool = Field(False, description="add instance masks to detection targets")
    mosaic: float = Field(0.0, ge=0, le=1, description="probability of a 4-image mosaic (detect)")
    mixup: float = Field(0.0, ge=0, le=1, description="probability of blending two samples")
    close_mosaic: int = Field(0, ge=0, description="last epochs without mosaic and mixup")
    cache_dir: Path | None = Field(
        None, description="cache folder (default: $CVKIT_CACHE_DIR or ~/.cache/cvkit)"
    )

    @field_validator("train", "val", mode="before")
    @classmethod
    def _split_named_after_the_section(cls, source: Any, info: ValidationInfo) -> Any:
        """A source given without ``split`` reads the split named like its section (``train``
        or ``val``); only an explicit ``split: null`` reads every image. The resolved name is
        what a saved config records."""
        if isinstance(source, dict) and "split" not in source:
            return {**source, "split": info.field_name}
        if isinstance(source, DatasetSource) and "split" not in source.model_fields_set:
            return source.model_copy(update={"split": info.field_name})
        return source

    @field_validator("workers")
    @classmethod
    def _workers(cls, workers: int | str) -> int | str:
        if isinstance(workers, int) and workers < 0:
            raise ValueError(f"workers must be >= 0 or 'auto', got {workers}")
        return workers

    @field_validator("cache", mode="before")
    @classmethod
    def _cache_flag(cls, cache: Any) -> Any:
        """YAML reads ``off``/``no``/``false`` as False and ``on``/``true`` as True (as
        Ultralytics' ``cache=True`` means RAM)."""
        if isinstance(cache, bool):
            return "ram" if cache else "off"
        return cache

    @field_validator("augment")
    @classmethod
    def _buildable_augment(cls, specs: list[TransformSpec] | None) -> list[TransformSpec] | None:
        """Build the pipeline once, so an unknown transform or a bad parameter fails when the
        config loads, naming its entry (``data.augment[i]``), not when training starts."""
        if specs:
            from cvkit.data.transforms import build_augment

            build_augment(specs)
        return specs
