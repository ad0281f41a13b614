"""Multi-sample augmentation for detection: Mosaic (four images in one) and MixUp (two blended).

:func:`mosaic` places four images around a centre point of a ``size × size`` canvas, one per
quadrant, each touching the centre with one corner (its far part is cut by the canvas edge);
objects keep their scale, and each tile's boxes are shifted, clipped to what stays visible, or
dropped when too little does. With instance masks, every box is re-derived from its pasted
mask, so boxes and masks cannot disagree. :func:`mixup` blends two equal-size images with a
weight and keeps the objects of both.

Both are pure functions of their inputs. :class:`MosaicDataset` makes the random choices
(which samples, the centre, the blend weight) from the seed of the sampler's
:class:`~cvkit.data.sampling.SampleKey`, so a sample is reproducible from its key alone, and
follows the key's ``multi_sample`` flag, which the Trainer clears for the last
``data.close_mosaic`` epochs (:func:`cvkit.data.sampling.multi_sample_epoch`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from cvkit.config.data import DataConfig
from cvkit.data.cache import RAM_FRACTION, ImageCache
from cvkit.data.loader import RecordsDataset, mask_target
from cvkit.data.records import mask_to_box
from cvkit.data.sampling import SampleKey
from cvkit.errors import ConfigError
from cvkit.resources import available_memory
from cvkit.structures import Target

FILL = 114  # canvas grey where no tile reaches (as in the YOLO recipes)
MIN_VISIBILITY = 0.1  # an object keeps at least this fraction of its area (box or mask)
MIN_SIDE = 2.0  # and at least this many pixels of width and height
_STREAM = 0x4D4F53  # keeps the mosaic's draws apart from the augmentation's (same key seed)


@dataclass
class LabeledImage:
    """One image with its objects, all in the image's pixels.

    Attributes:
        image: ``uint8 [H, W, 3]`` RGB.
        boxes: ``float32 [N, 4]`` ``(x1, y1, x2, y2)`` pixels.
        labels: ``int64 [N]``.
        masks: ``uint8 [N, H, W]`` 0/1 instance masks, or None.
    """

    image: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    masks: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, np.float32).reshape(-1, 4)
        self.labels = np.asarray(self.labels, np.int64).reshape(-1)
        if len(self.boxes) != len(self.labels) or (
            self.masks is not None and len(self.masks) != len(self.labels)
        ):
            raise ValueError(
                f"{len(self.boxes)} boxes, {len(self.labels)} labels and "
                f"{'no' if self.masks is None else len(self.masks)} masks must be as many"
            )


def fitted_size(height: int, width: int, size: int) -> tuple[int, int]:
    """``(new_w, new_h)`` of an image ``height × width`` resized so its longer side is
    ``size`` (aspect ratio kept)."""
    ratio = size / max(height, width)
    return max(1, round(width * ratio)), max(1, round(height * ratio))


def box_scale(image: np.ndarray, resized: np.ndarray) -> np.ndarray:
    """``float32 [4]``: what ``(x1, y1, x2, y2)`` boxes of ``image`` are multiplied by to lie on
    ``resized`` (both ``[H, W, ...]``)."""
    (height, width), (new_h, new_w) = image.shape[:2], resized.shape[:2]
    return np.array([new_w / width, new_h / height] * 2, np.float32)


def resize_longest_side(image: np.ndarray, size: int) -> np.ndarray:
    """``image [H, W, ...]`` resized (bilinear) so its longer side is ``size``; ``image``
    itself when it already is."""
    height, width = image.shape[:2]
    new_w, new_h = fitted_size(height, width, size)
    if (new_w, new_h) == (width, height):
        return image
    return cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)


def fit_longest_side(item: LabeledImage, size: int) -> LabeledImage:
    """Resize so the longer side is ``size`` (aspect ratio kept, no padding); boxes scale with
    the image, masks are resized nearest-neighbour."""
    image = resize_longest_side(item.image, size)
    if image is item.image:
        return item
    new_h, new_w = image.shape[:2]
    masks = item.masks
    if masks is not None:
        masks = np.zeros((0, new_h, new_w), np.uint8)
        if len(item.masks):
            masks = np.stack(
                [cv2.resize(m, (new_w, new_h), interpolation=cv2.INTER_NEAREST) for m in item.masks]
            )
    return LabeledImage(image, item.boxes * box_scale(item.image, image), item.labels, masks)


def mosaic(
    items: Sequence[LabeledImage],
    centre: tuple[int, int],
    size: int,
    fill: int = FILL,
    min_visibility: float = MIN_VISIBILITY,
    min_side: float = MIN_SIDE,
) -> LabeledImage:
    """Four images in the quadrants around ``centre`` of a ``size × size`` canvas.

    Image 0 goes top-left (its bottom-right corner at the centre), 1 top-right, 2 bottom-left,
    3 bottom-right; each is cut by the canvas edge. Pass images no larger than the canvas
    (see :func:`fit_longest_side`); where a tile does not reach, the canvas is ``fill``.

    An object is kept when its visible part holds at least ``min_visibility`` of its area (mask
    pixels when masks are given, else the box) and its box is at least ``min_side`` pixels wide
    and high. With masks (all four items must have them or none), each box is the tight box of
    its pasted mask; without, it is the box clipped to its tile.

    Args:
        items: four :class:`LabeledImage`.
        centre: ``(cx, cy)`` integer pixels, inside ``[0, size]``.
        size: canvas side ``S``.

    Returns:
        A :class:`LabeledImage` of ``S × S`` pixels: objects of image 0 first, then 1, 2, 3.

    Raises:
        ValueError: not four items, a centre outside the canvas, an item larger than the
            canvas, or masks on some items only.
    """
    if len(items) != 4:
        raise ValueError(f"mosaic takes four images, got {len(items)}")
    cx, cy = int(centre[0]), int(centre[1])
    if not (0 <= cx <= size and 0 <= cy <= size):
        raise ValueError(f"mosaic centre {centre} is outside the {size} x {size} canvas")
    has_masks = items[0].masks is not None
    if any((item.masks is not None) != has_masks for item in items):
        raise ValueError("mosaic: give instance masks for all four images or for none")
    canvas = np.full((size, size, 3), fill, np.uint8)
    boxes, labels, masks = [], [], []
    for quadrant, item in enumerate(items):
        height, width = item.image.shape[:2]
        if height > size or width > size:
            raise ValueError(f"mosaic: image {quadrant} is {width} x {height}, canvas {size}")
        ox = cx - width if quadrant in (0, 2) else cx
        oy = cy - height if quadrant in (0, 1) else cy
        x0, y0 = max(ox, 0), max(oy, 0)
        x1, y1 = min(ox + width, size), min(oy + height, size)
        if x1 <= x0 or y1 <= y0:
            continue
        canvas[y0:y1, x0:x1] = item.image[y0 - oy : y1 - oy, x0 - ox : x1 - ox]
        tile_boxes, tile_labels, tile_masks = _place_objects(
            item, (ox, oy), (x0, y0, x1, y1), size, min_visibility
        )
        boxes.append(tile_boxes)
        labels.append(tile_labels)
        masks.append(tile_masks)
    all_boxes = np.concatenate(boxes) if boxes else np.zeros((0, 4), np.float32)
    keep = (all_boxes[:, 2:] - all_boxes[:, :2] >= min_side).all(1)
    all_masks = None
    if has_masks:
        all_masks = np.concatenate(masks)[keep] if masks else np.zeros((0, size, size), np.uint8)
    all_labels = np.concatenate(labels) if labels else np.zeros(0, np.int64)
    return LabeledImage(canvas, all_boxes[keep], all_labels[keep], all_masks)


def _place_objects(
    item: LabeledImage,
    offset: tuple[int, int],
    tile: tuple[int, int, int, int],
    size: int,
    min_visibility: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``item``'s boxes, labels and masks (``[n, size, size]`` or None) moved by ``offset``
    onto the canvas and cut to ``tile`` ``(x0, y0, x1, y1)``; objects keeping less than
    ``min_visibility`` of their area (their mask's, else their box's) are dropped."""
    ox, oy = offset
    x0, y0, x1, y1 = tile
    shifted = item.boxes + np.array([ox, oy, ox, oy], np.float32)
    clipped = np.clip(shifted, [x0, y0, x0, y0], [x1, y1, x1, y1]).astype(np.float32)
    area = (shifted[:, 2:] - shifted[:, :2]).prod(1)
    visible = (clipped[:, 2:] - clipped[:, :2]).clip(min=0).prod(1)
    box_keep = (visible > 0) & (visible >= min_visibility * area)
    if item.masks is None:
        return clipped[box_keep], item.labels[box_keep], None
    masks = np.zeros((len(item.masks), size, size), np.uint8)
    masks[:, y0:y1, x0:x1] = item.masks[:, y0 - oy : y1 - oy, x0 - ox : x1 - ox]
    visible = masks.sum((1, 2), dtype=np.int64)
    total = item.masks.sum((1, 2), dtype=np.int64)
    # An object whose mask has no pixel at all (a degenerate polygon) is cut by its box.
    empty = total == 0
    keep = np.where(empty, box_keep, (visible > 0) & (visible >= min_visibility * total))
    boxes = [clipped[i] if empty[i] else mask_to_box(masks[i]) for i in np.flatnonzero(keep)]
    boxes = np.array(boxes, np.float32).reshape(-1, 4)
    return boxes, item.labels[keep], masks[keep]


