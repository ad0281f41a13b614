"""The built-in synthetic shapes dataset: the default data of every config without a path.

Each image shows 1-6 coloured circles, rectangles and triangles of several sizes and rotations
(variants take other counts and sizes, e.g. many small objects on large images) on a textured,
noisy background (noise, gradients, stripes, checkers, blobs). Shapes overlap and occlude each
other and may be cut by the image border; every object keeps a visible part large enough to be
seen, so no unlabeled fragments remain. Boxes are the tight boxes of the visible masks.
Everything is drawn from one ``numpy.random.Generator``, so a seed reproduces the set.

:func:`render_sample` draws one image in memory (handy for other datasets, e.g. shape crops for
classification); :func:`write_synthetic` writes a full COCO dataset (JPEG images,
``annotations/instances_{train,val}.json`` with RLE masks and areas, semantic PNGs);
:func:`synthetic_root` generates it once per parameter set into a cache folder and reuses it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from cvkit.data.records import Records, Sample, encode_mask, mask_to_box
from cvkit.logs import get_logger

SHAPE_CLASSES = ["circle", "rectangle", "triangle"]
SPLITS = ("train", "val")
# Bump when the drawing changes, so cached datasets of the old version are not reused.
GENERATOR_VERSION = 1
_MIN_VISIBLE_FRACTION = 0.35
_MAX_TRIES = 12
DEFAULT_OBJECTS = (1, 6)
"""(min, max) shapes tried per image (``data.synthetic.objects``)."""
DEFAULT_OBJECT_SIZE = (0.12, 0.5)
"""Range of a shape's extent as fractions of the image side (``data.synthetic.object_size``)."""

logger = get_logger("data")


