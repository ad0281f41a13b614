"""Classification datasets: object crops of a detection dataset, and ImageFolder directories.

Both yield ``(image, label)``: ``image`` a ``float32 [3, S, S]`` tensor normalized with the
ImageNet mean/std, ``label`` an ``int`` in ``0..C-1``; both expose ``classes``. Batches are
``(Tensor[B, 3, S, S], Tensor[B] int64)`` with the default collate.

* :class:`ObjectCropDataset` turns every (non-crowd) box of a :class:`~cvkit.data.records.
  Records` into one sample whose class is the box's class: the built-in synthetic shapes
  become a shape classification task, and any COCO/YOLO/VOC split works the same way.
* :class:`ImageFolderDataset` reads ``root/<class name>/<image>`` files; classes are the
  sub-folder names in sorted order.

Training samples are augmented with a random horizontal flip and, for crops, a small random
shift and scale of the box, drawn from torch's generator (which the DataLoader seeds per
worker and epoch, so runs repeat and workers differ); evaluation samples are deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from cvkit.data.records import Records, read_image
from cvkit.errors import DatasetError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def to_tensor(image: np.ndarray) -> Tensor:
    """``uint8 [H, W, 3]`` RGB → ``float32 [3, H, W]`` normalized with the ImageNet mean/std."""
    pixels = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (pixels - mean) / std


def crop_square(image: np.ndarray, box: Sequence[float], size: int) -> np.ndarray:
    """The square around ``box`` (x1, y1, x2, y2 pixels) resized to ``size``×``size``.

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
        train: bool = False,
        margin: float = 0.15,
        skip_truncated: bool = True,
        min_solidity: float = 0.0,
    ) -> None:
        self.records = records
        self.classes = list(records.classes)
        self.category_ids = None
        self.image_size = image_size
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
        return to_tensor(crop), int(sample.labels[object_index])


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

    Images are resized so the shorter side is ``image_size`` and cropped to a square: at the
    centre for evaluation, at a random place (plus a random flip) for training.

    Raises:
        DatasetError: ``root`` is not a folder, has no class sub-folders, or a class folder
            holds no image.
    """

    def __init__(self, root: str | Path, image_size: int, train: bool = False) -> None:
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
            images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
            if not images:
                raise DatasetError(f"{folder}: class folder holds no images {IMAGE_EXTENSIONS}")
            self.files += [(path, label) for path in images]
        self.image_size = image_size
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
        height, width = image.shape[:2]
        scale = self.image_size / min(height, width)
        new_w = max(self.image_size, round(width * scale))
        new_h = max(self.image_size, round(height * scale))
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA)
        if self.train:
            top = int(torch.randint(0, new_h - self.image_size + 1, ()))
            left = int(torch.randint(0, new_w - self.image_size + 1, ()))
        else:
            top, left = (new_h - self.image_size) // 2, (new_w - self.image_size) // 2
        image = image[top : top + self.image_size, left : left + self.image_size]
        if self.train and float(torch.rand(())) < 0.5:
            image = image[:, ::-1]
        return to_tensor(image), label
