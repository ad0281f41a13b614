"""Pascal VOC: ``Annotations/*.xml``, ``JPEGImages/``, ``ImageSets/``, ``SegmentationClass/``.

Boxes in the XML are 1-based inclusive pixel indices (``xmin=1, xmax=W`` covers the whole
image), read as ``(xmin - 1, ymin - 1, xmax, ymax)`` in cvkit's continuous pixel coordinates and
written back the same way. ``difficult`` objects are kept with ``iscrowd`` set, so evaluation
ignores them as VOC's protocol does. ``SegmentationClass`` PNGs are palette images whose
indices are the classes (0 background, ``k`` = class ``k - 1``, 255 = border/ignore); they are
read as indices, never as colours. ``SegmentationObject`` PNGs, when present, give the instance
masks: index ``k`` marks the pixels of the ``k``-th object of the XML (1-based), 255 the void
border; they are read into the samples' ``segmentations`` (RLE), so the instance masks travel
like COCO's. Class order: ``labels.txt`` or ``classes.txt`` in the root
when present, else the 20 VOC classes when every name is one of them, else sorted names (the
names of every XML in the folder, so that all splits share one order). The
lists may start with a UTF-8 byte-order mark and use CRLF line ends, as Windows tools save them.
"""

from __future__ import annotations

import contextlib
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import numpy as np

from cvkit.data.records import (
    Records,
    Sample,
    encode_mask,
    read_image_size,
    read_text_file,
    save_images,
)
from cvkit.errors import DatasetError

VOC_CLASSES = [
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
]  # fmt: skip
CLASS_FILES = ("labels.txt", "classes.txt")


def voc_palette() -> list[int]:
    """The standard VOC colour map: 256 RGB triples flattened (index 255 is cream-white)."""
    palette = []
    for index in range(256):
        r = g = b = 0
        value = index
        for bit in range(8):
            r |= ((value >> 0) & 1) << (7 - bit)
            g |= ((value >> 1) & 1) << (7 - bit)
            b |= ((value >> 2) & 1) << (7 - bit)
            value >>= 3
        palette += [r, g, b]
    return palette


def split_list(root: str | Path, split: str) -> Path | None:
    """The ``ImageSets`` list of ``split`` (``Main/``, else ``Segmentation/``), or None."""
    for folder in ("Main", "Segmentation"):
        listing = Path(root) / "ImageSets" / folder / f"{split}.txt"
        if listing.is_file():
            return listing
    return None


def _split_ids(root: Path, split: str | None) -> list[str]:
    """The image ids of ``split`` (its ``ImageSets`` list), or of every annotation/mask file
    when ``split`` is None.

    Raises:
        DatasetError: ``split`` is given but listed nowhere: reading every image instead would
            train and validate on the same images without a word.
    """
    if split:
        listing = split_list(root, split)
        if listing is None:
            raise DatasetError(
                f"{root}: no list of the {split!r} split (ImageSets/Main/{split}.txt or "
                f"ImageSets/Segmentation/{split}.txt): write one, an image id (file name "
                "without extension) per line, so that training and validation images differ"
            )
        lines = read_text_file(listing).split("\n")
        return [line.split()[0] for line in lines if line.strip()]
    if (root / "Annotations").is_dir():
        return sorted(p.stem for p in (root / "Annotations").glob("*.xml"))
    return sorted(p.stem for p in (root / "SegmentationClass").glob("*.png"))


def _number(node: ET.Element, key: str, default: str, path: Path) -> float:
    """The number in ``node``'s ``key`` child (``default`` when there is none).

    Raises:
        DatasetError: the text is empty or no number (it once raised a bare ValueError).
    """
    text = node.findtext(key, default)
    try:
        return float(text)
    except ValueError:
        raise DatasetError(f"{path}: <{key}> holds {text!r}, not a number") from None