def mixup(first: LabeledImage, second: LabeledImage, weight: float) -> LabeledImage:
    """Blend two equal-size images, ``weight · first + (1 − weight) · second`` (rounded to
    uint8), and keep the objects of both (``first``'s first).

    Raises:
        ValueError: images of different sizes, a weight outside [0, 1], or masks on one only.
    """
    if first.image.shape != second.image.shape:
        raise ValueError(f"mixup: images {first.image.shape} and {second.image.shape} differ")
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"mixup: weight {weight} is outside [0, 1]")
    if (first.masks is None) != (second.masks is None):
        raise ValueError("mixup: give instance masks for both images or for neither")
    blended = weight * first.image.astype(np.float32) + (1 - weight) * second.image
    masks = None
    if first.masks is not None:
        masks = np.concatenate([first.masks, second.masks])
    return LabeledImage(
        np.clip(np.rint(blended), 0, 255).astype(np.uint8),
        np.concatenate([first.boxes, second.boxes]),
        np.concatenate([first.labels, second.labels]),
        masks,
    )


class MosaicDataset(Dataset):
    """Detection training samples that are, with some probability, mosaics (and mixups).

    Indexed by the training sampler's :class:`~cvkit.data.sampling.SampleKey`. Every random
    choice of a combined sample (whether to combine, the three other samples, the centre, the
    mixup partner and weight) comes from a generator seeded by the key's ``seed`` alone, and the
    albumentations pipeline that follows is reseeded from it too, so the same key gives the
    same sample in any worker, with persistent workers and after a resume. A key whose
    ``multi_sample`` is False (the last ``data.close_mosaic`` epochs) or a plain index
    (evaluation) gives ``dataset``'s own sample unchanged.

    With probability ``mosaic`` the sample's image and three others drawn uniformly, each
    resized so the longer side is the input size ``S``, form a mosaic around a centre drawn
    uniformly in ``[S/4, 3S/4]²`` (:func:`mosaic`); then with probability ``mixup`` it is
    blended with a second mosaic built the same way, at a weight drawn from Beta(32, 32)
    (:func:`mixup`). The ``S × S`` result goes through ``dataset``'s transform (``augment``,
    then the fit step, here the identity); its target has the identity geometry and the first
    sample's ``image_id``.

    When the split's decoded images are cached in RAM and no masks are needed, the resized
    tiles are computed once and kept too (:attr:`tiles`, shared with the loader workers like
    the image cache), if they take no more memory than the decoded images: a mosaic then does
    not resize four images again every time. Samples are the same bit for bit either way.

    Args:
        dataset: the detection training split.
        mosaic, mixup: ``data.mosaic`` and ``data.mixup`` probabilities.

    Raises:
        ConfigError: a task other than detect, or ``mixup`` without ``mosaic``.
    """

    def __init__(self, dataset: RecordsDataset, mosaic: float, mixup: float) -> None:
        if dataset.task != "detect":
            raise ConfigError(
                f"data.mosaic/data.mixup: multi-sample transforms are for the detect task, "
                f"not {dataset.task!r}"
            )
        if mixup > 0 and mosaic == 0:
            raise ConfigError(
                f"data.mixup: {mixup} blends two mosaics and needs data.mosaic > 0 (it is 0)"
            )
        self.dataset = dataset
        self.mosaic = mosaic
        self.mixup = mixup
        self.size = dataset.transform.size
        self.classes = dataset.classes
        self.category_ids = dataset.category_ids
        self.records = dataset.records  # the split's images and annotations, unchanged
        self.tiles, self.tile_scales = self._cache_tiles()

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | SampleKey) -> tuple[Tensor, Target]:
        """``(image uint8 [3, S, S], target)`` as :class:`~cvkit.data.loader.RecordsDataset`
        gives them; boxes ``(x1, y1, x2, y2)`` input pixels."""
        if not isinstance(key, SampleKey) or not key.multi_sample:
            return self.dataset[key]
        rng = np.random.default_rng([key.seed, _STREAM])
        if rng.random() >= self.mosaic:
            return self.dataset[key]
        combined = self._mosaic(key.index, rng)
        if rng.random() < self.mixup:
            partner = self._mosaic(int(rng.integers(len(self))), rng)
            combined = mixup(combined, partner, float(rng.beta(32.0, 32.0)))
        transform = self.dataset.transform
        transform.reseed(key.seed)
        out = transform(combined.image, combined.boxes, combined.labels, combined.masks)
        masks = out.masks if self.dataset.instance_masks else None
        target = Target(
            boxes=torch.from_numpy(out.boxes),
            labels=torch.from_numpy(out.labels),
            geometry=out.geometry,
            image_id=int(self.dataset.records.samples[key.index].image_id),
            masks=mask_target(masks),
        )
        return torch.from_numpy(np.ascontiguousarray(out.image.transpose(2, 0, 1))), target

    def _mosaic(self, index: int, rng: np.random.Generator) -> LabeledImage:
        others = rng.integers(0, len(self), 3).tolist()
        low, high = self.size // 4, 3 * self.size // 4
        centre = tuple(int(c) for c in rng.integers(low, high + 1, 2))
        return mosaic([self._tile(i) for i in (index, *others)], centre, self.size)

    def _cache_tiles(self) -> tuple[ImageCache | None, np.ndarray | None]:
        """Every image resized for the mosaic, and each one's box scale ``[N, 4]``; (None,
        None) unless the split's images are in a RAM cache, no masks are needed, and the tiles
        take at most the cache's memory and fit the memory left as the cache had to
        (:data:`~cvkit.data.cache.RAM_FRACTION` of what is available now)."""
        dataset = self.dataset
        cache = dataset.cache
        if (
            cache is None
            or cache.mode != "ram"
            or dataset.instance_masks
            or dataset.transform.recompute_boxes
        ):
            return None, None
        samples = dataset.records.samples
        if any(min(int(s.height), int(s.width)) <= 0 for s in samples):
            return None, None  # sizes unknown: the tiles' memory cannot be told in advance
        fitted = [fitted_size(int(s.height), int(s.width), self.size) for s in samples]
        need = sum(3 * width * height for width, height in fitted)
        if need > cache.nbytes or need > RAM_FRACTION * available_memory():
            return None, None
        images, scales = [], []
        for index in range(len(samples)):
            image = dataset.load_image(index)
            images.append(resize_longest_side(image, self.size))
            scales.append(box_scale(image, images[-1]))
        return ImageCache.of_images(images), np.stack(scales)

    def _tile(self, index: int) -> LabeledImage:
        """Sample ``index`` resized so its longer side is ``S`` (:func:`fit_longest_side`),
        from :attr:`tiles` when they are kept."""
        if self.tiles is None:
            return fit_longest_side(self._load(index), self.size)
        sample = self.dataset.records.samples[index]
        keep = ~sample.iscrowd
        boxes = np.asarray(sample.boxes[keep], np.float32) * self.tile_scales[index]
        return LabeledImage(self.tiles.image(index, sample), boxes, sample.labels[keep])

    def _load(self, index: int) -> LabeledImage:
        """Sample ``index`` in its own pixels, crowd objects left out; with masks when the
        targets or the augmentation need them (every tile then has them)."""
        dataset = self.dataset
        sample = dataset.records.samples[index]
        image = dataset.load_image(index)
        keep = ~sample.iscrowd
        masks = None
        if dataset.instance_masks or dataset.transform.recompute_boxes:
            masks = sample.instance_masks()[keep]
        return LabeledImage(image, sample.boxes[keep], sample.labels[keep], masks)


def with_multi_sample(dataset: RecordsDataset, data_cfg: DataConfig) -> Dataset:
    """``dataset`` wrapped in a :class:`MosaicDataset` when ``data.mosaic`` is set, else
    ``dataset`` itself (the training split only; evaluation never combines samples)."""
    if data_cfg.mosaic == 0 and data_cfg.mixup == 0:
        return dataset
    return MosaicDataset(dataset, data_cfg.mosaic, data_cfg.mixup)
