"""The one in-memory sample type every reader produces and every loader consumes.

A :class:`Sample` holds one image (a path, or an array for in-memory data) with its objects:
``boxes`` ``float32 [N, 4]`` as ``(x1, y1, x2, y2)`` in original-image pixels, ``labels``
``int64 [N]`` in ``0..C-1``, ``iscrowd`` ``bool [N]`` (objects evaluation ignores: COCO crowd
regions, VOC ``difficult``), optional instance ``segmentations`` (COCO polygons or RLE, decoded
on demand) and an optional semantic mask file. A :class:`Records` bundles the samples of one
split with the dataset's ``classes`` and, for COCO, ``category_ids`` (contiguous index ``i`` ↔
COCO category id ``category_ids[i]``). A :class:`ClassMap` is the numbering another split is
read with (the train split's, or a checkpoint's). Arrays are numpy: readers and writers need no
torch.
"""

from __future__ import annotations

import shutil
import struct
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from cvkit.errors import DatasetError
from cvkit.images import read_image

# COCO-style instance segmentation: a list of polygons [[x1, y1, x2, y2, ...], ...] or an RLE dict.
Segmentation = list[list[float]] | dict[str, Any]
IGNORE_INDEX = 255
# The split names datasets use: a YOLO data file's keys, a COCO file's instances_<split>.json.
SPLITS = ("train", "val", "test")
# EXIF orientations (transpose, rotate 90° clockwise, transverse, rotate 90° counterclockwise)
# whose upright image has the stored width and height swapped.
SIDEWAYS_ORIENTATIONS = (5, 6, 7, 8)
_ORIENTATION_TAG, _WIDTH_TAG, _LENGTH_TAG = 0x0112, 0x0100, 0x0101


@dataclass
class Sample:
    """One image and its annotations, in original-image pixels.

    Attributes:
        image_id: unique integer id within the split (COCO ``image_id``).
        file_name: name relative to the dataset's image folder (used by writers).
        height, width: image size as annotated (``cvkit data check`` compares it to the file).
        path: image file, or None when ``image`` holds the pixels.
        image: ``uint8 [H, W, 3]`` RGB pixels for in-memory samples, else None.
        boxes: ``float32 [N, 4]`` ``(x1, y1, x2, y2)`` pixels.
        labels: ``int64 [N]`` contiguous class indices ``0..C-1``.
        iscrowd: ``bool [N]``; True for objects evaluation ignores (crowd, VOC difficult).
        segmentations: N COCO segmentations (polygon lists or RLE dicts), or None.
        semantic_path: PNG of per-pixel class indices (``0`` background, ``255`` ignore), or None.
    """

    image_id: int
    file_name: str
    height: int
    width: int
    path: Path | None = None
    image: np.ndarray | None = None
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    iscrowd: np.ndarray = field(default_factory=lambda: np.zeros((0,), bool))
    segmentations: list[Segmentation] | None = None
    semantic_path: Path | None = None

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        self.iscrowd = np.asarray(self.iscrowd, dtype=bool).reshape(-1)
        if len(self.iscrowd) == 0 and len(self.labels):
            self.iscrowd = np.zeros(len(self.labels), bool)
        if not len(self.boxes) == len(self.labels) == len(self.iscrowd):
            raise DatasetError(
                f"{self.file_name}: {len(self.boxes)} boxes, {len(self.labels)} labels and "
                f"{len(self.iscrowd)} crowd flags must be as many"
            )
        if self.segmentations is not None and len(self.segmentations) != len(self.labels):
            raise DatasetError(
                f"{self.file_name}: {len(self.segmentations)} segmentations for "
                f"{len(self.labels)} objects"
            )

    def __len__(self) -> int:
        return len(self.labels)

    def load_image(self) -> np.ndarray:
        """The image as ``uint8 [H, W, 3]`` RGB.

        Raises:
            DatasetError: no image, or the file is missing or cannot be decoded
                (:class:`~cvkit.errors.ImageError`).
        """
        if self.image is not None:
            return self.image
        if self.path is None:
            raise DatasetError("sample has neither an image path nor pixels")
        return read_image(self.path)

    def instance_masks(self) -> np.ndarray:
        """Instance masks ``uint8 [N, H, W]`` (0/1) decoded from ``segmentations``.

        Objects without a segmentation get their box filled.
        """
        from pycocotools import mask as mask_utils

        masks = np.zeros((len(self), self.height, self.width), np.uint8)
        for index, box in enumerate(self.boxes):
            segmentation = self.segmentations[index] if self.segmentations else None
            if segmentation:
                masks[index] = decode_segmentation(
                    segmentation, self.height, self.width, mask_utils
                )
            else:
                x1, y1, x2, y2 = np.round(box).astype(int)
                masks[index, max(y1, 0) : max(y2, 0), max(x1, 0) : max(x2, 0)] = 1
        return masks

    def load_semantic(self) -> np.ndarray | None:
        """The semantic mask ``uint8 [H, W]`` (class index, 255 = ignore) or None if absent."""
        if self.semantic_path is None:
            return None
        from PIL import Image

        try:
            with Image.open(self.semantic_path) as png:
                if png.mode not in {"L", "P", "I", "I;16"}:
                    raise DatasetError(
                        f"{self.semantic_path}: semantic masks must hold class indices (a "
                        f"grayscale or palette PNG), not {png.mode} colours"
                    )
                mask = np.asarray(png)
        except OSError as exc:
            raise DatasetError(
                f"{self.semantic_path}: cannot read the semantic mask ({exc})"
            ) from None
        mask = mask.astype(np.uint8)
        return mask

    def semantic_mask(self) -> np.ndarray:
        """``uint8 [H, W]``: the semantic mask file, else one drawn from the instances.

        Drawn masks hold ``label + 1`` inside each object (its segmentation, or its box when it
        has none), 0 elsewhere, and 255 (ignore) over crowd/difficult objects.
        """
        semantic = self.load_semantic()
        if semantic is not None:
            return semantic
        semantic = np.zeros((self.height, self.width), np.uint8)
        for mask, label, crowd in zip(
            self.instance_masks(), self.labels, self.iscrowd, strict=True
        ):
            semantic[mask > 0] = IGNORE_INDEX if crowd else label + 1
        return semantic

    def subset(self, keep: np.ndarray) -> Sample:
        """A copy holding only the objects where the boolean/int index ``keep`` selects."""
        segmentations = (
            [self.segmentations[i] for i in np.arange(len(self))[keep]]
            if self.segmentations is not None
            else None
        )
        return replace(
            self,
            boxes=self.boxes[keep],
            labels=self.labels[keep],
            iscrowd=self.iscrowd[keep],
            segmentations=segmentations,
        )


