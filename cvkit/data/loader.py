"""Torch datasets and loaders over :class:`~cvkit.data.records.Records`.

``build_dataset(data_cfg, split, task)`` reads the split named in the config (or the cached
synthetic dataset when no path is given), runs the training-time dataset check
(:func:`cvkit.data.check.validate_for_training`, honouring ``data.skip_invalid``) and wraps the
records with the split's transform. ``build_loader`` batches it.

A batch is ``(images, targets)``: ``images`` ``float32 [B, 3, S, S]`` normalized with
``data.mean``/``data.std`` (``(pixel / 255 - mean) / std``), and one
:class:`~cvkit.structures.Target` per image: ``boxes`` ``float32 [N, 4]`` ``(x1, y1, x2, y2)``
in network-input pixels, ``labels`` ``int64 [N]`` in ``0..C-1``, ``image_id``, the
:class:`~cvkit.geometry.Geometry` that maps input pixels back to the original image
(``original_xy = (input_xy - offset) / scale``), ``masks`` ``uint8 [N, S, S]`` when
``data.instance_masks`` is set (detection) and ``semantic`` ``int64 [S, S]`` (255 = ignore) for
the ``segment`` task.

Crowd (and VOC difficult) objects are left out of targets; :meth:`RecordsDataset.coco_ground_truth`
keeps them with ``iscrowd: 1`` so COCO evaluation ignores them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import cv2
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from cvkit.config.data import DataConfig
from cvkit.data.cache import ImageCache, build_cache
from cvkit.data.records import ClassMap, Records
from cvkit.data.sampling import SampleKey, SeededSampler
from cvkit.data.transforms import SampleTransform, build_transform
from cvkit.errors import ConfigError
from cvkit.geometry import normalization
from cvkit.resources import available_cpus, resolve_workers
from cvkit.structures import CroppedMasks, Target

TASKS = ("detect", "segment")


class RecordsDataset(Dataset):
    """Samples of one split, transformed for the network.

    Args:
        records: the split.
        transform: augmentation + fit to the input size (:func:`build_transform`).
        task: ``detect`` (boxes, labels [, masks]) or ``segment`` (adds ``semantic``; the
            classes gain a leading ``background`` class, semantic value 0).
        instance_masks: add ``masks`` to detection targets.
        cache: decoded images to read instead of the files (``data.cache``), or None.

    Attributes:
        classes: class names the model predicts.
        category_ids: COCO category id per class (detection on COCO), else None.
    """

    def __init__(
        self,
        records: Records,
        transform: SampleTransform,
        task: str = "detect",
        instance_masks: bool = False,
        cache: ImageCache | None = None,
    ) -> None:
        if task not in TASKS:
            raise ConfigError(f"task: cvkit.data builds datasets for {TASKS}, not {task!r}")
        self.records = records
        self.transform = transform
        self.task = task
        self.instance_masks = instance_masks
        self.cache = cache
        self.classes = (
            ["background", *records.classes] if task == "segment" else list(records.classes)
        )
        self.category_ids = records.category_ids if task == "detect" else None
        self._ground_truth: dict[str, Any] | None = None

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: int | SampleKey) -> tuple[Tensor, Target]:
        """``(image uint8 [3, S, S], target)``; the collate function normalizes the batch.

        ``key``: a :class:`~cvkit.data.sampling.SampleKey` (the training sampler's: its seed
        fixes the augmentation) or an index (the augmentation seed is drawn from torch's RNG).
        """
        if isinstance(key, SampleKey):
            index, seed = key.index, key.seed
        else:
            index, seed = int(key), int(torch.randint(0, 2**31 - 1, ()).item())
        sample = self.records.samples[index]
        self.transform.reseed(seed)
        image = self.load_image(index)
        keep = ~sample.iscrowd
        masks = None
        needs_masks = self.instance_masks or (
            self.transform.recompute_boxes and sample.segmentations is not None
        )
        if needs_masks and self.task == "detect":
            masks = sample.instance_masks()[keep]
        semantic = sample.semantic_mask() if self.task == "segment" else None
        out = self.transform(image, sample.boxes[keep], sample.labels[keep], masks, semantic)
        target = Target(
            boxes=torch.from_numpy(out.boxes),
            labels=torch.from_numpy(out.labels),
            # The fit step's scale and offset, relative to the image as read from disk.
            geometry=dataclasses.replace(out.geometry, orig_size=image.shape[:2]),
            image_id=int(sample.image_id),
            masks=mask_target(out.masks) if self.instance_masks else None,
            semantic=None
            if out.semantic is None
            else torch.from_numpy(out.semantic.astype(np.int64)),
        )
        tensor = torch.from_numpy(np.ascontiguousarray(out.image.transpose(2, 0, 1)))
        return tensor, target

    def load_image(self, index: int) -> np.ndarray:
        """Sample ``index``'s image as read from disk, ``uint8 [H, W, 3]`` RGB (from the
        decoded-image cache when there is one)."""
        sample = self.records.samples[index]
        return self.cache.image(index, sample) if self.cache is not None else sample.load_image()

    def coco_ground_truth(self) -> dict[str, Any]:
        """The split as a COCO instances dict in ORIGINAL image pixels (boxes ``[x, y, w, h]``).

        Category ids are :attr:`category_ids` (or ``1..C``); crowd/difficult objects have
        ``iscrowd: 1``. Computed once and cached.
        """
        if self._ground_truth is None:
            from cvkit.data.formats.coco import coco_dict

            self._ground_truth = coco_dict(self.records, include_segmentation=False)
        return self._ground_truth


def mask_target(masks: np.ndarray | CroppedMasks | None) -> Tensor | CroppedMasks | None:
    """A transform's instance masks as :attr:`Target.masks`: ``uint8 [N, S, S]`` as a tensor,
    :class:`~cvkit.structures.CroppedMasks` as they are."""
    if masks is None or isinstance(masks, CroppedMasks):
        return masks
    return torch.from_numpy(masks)


class Collate:
    """Stack ``uint8 [3, S, S]`` images into a normalized ``float32 [B, 3, S, S]`` batch.

    ``(pixel - 255 * mean) / (255 * std)``, the same arithmetic as
    :func:`cvkit.geometry.normalize` (constants from :func:`cvkit.geometry.normalization`).
    Targets stay a list (of :class:`~cvkit.structures.Target`).
    """

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        mean_array, inv_std = normalization(mean, std)
        self.mean = torch.from_numpy(mean_array).view(1, 3, 1, 1)
        self.inv_std = torch.from_numpy(inv_std).view(1, 3, 1, 1)

    def __call__(self, batch: list[tuple[Tensor, Any]]) -> tuple[Tensor, list[Any]]:
        images = torch.stack([image for image, _ in batch]).float()
        images.sub_(self.mean).mul_(self.inv_std)
        return images, [target for _, target in batch]


def build_dataset(
    data_cfg: DataConfig,
    split: str,
    task: str,
    seed: int = 0,
    reference: ClassMap | None = None,
) -> Dataset:
    """The ``train`` or ``val`` split named by ``data_cfg``, checked and ready for ``task``.

    With no ``path`` the split comes from the cached synthetic dataset
    (:func:`cvkit.data.synthetic.synthetic_root` with ``data.synthetic`` and
    ``data.cache_dir``). A COCO split is read with ``reference``'s numbering when given (the
    train split's or a checkpoint's: a val file may list only some of its categories, see
    :func:`cvkit.data.formats.coco.read_coco`); the other formats, and the synthetic set, have
    one class list for all splits. A YOLO or VOC source reads its ``split`` (the data file's
    split or ``ImageSets`` list; null: every image). The split is checked first
    (:func:`validate_for_training`).
    Instance masks (``data.instance_masks``) come as :class:`~cvkit.structures.CroppedMasks`;
    the detection training split is wrapped for ``data.mosaic``/``data.mixup``
    (:func:`cvkit.data.mosaic.with_multi_sample`: a :class:`RecordsDataset` when both are 0).

    Raises:
        ConfigError: ``split`` is not train/val or the task is not detect/segment.
        DatasetError: the dataset cannot be read or fails the check, or a COCO split has a
            category that ``reference`` lacks.
    """
    from cvkit.data.check import load_checked_records, validate_for_training
    from cvkit.data.formats.coco import read_coco
    from cvkit.data.mosaic import with_multi_sample
    from cvkit.data.synthetic import annotation_path, cache_root, synthetic_root

    if split not in ("train", "val"):
        raise ConfigError(f"split must be 'train' or 'val', not {split!r}")
    if task not in TASKS:
        raise ConfigError(f"task: cvkit.data builds datasets for {TASKS}, not {task!r}")
    source = data_cfg.train if split == "train" else data_cfg.val
    if source.path is None:
        synthetic = data_cfg.synthetic
        root = synthetic_root(
            synthetic.num_train,
            synthetic.num_val,
            synthetic.image_size,
            synthetic.seed,
            data_cfg.cache_dir,
            synthetic.objects,
            synthetic.object_size,
        )
        records = read_coco(
            annotation_path(root, split), root / "images" / split, root / "semantic" / split
        )
        extra = []
    else:
        records, extra = load_checked_records(source.path, source.images, source.split, reference)
    records = validate_for_training(records, data_cfg.skip_invalid, extra)
    compact = task == "detect" and data_cfg.instance_masks
    transform = build_transform(data_cfg, task, split == "train", seed, compact_masks=compact)
    cache = build_cache(
        data_cfg.cache, records.samples, cache_root(data_cfg.cache_dir), split, available_cpus()
    )
    dataset = RecordsDataset(records, transform, task, data_cfg.instance_masks, cache)
    if split == "train" and task == "detect":
        return with_multi_sample(dataset, data_cfg)
    return dataset


def build_loader(
    dataset: Dataset, data_cfg: DataConfig, train: bool, distributed: bool = False, seed: int = 0
) -> DataLoader:
    """A DataLoader over ``dataset`` with the config's batch size, workers and pinning.

    Training shuffles (through a :class:`~cvkit.data.sampling.SeededSampler`, over a
    :class:`DistributedSampler` under DDP) and drops the last partial batch when there is more
    than one batch. Its samples are :class:`~cvkit.data.sampling.SampleKey` s whose seeds, like
    the shuffle, derive from ``seed``, the epoch (``loader.sampler.set_epoch``) and the sample
    index only. ``data.workers: auto`` takes :func:`cvkit.resources.plan_cpu`'s count.
    """
    sampler = None
    if train:
        order = DistributedSampler(dataset, shuffle=True, seed=seed) if distributed else None
        sampler = SeededSampler(dataset, seed, shuffle=True, order=order)
    elif distributed:
        sampler = DistributedSampler(dataset, shuffle=False, drop_last=False)
    workers = resolve_workers(data_cfg.workers)
    if workers > 0:
        # OpenCV's thread pool does not survive fork(): a worker whose first cv2 call touches
        # the pool inherited mid-use can hang. Serial OpenCV (as detectron2 and mmcv set it) is
        # fork-safe, and the workers are the parallelism (PyTorch gives each one torch thread).
        cv2.setNumThreads(0)
    pin = data_cfg.pin_memory if data_cfg.pin_memory is not None else torch.cuda.is_available()
    return DataLoader(
        dataset,
        batch_size=data_cfg.batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=Collate(data_cfg.mean, data_cfg.std),
        pin_memory=pin,
        drop_last=train and len(dataset) > data_cfg.batch_size,
        persistent_workers=data_cfg.persistent_workers and workers > 0,
        generator=torch.Generator().manual_seed(seed),
    )
