"""Dataset validation: every problem found, counted and named with its file.

:func:`check_dataset` (``cvkit data check PATH``) reads a dataset in any format and reports:
missing or unreadable images, image sizes that differ from the annotations, boxes that are NaN,
have zero or negative area, or leave the image, labels outside the class list, COCO category
ids that are unknown, not contiguous, or 0-based where the categories are 1-based (the
0- vs 1-based trap), COCO polygons of fewer than 3 points or of odd length, duplicate image
ids, unreadable semantic masks, and images without objects. Problems are ``error`` (the sample
cannot be trained on) or ``warning`` (usable as is: empty images, non-contiguous ids, boxes
that stick out but keep an area inside, degenerate polygons, whose objects keep their boxes).

:func:`validate_for_training` is the hook ``build_dataset`` runs before training: it refuses a
dataset with errors, showing the report, or, with ``data.skip_invalid``, drops the bad samples
and logs how many.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from cvkit.data.formats.coco import load_coco_json, read_coco
from cvkit.data.formats.detect import detect_format, load_records
from cvkit.data.records import (
    SIDEWAYS_ORIENTATIONS,
    ClassMap,
    Records,
    Sample,
    read_exif_orientation,
    read_image_size,
    verify_image_data,
)
from cvkit.errors import DatasetError
from cvkit.images import read_image
from cvkit.logs import get_logger

ERROR, WARNING = "error", "warning"
# Boxes may stick out of the image by this many pixels before it is reported.
BOUNDS_TOLERANCE = 1.0
_LISTED = 10

logger = get_logger("data")


@dataclass(frozen=True)
class Problem:
    """One finding: its level, kind (a short fixed phrase), file and detail."""

    level: str
    kind: str
    file: str
    detail: str = ""
    image_id: int | None = None


@dataclass
class CheckReport:
    """All problems of one dataset split, with the number of images checked."""

    source: str
    num_images: int = 0
    num_objects: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.level == ERROR]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.level == WARNING]

    def bad_image_ids(self) -> set[int]:
        """Ids of images with at least one error."""
        return {p.image_id for p in self.errors if p.image_id is not None}

    def kinds(self) -> dict[str, int]:
        """Count of problems per kind."""
        counts: dict[str, int] = defaultdict(int)
        for problem in self.problems:
            counts[problem.kind] += 1
        return dict(counts)

    def format(self) -> str:
        """A human-readable report: a summary line, then each kind with its files."""
        lines = [
            f"{self.source}: {self.num_images} images, {self.num_objects} objects, "
            f"{len(self.errors)} errors, {len(self.warnings)} warnings"
        ]
        grouped: dict[tuple[str, str], list[Problem]] = defaultdict(list)
        for problem in self.problems:
            grouped[(problem.level, problem.kind)].append(problem)
        for (level, kind), problems in sorted(grouped.items()):
            lines.append(f"  {level}: {kind} ({len(problems)})")
            for problem in problems[:_LISTED]:
                detail = f": {problem.detail}" if problem.detail else ""
                lines.append(f"    {problem.file}{detail}")
            if len(problems) > _LISTED:
                lines.append(f"    ... and {len(problems) - _LISTED} more")
        return "\n".join(lines)


def coco_json_problems(json_path: Path, data: dict[str, Any] | None = None) -> list[Problem]:
    """Problems visible only in a COCO file's raw JSON (before ids become labels).

    ``data`` is the file as :func:`load_coco_json` already parsed it, if it was.
    """
    data = load_coco_json(json_path) if data is None else data
    name = str(json_path)
    problems = []
    ids = sorted(int(c["id"]) for c in data.get("categories", []))
    names = [str(c.get("name", "")) for c in data.get("categories", [])]
    if len(set(ids)) != len(ids):
        problems.append(Problem(ERROR, "duplicate category ids", name, f"ids {ids}"))
    if len(set(names)) != len(names):
        problems.append(Problem(ERROR, "duplicate category names", name, f"names {names}"))
    if ids and ids != list(range(ids[0], ids[0] + len(ids))):
        problems.append(
            Problem(
                WARNING,
                "category ids not contiguous",
                name,
                f"ids {ids} are mapped to labels 0..{len(ids) - 1} in id order",
            )
        )
    images = {int(image["id"]): image.get("file_name", "?") for image in data.get("images", [])}
    known = set(ids)
    for ann in data.get("annotations", []):
        image_id = int(ann.get("image_id", -1))
        where = f"{images.get(image_id, name)} (annotation {ann.get('id')})"
        if image_id not in images:
            problems.append(
                Problem(ERROR, "annotation of an unknown image", name, f"image_id {image_id}")
            )
        category = ann.get("category_id")
        if category not in known:
            hint = ""
            if category == 0 and ids and ids[0] == 1:
                hint = " (0-based ids in annotations, 1-based categories?)"
            problems.append(
                Problem(
                    ERROR,
                    "unknown category id",
                    where,
                    f"category_id {category} not in categories {ids}{hint}",
                    image_id,
                )
            )
        problems += _polygon_problems(ann.get("segmentation"), where, image_id)
    return problems


def _polygon_problems(segmentation: Any, where: str, image_id: int) -> list[Problem]:
    """Warnings for the polygons of one COCO annotation that do not describe an area.

    A polygon of fewer than 6 numbers (3 points) is left out when masks are decoded
    (:func:`cvkit.data.records.decode_segmentation`); when every polygon of the object is such,
    its mask is empty: Mask R-CNN gets an empty mask target and COCO evaluation an area of 0.
    A polygon of odd length has an x without its y, which pycocotools drops. Both are warnings:
    the object's box stays usable.
    """
    if not isinstance(segmentation, list) or not all(isinstance(p, list) for p in segmentation):
        return []  # RLE, or no polygons
    lengths = [len(polygon) for polygon in segmentation]
    short = [index for index, length in enumerate(lengths) if length < 6]
    empty = len(short) == len(lengths)
    problems = []
    for index in short:
        effect = (
            "the object's mask is empty (an empty Mask R-CNN target, area 0 in COCO evaluation)"
            if empty
            else "it is left out of the object's mask"
        )
        problems.append(
            Problem(
                WARNING,
                "polygon of fewer than 3 points",
                where,
                f"polygon {index} has {lengths[index]} numbers (at least 6 needed): {effect}; "
                "its box is still used",
                image_id,
            )
        )
    for index, length in enumerate(lengths):
        if length >= 6 and length % 2:
            problems.append(
                Problem(
                    WARNING,
                    "polygon of odd length",
                    where,
                    f"polygon {index} has {length} numbers: its last x has no y and is dropped",
                    image_id,
                )
            )
    return problems


def _box_problems(sample: Sample, num_classes: int) -> list[Problem]:
    problems = []
    file, image_id = sample.file_name, sample.image_id
    for index, (box, label) in enumerate(zip(sample.boxes, sample.labels, strict=True)):
        if label < 0 or label >= num_classes:
            problems.append(
                Problem(
                    ERROR,
                    "label outside the class list",
                    file,
                    f"object {index}: label {label}, classes 0..{num_classes - 1}",
                    image_id,
                )
            )
        if not np.isfinite(box).all():
            problems.append(
                Problem(
                    ERROR,
                    "box is NaN or infinite",
                    file,
                    f"object {index}: {box.tolist()}",
                    image_id,
                )
            )
            continue
        x1, y1, x2, y2 = (float(v) for v in box)
        if x2 <= x1 or y2 <= y1:
            problems.append(
                Problem(
                    ERROR,
                    "box has zero or negative area",
                    file,
                    f"object {index}: (x1, y1, x2, y2) = ({x1:g}, {y1:g}, {x2:g}, {y2:g})",
                    image_id,
                )
            )
            continue
        tol = BOUNDS_TOLERANCE
        if x1 < -tol or y1 < -tol or x2 > sample.width + tol or y2 > sample.height + tol:
            inside = min(x2, sample.width) > max(x1, 0) and min(y2, sample.height) > max(y1, 0)
            problems.append(
                Problem(
                    WARNING if inside else ERROR,
                    "box outside the image" if not inside else "box out of bounds (clipped)",
                    file,
                    f"object {index}: ({x1:g}, {y1:g}, {x2:g}, {y2:g}) in a "
                    f"{sample.width}x{sample.height} image",
                    image_id,
                )
            )
    return problems


def _sideways_hint(sample: Sample, height: int, width: int) -> str:
    """Why a file read as ``width x height`` may be annotated at the swapped size: its EXIF
    orientation turns it sideways, which tools that ignore the tag do not see."""
    if sample.image is not None or (width, height) != (sample.height, sample.width):
        return ""
    try:
        orientation = read_exif_orientation(sample.path)
    except DatasetError:
        return ""
    if orientation not in SIDEWAYS_ORIENTATIONS:
        return ""
    return (
        f" (stored {height}x{width} with EXIF orientation {orientation}, which cvkit applies "
        "as photo viewers do: the size and boxes must be those of the upright image; or save "
        "the pixels upright without the tag)"
    )


def _image_problems(sample: Sample, decode: bool) -> list[Problem]:
    """Missing/unreadable image or semantic mask, and size mismatch with the annotation."""
    if sample.image is not None:
        height, width = sample.image.shape[:2]
    else:
        file = str(sample.path)
        if sample.path is None or not Path(sample.path).is_file():
            return [Problem(ERROR, "missing image file", file, "", sample.image_id)]
        try:
            if decode:
                height, width = read_image(sample.path).shape[:2]
                verify_image_data(sample.path)
            else:
                height, width = read_image_size(sample.path)
        except DatasetError as exc:
            return [Problem(ERROR, "unreadable image", file, str(exc), sample.image_id)]
    problems = []
    if (height, width) != (sample.height, sample.width):
        problems.append(
            Problem(
                ERROR,
                "image size differs from the annotation",
                str(sample.path or sample.file_name),
                f"file {width}x{height}, annotated {sample.width}x{sample.height}"
                + _sideways_hint(sample, height, width),
                sample.image_id,
            )
        )
    if decode and sample.semantic_path is not None:
        try:
            semantic = sample.load_semantic()
        except DatasetError as exc:
            kind = (
                "missing semantic mask"
                if not sample.semantic_path.exists()
                else "unreadable semantic mask"
            )
            return [
                *problems,
                Problem(ERROR, kind, str(sample.semantic_path), str(exc), sample.image_id),
            ]
        if semantic.shape != (height, width):
            problems.append(
                Problem(
                    ERROR,
                    "semantic mask size differs from the image",
                    str(sample.semantic_path),
                    f"mask {semantic.shape[1]}x{semantic.shape[0]}, image {width}x{height}",
                    sample.image_id,
                )
            )
    return problems


def check_records(records: Records, decode: bool = True) -> CheckReport:
    """Check every sample of ``records``.

    Args:
        records: the split to check.
        decode: decode every image (finds corrupt files); otherwise only read image headers.
    """
    report = CheckReport(records.source, len(records), sum(len(s) for s in records.samples))
    seen: dict[int, str] = {}
    for sample in records.samples:
        if sample.image_id in seen:
            report.problems.append(
                Problem(
                    ERROR,
                    "duplicate image id",
                    sample.file_name,
                    f"id {sample.image_id} also used by {seen[sample.image_id]}",
                    sample.image_id,
                )
            )
        seen.setdefault(sample.image_id, sample.file_name)
        report.problems += _image_problems(sample, decode)
        report.problems += _box_problems(sample, len(records.classes))
        if len(sample) == 0:
            report.problems.append(Problem(WARNING, "image without objects", sample.file_name))
    report.problems += _no_image_found(records, report)
    return report


def _no_image_found(records: Records, report: CheckReport) -> list[Problem]:
    """One problem naming the folder looked in when not one image of the split exists: the
    image folder is wrong, not the files (a COCO file's ``images`` default is a guess)."""
    missing = [p for p in report.problems if p.kind == "missing image file"]
    folders = {Path(s.path).parent for s in records.samples if s.path is not None}
    if not records.samples or len(missing) < len(records.samples) or len(folders) != 1:
        return []
    return [
        Problem(
            ERROR,
            "no image found",
            str(folders.pop()),
            f"none of the {len(records.samples)} images is in this folder; for a COCO file set "
            "the split's image folder (data.train.images / data.val.images in a config, "
            "--images for cvkit data check)",
        )
    ]


def load_checked_records(
    path: str | Path,
    images: str | Path | None = None,
    split: str | None = None,
    reference: ClassMap | None = None,
) -> tuple[Records, list[Problem]]:
    """The dataset named by ``path`` (any format) and, for COCO, :func:`coco_json_problems`.

    A COCO file is parsed once for both and read with ``reference``'s numbering
    (:func:`~cvkit.data.formats.coco.read_coco`); the other formats have one class list for
    all splits and ignore it.
    """
    if detect_format(path) != "coco":
        return load_records(path, images, split), []
    data = load_coco_json(Path(path))
    records = read_coco(path, images, data=data, reference=reference)
    return records, coco_json_problems(Path(path), data)


def check_dataset(
    path: str | Path,
    images: str | Path | None = None,
    split: str | None = None,
    decode: bool = True,
) -> tuple[CheckReport, Records]:
    """Read the dataset named by ``path`` (any format) and check it; see the module docstring."""
    records, json_problems = load_checked_records(path, images, split)
    report = check_records(records, decode)
    if records.category_ids is not None:  # COCO: its unknown category ids are named instead
        report.problems = json_problems + [
            p for p in report.problems if p.kind != "label outside the class list"
        ]
    return report, records


def validate_for_training(
    records: Records, skip_invalid: bool, extra: list[Problem] | None = None
) -> Records:
    """The training-time check: refuse a dataset with errors, or drop its bad samples.

    Images are not decoded (only their headers are read), so this stays fast.

    Args:
        records: the split about to be trained on or validated.
        skip_invalid: ``data.skip_invalid``: drop samples with errors (logged with their
            count and files) instead of raising.
        extra: problems found beforehand (e.g. :func:`coco_json_problems`).

    Raises:
        DatasetError: the split has errors and ``skip_invalid`` is false; the message is the
            full report.
    """
    report = check_records(records, decode=False)
    report.problems = (extra or []) + report.problems
    if report.warnings:
        counts = ", ".join(f"{kind}: {n}" for kind, n in report.kinds().items())
        logger.info("%s: dataset check warnings (usable as is): %s", records.source, counts)
    if not report.errors:
        return records
    bad = report.bad_image_ids()
    unattached = [p for p in report.errors if p.image_id is None]
    if not skip_invalid or unattached:
        hint = "" if unattached else "\n(set data.skip_invalid=true to skip these samples)"
        raise DatasetError(f"the dataset has errors:\n{report.format()}{hint}")
    kept = [s for s in records.samples if s.image_id not in bad]
    logger.warning(
        "%s: skipping %d of %d samples that fail the dataset check (data.skip_invalid):\n%s",
        records.source,
        len(records) - len(kept),
        len(records),
        report.format(),
    )
    if not kept:
        raise DatasetError(f"{records.source}: every sample fails the dataset check")
    return replace(records, samples=kept)
