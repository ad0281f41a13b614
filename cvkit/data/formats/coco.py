"""COCO instances JSON: reader, writer, and the ground-truth dict evaluation needs.

The reader follows the COCO format specification rather than our own writer: category ids may
start at 1 and have gaps (they are mapped to contiguous labels ``0..C-1`` in ascending id
order, kept in ``Records.category_ids``), ``bbox`` is ``[x, y, width, height]`` in pixels,
``segmentation`` is a polygon list, an RLE dict or an uncompressed RLE, ``iscrowd`` regions are
kept with their flag (evaluation ignores them, training drops them), and images without
annotations are kept as empty samples. An image entry without ``width``/``height`` (as some
labelling tools write them) takes its size from the image file's header, upright as
:func:`~cvkit.images.read_image` decodes it. A file saved with a UTF-8 byte-order mark reads as
one without. Ids must be integers, as the format says: a string id is refused, named.

A val split may list only some of the train split's categories (as labelling tools and dataset
exporters write a file per split): read with the train split's :class:`ClassMap`, its labels
are numbered as train numbers them (by category id) and its ``category_ids`` are train's; a
category that train lacks, by id or by name, is refused, named.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from cvkit.data.records import (
    ClassMap,
    Records,
    Sample,
    decode_segmentation,
    read_image_size,
    read_text_file,
    save_images,
)
from cvkit.errors import DatasetError


def default_images_dir(json_path: Path) -> Path:
    """Where a COCO file's images are by default: an ``images/`` folder, else the JSON's folder.

    ``images/`` is looked for beside the JSON and beside its parent (the usual
    ``annotations/instances_x.json`` + ``images/`` layout); a split-named subfolder
    (``images/<split>`` for ``instances_<split>.json``) is used when present.
    """
    split = json_path.stem.removeprefix("instances_")
    for base in (json_path.parent, json_path.parent.parent):
        images = base / "images"
        if (images / split).is_dir():
            return images / split
        if images.is_dir():
            return images
    return json_path.parent


def load_coco_json(json_path: Path) -> dict[str, Any]:
    """The parsed JSON of a COCO file, with ``images``/``annotations``/``categories`` lists.

    Raises:
        DatasetError: the file is missing, not JSON, lacks the required lists, or has an
            entry that is no object or an id that is no integer (:func:`_check_ids`).
    """
    try:
        data = json.loads(read_text_file(json_path))
    except FileNotFoundError:
        raise DatasetError(f"{json_path}: COCO annotation file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{json_path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DatasetError(f"{json_path}: a COCO file needs an 'images' list")
    if not isinstance(data.get("categories"), list) or not data["categories"]:
        raise DatasetError(f"{json_path}: a COCO file needs a non-empty 'categories' list")
    data.setdefault("annotations", [])
    _check_ids(data, json_path)
    return data


ID_FIELDS = {"images": ("id",), "categories": ("id",), "annotations": ("image_id", "category_id")}


def _check_ids(data: dict[str, Any], json_path: Path) -> None:
    """Refuse an entry that is no object, or an id that is present but no integer.

    Some export scripts write ids as strings (``"img_175"``, ``"3"``): the format says
    integers, and a string id failed deep inside reading (a ValueError) or was reported as
    an unknown category while the categories list the same number.

    Raises:
        DatasetError: naming the list, the position, the field and the value.
    """
    for key, fields in ID_FIELDS.items():
        for position, entry in enumerate(data[key]):
            if not isinstance(entry, dict):
                raise DatasetError(f"{json_path}: {key}[{position}] is no object: {entry!r:.100}")
            for field in fields:
                value = entry.get(field, 0)
                if isinstance(value, bool) or not isinstance(value, int):
                    raise DatasetError(
                        f"{json_path}: {key}[{position}].{field} is {value!r:.100}; COCO ids "
                        "are integers"
                    )


def read_coco(
    json_path: str | Path,
    images_dir: str | Path | None = None,
    semantic_dir: str | Path | None = None,
    data: dict[str, Any] | None = None,
    reference: ClassMap | None = None,
) -> Records:
    """Read a COCO instances file into :class:`Records`.

    Args:
        json_path: the ``instances_*.json`` file.
        images_dir: folder that ``file_name`` is relative to (default:
            :func:`default_images_dir`).
        semantic_dir: optional folder of semantic PNGs named ``<image stem>.png``.
        data: the file as :func:`load_coco_json` already parsed it (saves reading it twice).
        reference: the numbering to read the file with (a val split read as the train split
            or a checkpoint numbers classes): the file's categories must be among its
            categories, with the same ids and names, and the records take its classes and
            category ids. None, or a map without category ids: the file's own categories.

    Returns:
        Records whose ``category_ids[i]`` is the COCO id of label ``i``. Boxes are converted
        from ``[x, y, w, h]`` to ``(x1, y1, x2, y2)`` pixels. Annotations are kept as they are
        for :mod:`cvkit.data.check` to judge: an unknown ``category_id`` becomes label ``-1``;
        annotations of unknown images are left out
        (:func:`cvkit.data.check.coco_json_problems` names them).

    Raises:
        DatasetError: the file is not a COCO file, or it has a category that ``reference``
            lacks (:func:`_check_categories_in`).
    """
    json_path = Path(json_path)
    data = load_coco_json(json_path) if data is None else data
    images_dir = Path(images_dir) if images_dir is not None else default_images_dir(json_path)
    categories = sorted(data["categories"], key=lambda c: int(c["id"]))
    if reference is None or reference.category_ids is None:
        names = [str(c["name"]) for c in categories]
        category_ids = [int(c["id"]) for c in categories]
    else:
        _check_categories_in(categories, reference, json_path)
        names, category_ids = list(reference.classes), list(reference.category_ids)
    # Only the file's own categories: an annotation of another id stays unknown (-1) for the
    # dataset check to name, even when the reference has that id.
    declared = {int(c["id"]) for c in categories}
    label_of = {cid: index for index, cid in enumerate(category_ids) if cid in declared}
    by_image: dict[int, list[dict[str, Any]]] = {}
    for ann in data["annotations"]:
        by_image.setdefault(int(ann.get("image_id", -1)), []).append(ann)
    samples = []
    for position, image in enumerate(data["images"]):
        image_id, file_name, height, width = _image_entry(image, position, json_path, images_dir)
        anns = by_image.get(image_id, [])
        xywh = np.array([a.get("bbox", [np.nan] * 4) for a in anns], np.float32).reshape(-1, 4)
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        has_masks = any(a.get("segmentation") for a in anns)
        semantic = None
        if semantic_dir is not None:
            semantic = Path(semantic_dir) / f"{Path(file_name).stem}.png"
        samples.append(
            Sample(
                image_id=image_id,
                file_name=file_name,
                height=height,
                width=width,
                path=images_dir / file_name,
                boxes=boxes,
                labels=[label_of.get(int(a.get("category_id", -1)), -1) for a in anns],
                iscrowd=[bool(a.get("iscrowd", 0)) for a in anns],
                segmentations=[a.get("segmentation") or [] for a in anns] if has_masks else None,
                semantic_path=semantic,
            )
        )
    return Records(samples, names, category_ids, str(json_path))


def _check_categories_in(
    categories: list[dict[str, Any]], reference: ClassMap, json_path: Path
) -> None:
    """Refuse a category of the file that ``reference`` lacks: an id it does not have, or an
    id it names otherwise (the model cannot predict that class, or would score it under
    another name).

    Raises:
        DatasetError: naming the category and the reference's categories.
    """
    name_of = dict(zip(reference.category_ids or [], reference.classes, strict=True))
    for category in categories:
        category_id, name = int(category["id"]), str(category["name"])
        if name_of.get(category_id) == name:
            continue
        known = ", ".join(f"{cid} {cname!r}" for cid, cname in name_of.items())
        if category_id in name_of:
            problem = (
                f"category {category_id} is named {name!r} here but "
                f"{name_of[category_id]!r} in {reference.source}"
            )
        else:
            problem = f"category {category_id} ({name!r}) is not a category of {reference.source}"
        raise DatasetError(
            f"{json_path}: {problem}, whose categories are "
            f"{known}: the model cannot predict it (a split may list only some of them, each "
            "with the same id and name)"
        )


def _image_entry(
    image: dict[str, Any], position: int, json_path: Path, images_dir: Path
) -> tuple[int, str, int, int]:
    """``(id, file_name, height, width)`` of one ``images`` entry (an object with an integer
    or no ``id``, as :func:`load_coco_json` checked).

    A missing or zero ``width``/``height`` is read from the file's header; a file that cannot
    be read leaves them 0 for :mod:`cvkit.data.check` to report the image.

    Raises:
        DatasetError: the entry lacks ``id`` or ``file_name``.
    """
    if "id" not in image or "file_name" not in image:
        raise DatasetError(
            f"{json_path}: images[{position}] needs 'id' and 'file_name', got {image!r:.200}"
        )
    file_name = str(image["file_name"])
    height, width = int(image.get("height") or 0), int(image.get("width") or 0)
    if not (height and width):
        with contextlib.suppress(DatasetError):  # the check reports the missing image
            height, width = read_image_size(images_dir / file_name)
    return image["id"], file_name, height, width


def coco_dict(records: Records, include_segmentation: bool = True) -> dict[str, Any]:
    """The split as a COCO instances dict (boxes ``[x, y, w, h]`` in original pixels).

    Category ids are ``records.category_ids`` or ``1..C`` when the format had none. ``area`` is
    the mask area when a segmentation exists, else the box area. Objects flagged ``iscrowd``
    carry ``iscrowd: 1`` so COCO evaluation ignores them.
    """
    ids = records.category_ids or list(range(1, len(records.classes) + 1))
    images, annotations = [], []
    for sample in records.samples:
        images.append(
            {
                "id": int(sample.image_id),
                "file_name": sample.file_name,
                "height": int(sample.height),
                "width": int(sample.width),
            }
        )
        for index in range(len(sample)):
            x1, y1, x2, y2 = (float(v) for v in sample.boxes[index])
            ann = {
                "id": len(annotations) + 1,
                "image_id": int(sample.image_id),
                "category_id": int(ids[int(sample.labels[index])]),
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "area": (x2 - x1) * (y2 - y1),
                "iscrowd": int(sample.iscrowd[index]),
            }
            segmentation = sample.segmentations[index] if sample.segmentations else None
            if segmentation:
                mask = decode_segmentation(segmentation, sample.height, sample.width)
                ann["area"] = float(mask.sum())
                if include_segmentation:
                    ann["segmentation"] = segmentation
            annotations.append(ann)
    categories = [
        {"id": int(cid), "name": name, "supercategory": "object"}
        for cid, name in zip(ids, records.classes, strict=True)
    ]
    return {"images": images, "annotations": annotations, "categories": categories}


def write_coco(records: Records, images_dir: str | Path, json_path: str | Path) -> Path:
    """Write ``records`` as a COCO file plus its images; returns ``json_path``.

    In-memory images are encoded by extension (``.jpg`` at quality 95, ``.png``); image files
    are copied to ``images_dir / file_name``.
    """
    images_dir, json_path = Path(images_dir), Path(json_path)
    save_images(records, images_dir)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(coco_dict(records)), encoding="utf-8")
    return json_path
