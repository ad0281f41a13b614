"""Classification datasets: object crops of a detection dataset, and ImageFolder directories.

Both yield ``(image, label)``: ``image`` a ``float32 [3, S, S]`` tensor normalized with the
given ``mean``/``std`` (the config's ``data.mean``/``data.std``), ``label`` an ``int`` in
``0..C-1``; both expose ``classes``. Batches are ``(Tensor[B, 3, S, S], Tensor[B] int64)``
with the default collate.

* :class:`ObjectCropDataset` turns every (non-crowd) box of a :class:`~cvkit.data.records.
  Records` into one sample whose class is the box's class: the built-in synthetic shapes
  become a shape classification task, and any COCO/YOLO/VOC split works the same way.
* :class:`ImageFolderDataset` reads ``root/<class name>/<image>`` files; classes are the
  sub-folder names in sorted order. An evaluation sample is exactly what the exported runtime
  feeds the network for that file (:func:`cvkit.runtime.preprocess.preprocess`): the same
  reader (:func:`cvkit.images.read_image`), placement (:func:`cvkit.geometry.fit` with
  ``data.resize``) and normalization (:func:`cvkit.geometry.normalize`).

Training samples are augmented (a random horizontal flip; for folders a random crop, for object
crops a small random shift and scale of the box) before that same final step, drawn from
torch's generator (which the DataLoader seeds per worker and epoch, so runs repeat and workers
differ); evaluation samples are deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from cvkit.data.records import Records
from cvkit.errors import DatasetError
from cvkit.geometry import fit, normalize
from cvkit.images import IMAGE_SUFFIXES, read_image

# A training crop of a folder image keeps at least this share of each side.
MIN_CROP_SIDE = 0.8


def to_tensor(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """``uint8 [H, W, 3]`` RGB → ``float32 [3, H, W]`` as ``(pixel / 255 - mean) / std``
    (:func:`cvkit.geometry.normalize`, the runtime's arithmetic)."""
    return torch.from_numpy(normalize(np.ascontiguousarray(image)[None], mean, std)[0])


def crop_square(image: np.ndarray, box: Sequence[float], size: int) -> np.ndarray:
    """The square around ``box`` (x1, y1, x2, y2 pixels) of ``image [H, W, 3]``, resized to
    ``[size, size, 3]``.

    The square's side is the box's longer side; parts outside the image are zero-padded.
    """
    x1, y1, x2, y2 = (float(v) for v in box)
    side = max(x2 - x1, y2 - y1, 1.0)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    # Map the square [cx - side/2, cx + side/2] onto [0, size] with one affine warp.
    scale = size / side
    matrix = np.array(
        [[scale, 0, size / 2 - cx * scale], [0, scale, size / 2 - cy * scale]], np.float32
    )
    return cv2.warpAffine(
        image, matrix, (size, size), flags=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    )


class ObjectCropDataset(Dataset):
    """One sample per object of ``records``: its box crop, labelled with the box's class.

    Args:
        records: a detection split (for example the synthetic shapes).
        image_size: side of the square crops in pixels.
        mean, std: RGB normalization in ``0..1`` units (``data.mean``, ``data.std``).
        train: augment (flip, box jitter).
        margin: context added around each box, as a fraction of its longer side.
        skip_truncated: leave out objects whose box touches the image border: they may be
            cut off (half a circle), which makes their class ambiguous.
        min_solidity: leave out objects whose visible mask fills less than this share of its
            convex hull (needs segmentations). For convex shapes, such as the synthetic ones,
            a lower solidity means another object hides part of this one.

    Raises:
        DatasetError: the split has no objects.
    """

    def __init__(
        self,
        records: Records,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        train: bool = False,
        margin: float = 0.15,
        skip_truncated: bool = True,
        min_solidity: float = 0.0,
    ) -> None:
        self.records = records
        self.classes = list(records.classes)
        self.category_ids = None
        self.image_size = image_size
        self.mean, self.std = tuple(mean), tuple(std)
        self.train = train
        self.margin = margin
        self.items = []
        for s, sample in enumerate(records.samples):
            keep = ~sample.iscrowd
            if skip_truncated:
                keep &= ~_touches_border(sample.boxes, sample.width, sample.height)
            if min_solidity > 0 and sample.segmentations is not None:
                keep &= _solidity(sample.instance_masks()) >= min_solidity
            self.items += [(s, int(o)) for o in np.flatnonzero(keep)]
        if not self.items:
            raise DatasetError(f"{records.source or 'dataset'}: no objects to crop")

    def __len__(self) -> int:
        return len(self.items)

    @property
    def labels(self) -> list[int]:
        """Class index of every item, in order."""
        return [int(self.records.samples[s].labels[o]) for s, o in self.items]

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        sample_index, object_index = self.items[index]
        sample = self.records.samples[sample_index]
        x1, y1, x2, y2 = sample.boxes[object_index]
        grow = self.margin * max(x2 - x1, y2 - y1) / 2
        box = np.array([x1 - grow, y1 - grow, x2 + grow, y2 + grow], np.float32)
        if self.train:
            side = box[2:] - box[:2]
            shift = (torch.rand(2).numpy() * 0.2 - 0.1) * side
            factor = 0.9 + 0.2 * float(torch.rand(()))
            center = (box[:2] + box[2:]) / 2 + shift
            half = side / 2 * factor
            box = np.concatenate([center - half, center + half])
        crop = crop_square(sample.load_image(), box, self.image_size)
        if self.train and float(torch.rand(())) < 0.5:
            crop = crop[:, ::-1]
        return to_tensor(crop, self.mean, self.std), int(sample.labels[object_index])


def _touches_border(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """``bool [N]``: the box reaches the first or last pixel row or column."""
    x1, y1, x2, y2 = boxes.T
    return (x1 < 1) | (y1 < 1) | (x2 > width - 1) | (y2 > height - 1)


def _solidity(masks: np.ndarray) -> np.ndarray:
    """``float [N]``: mask area / area of its convex hull (1 for a convex shape)."""
    values = np.zeros(len(masks))
    for index, mask in enumerate(masks):
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        if contours:
            hull = cv2.convexHull(np.concatenate(contours))
            values[index] = min(1.0, float(mask.sum()) / max(cv2.contourArea(hull), 1.0))
    return values


class ImageFolderDataset(Dataset):
    """Images in ``root/<class>/``; classes are the sub-folder names, sorted.

    Every image is placed into the ``image_size`` square by ``resize`` (``letterbox``: keep the
    aspect ratio, pad bottom/right with zeros; ``resize``: stretch) and normalized, exactly as
    the exported runtime does. Training first crops a random part of the image (at least
    ``MIN_CROP_SIDE`` of each side) and flips it at random.

    Args:
        root: folder of class sub-folders.
        image_size: side of the square network input in pixels.
        mean, std: RGB normalization in ``0..1`` units (``data.mean``, ``data.std``).
        resize: ``letterbox`` or ``resize`` (``data.resize``).
        train: augment (random crop, flip).

    Raises:
        DatasetError: ``root`` is not a folder, has no class sub-folders, or a class folder
            holds no image.
    """

    def __init__(
        self,
        root: str | Path,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        resize: str = "letterbox",
        train: bool = False,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: not a folder of class sub-folders")
        folders = sorted(p for p in self.root.iterdir() if p.is_dir())
        if not folders:
            raise DatasetError(f"{self.root}: no class sub-folders (expected root/<class>/*.jpg)")
        self.classes = [folder.name for folder in folders]
        self.category_ids = None
        self.files: list[tuple[Path, int]] = []
        for label, folder in enumerate(folders):
            images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not images:
                raise DatasetError(f"{folder}: class folder holds no images {IMAGE_SUFFIXES}")
            self.files += [(path, label) for path in images]
        self.image_size = image_size
        self.mean, self.std = tuple(mean), tuple(std)
        self.resize = resize
        self.train = train

    def __len__(self) -> int:
        return len(self.files)

    @property
    def labels(self) -> list[int]:
        """Class index of every item, in order."""
        return [label for _, label in self.files]

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        path, label = self.files[index]
        image = read_image(path)
        if self.train:
            image = _random_crop(image)
            if float(torch.rand(())) < 0.5:
                image = np.ascontiguousarray(image[:, ::-1])  # OpenCV refuses negative strides
        placed, _ = fit(image, (self.image_size, self.image_size), self.resize)
        return to_tensor(placed, self.mean, self.std), label


def _random_crop(image: np.ndarray) -> np.ndarray:
    """A random window of ``image [H, W, 3]`` whose sides are ``MIN_CROP_SIDE..1`` of its own."""
    height, width = image.shape[:2]
    fraction = MIN_CROP_SIDE + (1 - MIN_CROP_SIDE) * torch.rand(2)
    crop_h = max(1, round(height * float(fraction[0])))
    crop_w = max(1, round(width * float(fraction[1])))
    top = int(torch.randint(0, height - crop_h + 1, ()))
    left = int(torch.randint(0, width - crop_w + 1, ()))
    return image[top : top + crop_h, left : left + crop_w]
