"""Convert a dataset split between COCO, YOLO and Pascal VOC (``cvkit data convert``)."""

from __future__ import annotations

from pathlib import Path

from cvkit.data.formats.detect import FORMATS, detect_format, load_records
from cvkit.data.formats.voc import split_list
from cvkit.data.records import SPLITS
from cvkit.errors import DatasetError


def infer_split(path: str | Path, split: str | None) -> str:
    """``split``, else the split a COCO file name states (``instances_val.json``), else train."""
    if split:
        return split
    stem = Path(path).stem.removeprefix("instances_")
    return stem if detect_format(path) == "coco" and stem in SPLITS else "train"


def convert(
    source: str | Path,
    to: str,
    out_dir: str | Path,
    images: str | Path | None = None,
    split: str | None = None,
) -> Path:
    """Read the split named by ``source`` and write it as ``to`` into ``out_dir``.

    Outputs: COCO ``annotations/instances_<split>.json`` + ``images/<split>/``; YOLO
    ``data.yaml`` + ``images/<split>/`` + ``labels/<split>/``; VOC ``JPEGImages/``,
    ``Annotations/``, ``ImageSets/Main/<split>.txt``, ``SegmentationClass/``. Converting
    several splits into one folder builds up one dataset. Returns the path that names the
    result (the JSON, the data YAML or the VOC folder).

    Raises:
        DatasetError: unknown target format, an unreadable source, or labels outside the
            class list (they have no name or id to write).
    """
    if to not in FORMATS:
        raise DatasetError(f"--to {to!r}: choose one of {FORMATS}")
    listed = (
        split is not None
        or detect_format(source) != "voc"
        or split_list(source, "train") is not None
    )
    split = infer_split(source, split)
    # a VOC folder without ImageSets and without --split: every image, written as train
    records = load_records(source, images, split if listed else None)
    for sample in records.samples:
        unknown = sample.labels[(sample.labels < 0) | (sample.labels >= len(records.classes))]
        if len(unknown):
            raise DatasetError(
                f"{sample.path or sample.file_name}: labels {sorted(set(unknown.tolist()))} are "
                f"outside the {len(records.classes)} classes; run `cvkit data check {source}`"
            )
    out_dir = Path(out_dir)
    if to == "coco":
        from cvkit.data.formats.coco import write_coco

        json_path = out_dir / "annotations" / f"instances_{split}.json"
        return write_coco(records, out_dir / "images" / split, json_path)
    if to == "yolo":
        from cvkit.data.formats.yolo import write_yolo

        return write_yolo(records, out_dir, split)
    from cvkit.data.formats.voc import write_voc

    return write_voc(records, out_dir, split)