def _parse_xml(path: Path) -> tuple[str | None, int, int, list[tuple[str, list[float], bool]]]:
    try:
        tree = ET.parse(path)
    except (ET.ParseError, OSError) as exc:
        raise DatasetError(f"{path}: cannot parse the VOC annotation ({exc})") from None
    node = tree.getroot()
    size = node.find("size")
    width = int(_number(size, "width", "0", path)) if size is not None else 0
    height = int(_number(size, "height", "0", path)) if size is not None else 0
    objects = []
    for obj in node.iter("object"):
        box = obj.find("bndbox")
        if box is None:
            raise DatasetError(f"{path}: an object has no bndbox")
        xmin, ymin, xmax, ymax = (
            _number(box, k, "nan", path) for k in ("xmin", "ymin", "xmax", "ymax")
        )
        difficult = obj.findtext("difficult", "0").strip() in {"1", "true"}
        objects.append(
            (obj.findtext("name", "").strip(), [xmin - 1, ymin - 1, xmax, ymax], difficult)
        )
    return node.findtext("filename"), height, width, objects


def _classes(root: Path, parsed: dict[str, set[str]]) -> list[str]:
    """The class order: the root's class file, else from the object names of every XML
    (:func:`_folder_names`, which reuses ``parsed``, the names of the XMLs already read)."""
    for name in CLASS_FILES:
        if (root / name).is_file():
            lines = read_text_file(root / name).splitlines()
            listed = [line.strip() for line in lines if line.strip()]
            return [c for c in listed if c != "background"]
    names = _folder_names(root, parsed)
    if names <= set(VOC_CLASSES):
        return list(VOC_CLASSES)
    return sorted(names)


def _folder_names(root: Path, parsed: dict[str, set[str]]) -> set[str]:
    """The object names of every XML in ``Annotations/``, whatever split lists it: the class
    order must not depend on the split, or a val split without some class would number the
    others unlike the train split. ``parsed`` holds the names of the XMLs already read (by
    image id), which are not parsed again. A file that cannot be parsed is skipped here;
    reading its split reports it."""
    names = set().union(*parsed.values())
    for xml in (root / "Annotations").glob("*.xml"):
        if xml.stem in parsed:
            continue
        with contextlib.suppress(ET.ParseError, OSError):
            names |= {obj.findtext("name", "").strip() for obj in ET.parse(xml).iter("object")}
    return names


def read_voc(root: str | Path, split: str | None = None) -> Records:
    """Read a VOC folder (or the ``split`` listed in ``ImageSets``) into :class:`Records`.

    Names not in the class list get label ``-1`` for :mod:`cvkit.data.check` to report.

    Raises:
        DatasetError: an XML file cannot be parsed or lacks a box, or ``split`` has no
            ``ImageSets`` list.
    """
    root = Path(root)
    parsed = []
    for image_id in _split_ids(root, split):
        xml = root / "Annotations" / f"{image_id}.xml"
        filename, height, width, objects = _parse_xml(xml) if xml.is_file() else (None, 0, 0, [])
        path = root / "JPEGImages" / (filename or f"{image_id}.jpg")
        semantic = root / "SegmentationClass" / f"{image_id}.png"
        semantic = semantic if semantic.is_file() else None
        if not (height and width):
            with contextlib.suppress(DatasetError):  # the check reports the missing image
                height, width = read_image_size(semantic or path)
        instances = root / "SegmentationObject" / f"{image_id}.png"
        masks = _object_masks(instances, len(objects)) if instances.is_file() else None
        parsed.append((image_id, path, height, width, objects, semantic, masks))
    names = {image_id: {name for name, _, _ in objects} for image_id, *_, objects, _, _ in parsed}
    classes = _classes(root, names)
    index = {name: i for i, name in enumerate(classes)}
    samples = [
        Sample(
            image_id=number + 1,
            file_name=path.name,
            height=height,
            width=width,
            path=path,
            boxes=np.array([box for _, box, _ in objects], np.float32).reshape(-1, 4),
            labels=[index.get(name, -1) for name, _, _ in objects],
            iscrowd=[difficult for _, _, difficult in objects],
            semantic_path=semantic,
            segmentations=masks,
        )
        for number, (_, path, height, width, objects, semantic, masks) in enumerate(parsed)
    ]
    return Records(samples, classes, None, f"{root}:{split or 'all'}")


def _object_masks(path: Path, count: int) -> list[dict]:
    """The ``count`` objects' masks of a ``SegmentationObject`` PNG as RLE (index ``k`` is
    object ``k``; an object without pixels gets an empty mask).

    Raises:
        DatasetError: the PNG cannot be read or names more objects than the XML has.
    """
    from PIL import Image

    try:
        with Image.open(path) as png:
            indices = np.asarray(png if png.mode in ("P", "L") else png.convert("L"))
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read the instance PNG ({exc})") from None
    present = set(np.unique(indices).tolist()) - {0, 255}
    if present and max(present) > count:
        raise DatasetError(
            f"{path}: object index {max(present)} but the annotation has {count} objects"
        )
    return [encode_mask(indices == k) for k in range(1, count + 1)]


