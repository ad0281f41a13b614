"""Name a dataset by a path and read it: the format is detected from what the path is.

- a ``.json`` file is COCO (images from ``images``, default: an ``images/`` folder or the
  JSON's folder);
- a ``.yaml``/``.yml`` file is a YOLO data file (``split`` picks ``train``, ``val`` or
  ``test``; None: every image it lists);
- a folder with ``Annotations/`` or ``SegmentationClass/`` is Pascal VOC (``split`` picks an
  ``ImageSets`` list; None: every annotated image).
"""

from __future__ import annotations

from pathlib import Path

from cvkit.data.records import Records
from cvkit.errors import DatasetError

FORMATS = ("coco", "yolo", "voc")


def detect_format(path: str | Path) -> str:
    """``coco``, ``yolo`` or ``voc`` for ``path``.

    Raises:
        DatasetError: the path does not exist (the message gives the current directory a
            relative path starts at) or is none of the three.
    """
    path = Path(path)
    if not path.exists():
        # A relative path in a config file is easily taken as relative to that file.
        where = "" if path.is_absolute() else f" (relative paths start at {Path.cwd()})"
        raise DatasetError(f"{path}: dataset path does not exist{where}")
    if path.is_file() and path.suffix.lower() == ".json":
        return "coco"
    if path.is_file() and path.suffix.lower() in {".yaml", ".yml"}:
        return "yolo"
    if path.is_dir() and ((path / "Annotations").is_dir() or (path / "SegmentationClass").is_dir()):
        return "voc"
    raise DatasetError(
        f"{path}: not a dataset: expected a COCO .json, a YOLO data .yaml, or a Pascal VOC "
        "folder with Annotations/ or SegmentationClass/"
    )


def load_records(
    path: str | Path, images: str | Path | None = None, split: str | None = None
) -> Records:
    """Read the dataset named by ``path`` (see the module docstring) into :class:`Records`."""
    kind = detect_format(path)
    if kind == "coco":
        from cvkit.data.formats.coco import read_coco

        return read_coco(path, images)
    if kind == "yolo":
        from cvkit.data.formats.yolo import read_yolo

        return read_yolo(path, split)
    from cvkit.data.formats.voc import read_voc

    return read_voc(path, split)