@dataclass
class Records:
    """The samples of one dataset split with its class names.

    Attributes:
        samples: one :class:`Sample` per image.
        classes: class names; ``labels`` index this list.
        category_ids: COCO category id of each class (same order), or None for formats
            without ids (YOLO, VOC).
        source: where the split was read from (for messages).
    """

    samples: list[Sample]
    classes: list[str]
    category_ids: list[int] | None = None
    source: str = ""

    def __len__(self) -> int:
        return len(self.samples)

    def __post_init__(self) -> None:
        if self.category_ids is not None and len(self.category_ids) != len(self.classes):
            raise DatasetError(
                f"{self.source}: {len(self.category_ids)} category ids for "
                f"{len(self.classes)} classes"
            )


@dataclass(frozen=True)
class ClassMap:
    """How a model numbers classes: the numbering a val split is read with.

    Attributes:
        classes: class names; label ``i`` is ``classes[i]``.
        category_ids: COCO category id of each class (same order), or None when the classes
            came from a format without ids.
        source: whose numbering it is, for messages (``the train split``, a checkpoint path).
    """

    classes: list[str]
    category_ids: list[int] | None
    source: str


def decode_segmentation(
    segmentation: Segmentation, height: int, width: int, mask_utils: Any = None
) -> np.ndarray:
    """One COCO segmentation (polygons, RLE or uncompressed RLE) as ``uint8 [H, W]`` 0/1."""
    if mask_utils is None:
        from pycocotools import mask as mask_utils
    if isinstance(segmentation, list):
        polygons = [p for p in segmentation if len(p) >= 6]
        if not polygons:
            return np.zeros((height, width), np.uint8)
        rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    elif isinstance(segmentation.get("counts"), list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = dict(segmentation)
        if isinstance(rle["counts"], str):
            rle["counts"] = rle["counts"].encode("ascii")
    with warnings.catch_warnings():
        # pycocotools 2.0.x's Cython decode trips numpy 2's copy-keyword deprecation; harmless.
        warnings.filterwarnings("ignore", "__array__ implementation", DeprecationWarning)
        return mask_utils.decode(rle).astype(np.uint8)


def encode_mask(mask: np.ndarray) -> dict[str, Any]:
    """A binary mask ``[H, W]`` as compressed COCO RLE with a JSON-friendly ``counts`` string."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def mask_to_box(mask: np.ndarray) -> np.ndarray | None:
    """The tight ``(x1, y1, x2, y2)`` pixel box of a binary mask ``[H, W]``; None when empty."""
    ys = np.flatnonzero(mask.any(axis=1))
    if len(ys) == 0:
        return None
    xs = np.flatnonzero(mask.any(axis=0))
    return np.array([xs[0], ys[0], xs[-1] + 1, ys[-1] + 1], np.float32)


def save_images(records: Records, images_dir: Path) -> None:
    """Put every sample's image at ``images_dir / file_name``.

    In-memory images are encoded by extension (``.jpg`` at quality 95, ``.png`` lossless);
    image files are copied.

    Raises:
        DatasetError: a source file is missing or a file cannot be written.
    """
    for sample in records.samples:
        target = images_dir / sample.file_name
        target.parent.mkdir(parents=True, exist_ok=True)
        if sample.image is not None:
            jpeg = target.suffix.lower() in {".jpg", ".jpeg"}
            params = [cv2.IMWRITE_JPEG_QUALITY, 95] if jpeg else []
            bgr = cv2.cvtColor(sample.image, cv2.COLOR_RGB2BGR)
            if not cv2.imwrite(str(target), bgr, params):
                raise DatasetError(f"{target}: cannot write the image")
        elif sample.path is not None and Path(sample.path).resolve() != target.resolve():
            if not Path(sample.path).is_file():
                raise DatasetError(f"{sample.path}: image file is missing")
            shutil.copyfile(sample.path, target)


def read_text_file(path: str | Path) -> str:
    """A dataset's text file (a COCO JSON, a YOLO data, list or label file, a VOC list) as
    UTF-8 text; a leading byte-order mark, as Windows tools save one, is dropped, so every
    format reads such a file as one without.

    Raises:
        OSError: the file cannot be read (``FileNotFoundError`` when it is missing).
        UnicodeDecodeError: it is not UTF-8.
    """
    return Path(path).read_text(encoding="utf-8-sig")


def read_image_size(path: Path) -> tuple[int, int]:
    """``(height, width)`` of the image :func:`~cvkit.images.read_image` gives for a file, from
    the file's header (the pixels are not decoded).

    The decoder turns a photo upright by its EXIF orientation, so an orientation of 5 to 8
    (taken sideways) swaps the stored width and height here too. The orientation is read where
    OpenCV reads it: the EXIF block of a JPEG, WebP or PNG (``eXIf`` before the pixel data) and
    the TIFF tag; an XMP orientation is ignored, as OpenCV ignores it.

    Raises:
        DatasetError: the file is missing or not an image.
    """
    width, height, orientation = _read_header(path)
    return (width, height) if orientation in SIDEWAYS_ORIENTATIONS else (height, width)


def read_exif_orientation(path: Path) -> int:
    """The EXIF orientation (1-8; 1 when absent) that :func:`~cvkit.images.read_image` applies
    to a file, read where :func:`read_image_size` reads it.

    Raises:
        DatasetError: the file is missing or not an image.
    """
    return _read_header(path)[2]


def _read_header(path: Path) -> tuple[int, int, int]:
    """``(width, height, orientation)`` of an image file as it stores them (header only).

    Raises:
        DatasetError: the file is missing or not an image.
    """
    from PIL import Image

    try:
        with Image.open(path) as image:
            return _stored_size_and_orientation(image)
    except FileNotFoundError:
        raise DatasetError(f"{path}: image file is missing") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(f"{path}: image file is unreadable ({exc})") from None


def _stored_size_and_orientation(image: Any) -> tuple[int, int, int]:
    """``(width, height, orientation)`` of an opened PIL image as the file stores them."""
    from PIL import Image

    tags = getattr(image, "tag_v2", None)
    if tags is not None:  # TIFF: recent Pillow reports the size already upright
        return int(tags[_WIDTH_TAG]), int(tags[_LENGTH_TAG]), int(tags.get(_ORIENTATION_TAG, 1))
    width, height = image.size
    raw = image.info.get("exif")
    if not raw:
        return width, height, 1
    exif = Image.Exif()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow warns of each tag a corrupt block cuts off
            exif.load(raw)
            orientation = exif.get(_ORIENTATION_TAG, 1)
    except (SyntaxError, ValueError, OSError, struct.error):
        orientation = 1  # a corrupt EXIF block: OpenCV ignores it too
    return width, height, orientation if isinstance(orientation, int) else 1


def verify_image_data(path: Path) -> None:
    """Decode every byte of an image file with PIL, which refuses cut-off data.

    OpenCV decodes a JPEG cut short into a full-size image whose lower part is garbage and only
    prints a warning; PIL raises. Call this where a file must be proven whole (``data check``).

    Raises:
        DatasetError: the file's image data is truncated or corrupt.
    """
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
    except (OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(f"{path}: image data is truncated or corrupt ({exc})") from None