def _xml(sample: Sample, classes: list[str]) -> str:
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "JPEGImages"
    ET.SubElement(root, "filename").text = Path(sample.file_name).name
    size = ET.SubElement(root, "size")
    for key, value in (("width", sample.width), ("height", sample.height), ("depth", 3)):
        ET.SubElement(size, key).text = str(value)
    ET.SubElement(root, "segmented").text = (
        "1" if sample.semantic_path or sample.segmentations else "0"
    )
    for box, label, crowd in zip(sample.boxes, sample.labels, sample.iscrowd, strict=True):
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = classes[int(label)]
        ET.SubElement(obj, "difficult").text = "1" if crowd else "0"
        ET.SubElement(obj, "truncated").text = "0"
        node = ET.SubElement(obj, "bndbox")
        x1, y1, x2, y2 = (round(float(v)) for v in box)
        for key, value in (("xmin", x1 + 1), ("ymin", y1 + 1), ("xmax", x2), ("ymax", y2)):
            ET.SubElement(node, key).text = str(value)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode")


def write_voc(records: Records, out_dir: str | Path, split: str = "train") -> Path:
    """Write one split as VOC into ``out_dir``; returns ``out_dir``.

    Writes ``JPEGImages/``, ``Annotations/<id>.xml``, ``ImageSets/Main/<split>.txt``,
    ``labels.txt`` (the class order) and, for samples with a semantic mask or instance
    segmentations, palette PNGs in ``SegmentationClass/`` (listed in
    ``ImageSets/Segmentation/<split>.txt``) and, with instance segmentations, in
    ``SegmentationObject/`` (object ``k`` as index ``k + 1``; a later object covers an earlier
    one where they overlap).
    """
    from PIL import Image

    out_dir = Path(out_dir)
    flat = [replace(s, file_name=Path(s.file_name).name) for s in records.samples]
    save_images(Records(flat, records.classes, records.category_ids), out_dir / "JPEGImages")
    for folder in (
        "Annotations",
        "ImageSets/Main",
        "ImageSets/Segmentation",
        "SegmentationClass",
        "SegmentationObject",
    ):
        (out_dir / folder).mkdir(parents=True, exist_ok=True)
    ids, segmented = [], []
    palette = voc_palette()
    for sample in flat:
        image_id = Path(sample.file_name).stem
        ids.append(image_id)
        (out_dir / "Annotations" / f"{image_id}.xml").write_text(
            _xml(sample, records.classes), encoding="utf-8"
        )
        if sample.semantic_path is not None or sample.segmentations:
            semantic = sample.semantic_mask()
            png = Image.fromarray(semantic.astype(np.uint8), mode="P")
            png.putpalette(palette)
            png.save(out_dir / "SegmentationClass" / f"{image_id}.png")
            segmented.append(image_id)
        if sample.segmentations:
            if len(sample.segmentations) > 254:  # index 255 is the void border
                raise DatasetError(
                    f"{sample.file_name}: {len(sample.segmentations)} objects do not fit a VOC "
                    "SegmentationObject PNG (254 at most)"
                )
            objects = np.zeros((sample.height, sample.width), np.uint8)
            for number, mask in enumerate(sample.instance_masks(), start=1):
                objects[mask > 0] = number
            png = Image.fromarray(objects, mode="P")
            png.putpalette(palette)
            png.save(out_dir / "SegmentationObject" / f"{image_id}.png")
    (out_dir / "ImageSets" / "Main" / f"{split}.txt").write_text(
        "".join(f"{i}\n" for i in ids), encoding="utf-8"
    )
    if segmented:
        listing = out_dir / "ImageSets" / "Segmentation" / f"{split}.txt"
        listing.write_text("".join(f"{i}\n" for i in segmented), encoding="utf-8")
    (out_dir / "labels.txt").write_text(
        "".join(f"{c}\n" for c in records.classes), encoding="utf-8"
    )
    return out_dir