@dataclass
class SyntheticSample:
    """One rendered image with exact annotations.

    Attributes:
        image: ``uint8 [S, S, 3]`` RGB.
        boxes: ``float32 [N, 4]`` ``(x1, y1, x2, y2)`` pixels, tight around the visible mask.
        labels: ``int64 [N]`` indices into :data:`SHAPE_CLASSES`.
        masks: ``uint8 [N, S, S]`` visible (occlusion-aware) instance masks, 0/1.
    """

    image: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    masks: np.ndarray

    def semantic(self) -> np.ndarray:
        """``uint8 [S, S]``: 0 for background, ``label + 1`` where an object is visible."""
        semantic = np.zeros(self.image.shape[:2], np.uint8)
        for mask, label in zip(self.masks, self.labels, strict=True):
            semantic[mask > 0] = label + 1
        return semantic


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random textured background ``float32 [S, S, 3]`` in 0..255."""
    base = rng.uniform(30, 225, size=3)
    other = rng.uniform(30, 225, size=3)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    kind = rng.integers(5)
    if kind == 0:  # flat colour
        weight = np.zeros_like(xx)
    elif kind == 1:  # linear gradient in a random direction
        angle = rng.uniform(0, 2 * np.pi)
        weight = (np.cos(angle) * xx + np.sin(angle) * yy + 1.5) / 3
    elif kind == 2:  # stripes
        angle = rng.uniform(0, np.pi)
        period = rng.uniform(0.05, 0.25)
        weight = (np.sin((np.cos(angle) * xx + np.sin(angle) * yy) * 2 * np.pi / period) > 0) * 0.6
    elif kind == 3:  # checkerboard
        cells = rng.integers(3, 10)
        weight = ((np.floor(xx * cells) + np.floor(yy * cells)) % 2) * 0.5
    else:  # smooth random blobs
        coarse = rng.uniform(0, 1, size=(rng.integers(3, 7),) * 2).astype(np.float32)
        weight = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC).clip(0, 1)
    image = base * (1 - weight[..., None]) + other * weight[..., None]
    return image.astype(np.float32)


def _shape_mask(
    rng: np.random.Generator,
    label: int,
    size: int,
    object_size: tuple[float, float] = DEFAULT_OBJECT_SIZE,
) -> tuple[np.ndarray, float]:
    """A random shape of class ``label``: its in-image mask ``uint8 [S, S]`` and full area;
    its extent is drawn uniformly in ``object_size`` (fractions of ``S``)."""
    mask = np.zeros((size, size), np.uint8)
    extent = rng.uniform(*object_size) * size
    center = rng.uniform(-0.05 * size, 1.05 * size, size=2)
    if SHAPE_CLASSES[label] == "circle":
        radius = extent / 2
        cv2.circle(mask, (round(center[0]), round(center[1])), round(radius), 1, -1)
        return mask, np.pi * radius**2
    if SHAPE_CLASSES[label] == "rectangle":
        aspect = rng.uniform(0.45, 1.0)
        width, height = extent, extent * aspect
        corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], np.float32) / 2
        corners *= [width, height]
    else:
        angles = np.pi / 2 + np.array([0, 2, 4]) * np.pi / 3 + rng.uniform(-0.35, 0.35, 3)
        corners = np.stack([np.cos(angles), np.sin(angles)], axis=1) * extent / 2
    theta = rng.uniform(0, 2 * np.pi)
    rotation = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    points = corners @ rotation.T + center
    cv2.fillPoly(mask, [np.round(points).astype(np.int32)], 1)
    x, y = points[:, 0], points[:, 1]
    area = 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))
    return mask, float(area)


def render_sample(
    rng: np.random.Generator,
    image_size: int = 160,
    max_objects: int = 6,
    min_objects: int = 1,
    object_size: tuple[float, float] = DEFAULT_OBJECT_SIZE,
) -> SyntheticSample:
    """Draw one synthetic image and its annotations from ``rng``.

    Args:
        rng: the random source; the same generator state gives the same sample.
        image_size: side ``S`` of the square image in pixels.
        max_objects, min_objects: range of the number of shapes tried per image.
        object_size: range of a shape's extent (its diameter or longer side before rotation)
            as fractions of ``S``.

    Returns:
        A :class:`SyntheticSample` with ``N >= 1`` objects.
    """
    image = _background(rng, image_size)
    # the fewest visible pixels an object keeps: scaled with the smallest objects drawn
    min_visible = max(12.0, 0.0015 * image_size**2 * (object_size[0] / DEFAULT_OBJECT_SIZE[0]) ** 2)
    visible: list[np.ndarray] = []
    full_areas: list[float] = []
    labels: list[int] = []
    colours: list[np.ndarray] = []
    wanted = int(rng.integers(min_objects, max_objects + 1))
    for _ in range(wanted):
        for _ in range(_MAX_TRIES):
            label = int(rng.integers(len(SHAPE_CLASSES)))
            mask, area = _shape_mask(rng, label, image_size, object_size)
            occluded = [v & (1 - mask) for v in visible]
            own = int(mask.sum())
            fits = own >= max(min_visible, _MIN_VISIBLE_FRACTION * area)
            keeps_others = all(
                o.sum() >= max(min_visible, _MIN_VISIBLE_FRACTION * a)
                for o, a in zip(occluded, full_areas, strict=True)
            )
            if fits and keeps_others:
                visible = [*occluded, mask]
                full_areas.append(area)
                labels.append(label)
                colours.append(rng.uniform(0, 255, size=3))
                break
    if not visible:  # every try failed (rare, tiny images): draw again from the advanced rng
        return render_sample(rng, image_size, max_objects, min_objects, object_size)
    for mask, colour in zip(visible, colours, strict=True):
        shading = rng.normal(0, rng.uniform(2, 15), size=image.shape[:2])[..., None]
        image = np.where(mask[..., None] > 0, colour + shading, image)
    image += rng.normal(0, rng.uniform(3, 18), size=image.shape)
    if rng.random() < 0.3:
        image = cv2.GaussianBlur(image, (3, 3), 0)
    masks = np.stack(visible).astype(np.uint8)
    boxes = np.stack([mask_to_box(m) for m in masks]).astype(np.float32)
    return SyntheticSample(
        image=np.clip(image, 0, 255).astype(np.uint8),
        boxes=boxes,
        labels=np.asarray(labels, np.int64),
        masks=masks,
    )


def synthetic_records(
    num_images: int,
    image_size: int = 160,
    seed: int = 0,
    split: str = "train",
    objects: tuple[int, int] = DEFAULT_OBJECTS,
    object_size: tuple[float, float] = DEFAULT_OBJECT_SIZE,
) -> tuple[Records, list[np.ndarray]]:
    """``num_images`` rendered samples of one split as in-memory :class:`Records`.

    Each split draws from its own stream (``seed`` and the split name), so changing
    ``num_val`` does not change the train images. ``objects``: (min, max) shapes tried per
    image; ``object_size``: their extent range as fractions of the side
    (:func:`render_sample`). Returns the records (images in ``sample.image``, RLE
    segmentations) and the semantic masks ``uint8 [S, S]``.
    """
    rng = np.random.default_rng([seed, SPLITS.index(split) if split in SPLITS else 99])
    samples, semantics = [], []
    for index in range(num_images):
        drawn = render_sample(rng, image_size, objects[1], objects[0], object_size)
        samples.append(
            Sample(
                image_id=index + 1,
                file_name=f"{split}_{index:06d}.jpg",
                height=image_size,
                width=image_size,
                image=drawn.image,
                boxes=drawn.boxes,
                labels=drawn.labels,
                segmentations=[encode_mask(m) for m in drawn.masks],
            )
        )
        semantics.append(drawn.semantic())
    classes = list(SHAPE_CLASSES)
    records = Records(samples, classes, list(range(1, len(classes) + 1)), f"synthetic:{split}")
    return records, semantics


def write_synthetic(
    out_dir: str | Path,
    num_train: int = 600,
    num_val: int = 150,
    image_size: int = 160,
    seed: int = 0,
    objects: tuple[int, int] = DEFAULT_OBJECTS,
    object_size: tuple[float, float] = DEFAULT_OBJECT_SIZE,
) -> Path:
    """Write the synthetic dataset as COCO into ``out_dir``.

    Layout: ``images/{train,val}/*.jpg``, ``annotations/instances_{train,val}.json`` (RLE
    masks, 1-based category ids) and ``semantic/{train,val}/*.png`` (0 background,
    ``label + 1`` per class). ``objects`` and ``object_size`` as in
    :func:`synthetic_records`. Returns ``out_dir``.
    """
    from cvkit.data.formats.coco import write_coco

    out_dir = Path(out_dir)
    for split, count in (("train", num_train), ("val", num_val)):
        records, semantics = synthetic_records(count, image_size, seed, split, objects, object_size)
        write_coco(records, out_dir / "images" / split, annotation_path(out_dir, split))
        semantic_dir = out_dir / "semantic" / split
        semantic_dir.mkdir(parents=True, exist_ok=True)
        for sample, semantic in zip(records.samples, semantics, strict=True):
            cv2.imwrite(str(semantic_dir / f"{Path(sample.file_name).stem}.png"), semantic)
    return out_dir


def annotation_path(root: Path, split: str) -> Path:
    """``root/annotations/instances_<split>.json``: where the COCO file of a split lives."""
    return root / "annotations" / f"instances_{split}.json"


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """The cvkit cache folder: ``cache_dir``, else ``$CVKIT_CACHE_DIR``, else ``~/.cache/cvkit``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("CVKIT_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "cvkit"


def synthetic_root(
    num_train: int = 600,
    num_val: int = 150,
    image_size: int = 160,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    objects: tuple[int, int] = DEFAULT_OBJECTS,
    object_size: tuple[float, float] = DEFAULT_OBJECT_SIZE,
) -> Path:
    """The cached synthetic dataset for these parameters, generated on first use.

    Lives in ``<cache>/synthetic/<hash of the parameters>``. It is written into a temporary
    folder beside it and renamed into place in one step, so concurrent processes (DDP ranks,
    parallel test workers) never see a half-written dataset: the first rename wins and the
    others discard their copy.
    """
    params = {
        "version": GENERATOR_VERSION,
        "num_train": num_train,
        "num_val": num_val,
        "image_size": image_size,
        "seed": seed,
    }
    # variants name their object counts and sizes; the default set keeps its folder
    if tuple(objects) != DEFAULT_OBJECTS or tuple(object_size) != DEFAULT_OBJECT_SIZE:
        params.update(objects=list(objects), object_size=list(object_size))
    digest = hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    parent = cache_root(cache_dir) / "synthetic"
    root = parent / digest
    if (root / "params.json").is_file():
        return root
    parent.mkdir(parents=True, exist_ok=True)
    logger.info("generating the synthetic dataset %s into %s", params, root)
    tmp = Path(tempfile.mkdtemp(prefix=f".{digest}-", dir=parent))
    try:
        write_synthetic(tmp, num_train, num_val, image_size, seed, objects, object_size)
        (tmp / "params.json").write_text(json.dumps(params, indent=2), encoding="utf-8")
        try:
            tmp.rename(root)
        except OSError:
            if not (root / "params.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root
