"""YOLO (Ultralytics layout): a data ``.yaml`` plus one ``.txt`` label file per image.

The data file holds ``path`` (dataset root; relative to the YAML's folder, default that folder),
``train`` / ``val`` (an image folder, a ``.txt`` list of images, or a list of either, relative
to ``path``) and ``names`` (a list, or a dict ``{index: name}``). The label file of
``.../images/x/a.jpg`` is ``.../labels/x/a.txt``; each row is ``class cx cy w h`` normalized to
0..1, or ``class x1 y1 x2 y2 x3 y3 ...`` (a normalized polygon, whose box is its bounds). An
image without a label file has no objects. YOLO has no category ids. Text files may start
with a UTF-8 byte-order mark and use CRLF line ends, as Windows tools save them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import yaml

from cvkit.data.records import (
    SPLITS,
    Records,
    Sample,
    read_image_size,
    read_text_file,
    save_images,
)
from cvkit.errors import DatasetError
from cvkit.images import IMAGE_SUFFIXES


def load_data_yaml(yaml_path: Path) -> dict[str, Any]:
    """The parsed data file with ``names`` as a list and ``path`` resolved.

    Raises:
        DatasetError: not YAML, no ``names``, or ``names`` indices are not ``0..C-1``.
    """
    try:
        data = yaml.safe_load(read_text_file(yaml_path))
    except (OSError, yaml.YAMLError) as exc:
        raise DatasetError(f"{yaml_path}: cannot read the YOLO data file ({exc})") from None
    if not isinstance(data, dict) or "names" not in data:
        raise DatasetError(f"{yaml_path}: a YOLO data file needs 'names'")
    names = data["names"]
    if isinstance(names, dict):
        indices = sorted(int(k) for k in names)
        if indices != list(range(len(indices))):
            raise DatasetError(
                f"{yaml_path}: names indices {indices} must be 0..{len(indices) - 1}"
            )
        names = [str(names[k] if k in names else names[str(k)]) for k in indices]
    data["names"] = [str(n) for n in names]
    root = Path(data.get("path") or ".")
    data["path"] = root if root.is_absolute() else (Path(yaml_path).parent / root)
    return data


def label_path(image_path: Path) -> Path:
    """The label file of an image: the last ``images`` folder becomes ``labels``, ``.txt``."""
    parts = list(image_path.parts)
    if "images" in parts:
        index = len(parts) - 1 - parts[::-1].index("images")
        parts[index] = "labels"
    return Path(*parts).with_suffix(".txt")


def _split_images(root: Path, entry: str | list[str], yaml_path: Path) -> list[Path]:
    images: list[Path] = []
    for item in [entry] if isinstance(entry, str) else entry:
        where = root / item
        if where.is_dir():
            images += sorted(p for p in where.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        elif where.is_file() and where.suffix == ".txt":
            lines = [line.strip() for line in read_text_file(where).splitlines()]
            images += [
                (root / line) if not Path(line).is_absolute() else Path(line)
                for line in lines
                if line
            ]
        else:
            raise DatasetError(f"{yaml_path}: split folder or list {where} does not exist")
    return images


def _read_labels(path: Path, height: int, width: int):
    """Boxes ``[N, 4]`` xyxy pixels, labels and polygon segmentations of one label file."""
    boxes, labels, polygons = [], [], []
    for number, line in enumerate(read_text_file(path).splitlines(), start=1):
        values = line.split()
        if not values:
            continue
        try:
            numbers = [float(v) for v in values]
        except ValueError:
            raise DatasetError(f"{path}:{number}: not numbers: {line!r}") from None
        coords = np.array(numbers[1:], np.float64)
        if len(coords) == 4:
            cx, cy, w, h = coords * [width, height, width, height]
            boxes.append([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
            polygons.append([])
        elif len(coords) >= 6 and len(coords) % 2 == 0:
            xy = coords.reshape(-1, 2) * [width, height]
            boxes.append([*xy.min(axis=0), *xy.max(axis=0)])
            polygons.append([xy.reshape(-1).tolist()])
        else:
            raise DatasetError(
                f"{path}:{number}: expected 'class cx cy w h' or 'class x1 y1 x2 y2 x3 y3 ...', "
                f"got {len(values)} values"
            )
        labels.append(int(numbers[0]) if numbers[0] == int(numbers[0]) else -1)
    segmentations = polygons if any(polygons) else None
    return np.array(boxes, np.float32).reshape(-1, 4), labels, segmentations


def read_yolo(yaml_path: str | Path, split: str | None = "train") -> Records:
    """Read one split of a YOLO dataset into :class:`Records` (``category_ids`` is None).

    ``split`` None reads every image the data file lists (its ``train``, ``val`` and ``test``
    entries; an image listed by several is read once), with file names relative to the
    ``images/`` folder (``val/a.jpg``) instead of the split's folder. Image sizes come from the
    image headers. Class indices are kept as written, so an index outside ``names`` reaches
    :mod:`cvkit.data.check` (which reports it).

    Raises:
        DatasetError: the data file or split is missing, or a label row is malformed.
    """
    yaml_path = Path(yaml_path)
    data = load_data_yaml(yaml_path)
    present = [key for key in SPLITS if data.get(key)]
    if split is not None and not data.get(split):
        raise DatasetError(f"{yaml_path}: no {split!r} split (it has {present})")
    if split is None and not present:
        raise DatasetError(f"{yaml_path}: lists no split ({', '.join(SPLITS)})")
    root = Path(data["path"])
    images_root = root / "images" if split is None else root / "images" / split
    listed = [
        image_path
        for name in ([split] if split is not None else present)
        for image_path in _split_images(root, data[name], yaml_path)
    ]
    samples = []
    for index, image_path in enumerate(dict.fromkeys(listed)):
        try:
            height, width = read_image_size(image_path)
        except DatasetError:
            height, width = 0, 0  # reported by the check as a missing/unreadable image
        labels_file = label_path(image_path)
        boxes, labels, segmentations = (
            _read_labels(labels_file, height, width)
            if labels_file.is_file()
            else (np.zeros((0, 4), np.float32), [], None)
        )
        try:
            file_name = str(image_path.relative_to(images_root))
        except ValueError:
            file_name = image_path.name
        samples.append(
            Sample(
                image_id=index + 1,
                file_name=file_name,
                height=height,
                width=width,
                path=image_path,
                boxes=boxes,
                labels=labels,
                segmentations=segmentations,
            )
        )
    return Records(samples, data["names"], None, f"{yaml_path}:{split or 'all'}")


def write_yolo(records: Records, out_dir: str | Path, split: str = "train") -> Path:
    """Write one split as YOLO into ``out_dir``; returns the ``data.yaml`` path.

    Images go to ``images/<split>/``, labels (``class cx cy w h`` normalized, one row per
    object; crowd objects are left out, YOLO has no such flag) to ``labels/<split>/``. An
    existing ``data.yaml`` with the same names keeps its other splits.
    """
    out_dir = Path(out_dir)
    images_dir = out_dir / "images" / split
    save_images(records, images_dir)
    for sample in records.samples:
        target = label_path(images_dir / sample.file_name)
        target.parent.mkdir(parents=True, exist_ok=True)
        scale = np.array([sample.width, sample.height] * 2, np.float64)
        rows = []
        for box, label, crowd in zip(sample.boxes, sample.labels, sample.iscrowd, strict=True):
            if crowd:
                continue
            x1, y1, x2, y2 = box / scale
            rows.append(
                f"{label} {(x1 + x2) / 2:.6f} {(y1 + y2) / 2:.6f} {x2 - x1:.6f} {y2 - y1:.6f}"
            )
        target.write_text("".join(f"{row}\n" for row in rows), encoding="utf-8")
    yaml_path = out_dir / "data.yaml"
    data: dict[str, Any] = {"path": str(out_dir.resolve())}
    if yaml_path.is_file():
        old = load_data_yaml(yaml_path)
        if old["names"] == list(records.classes):
            data.update({k: v for k, v in old.items() if k in ("train", "val", "test")})
    data[split] = f"images/{split}"
    data["names"] = dict(enumerate(records.classes))
    yaml_path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return yaml_path
