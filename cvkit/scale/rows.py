"""Result rows: one flat, typed table row per image, the same for every engine and format.

A row holds the image's ``path`` (as listed), ``error`` (None, or why the image gave no
result), its original ``height``/``width`` and the task's fields. The Arrow schema is fixed per
task, so Parquet parts written by different runs, actors or engines read back as one table, and
an error row has the same columns (nulls) as a result row.

- ``detect``: ``boxes`` (``[N][4]`` float32 x1, y1, x2, y2 in original pixels), ``scores``,
  ``labels``, ``names`` and ``masks`` (COCO RLE ``{"size": [h, w], "counts": str}`` per
  detection, null when the model has no masks).
- ``classify``: ``label``, ``name``, ``score`` and ``probabilities`` (``[C]``, index = class).
- ``segment``: per class present, ``labels``, ``names``, ``fractions`` of the pixels and
  ``masks`` (one RLE of that class's pixels).
- any other task (a predictor registered with :func:`cvkit.runtime.register_predictor`):
  ``result``, the JSON of its ``to_dict()``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
from pycocotools import mask as coco_mask

from cvkit.runtime.results import Classification, Detections, Segmentation

RLE = pa.struct([("size", pa.list_(pa.int32())), ("counts", pa.string())])
BASE_FIELDS = [
    ("path", pa.string()),
    ("error", pa.string()),
    ("height", pa.int32()),
    ("width", pa.int32()),
]


def encode_masks(masks: np.ndarray) -> list[dict[str, Any]]:
    """COCO run-length encodings of binary masks ``bool [N, H, W]``: one
    ``{"size": [H, W], "counts": str}`` per mask (column-major, as ``pycocotools``)."""
    if len(masks) == 0:
        return []
    encoded = coco_mask.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    return [
        {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}
        for rle in encoded
    ]


def decode_masks(rles: Sequence[dict[str, Any]]) -> np.ndarray:
    """The inverse of :func:`encode_masks`: ``bool [N, H, W]`` (``[0, 0, 0]`` for none)."""
    if not rles:
        return np.zeros((0, 0, 0), bool)
    coded = [{"size": list(r["size"]), "counts": r["counts"].encode("ascii")} for r in rles]
    return coco_mask.decode(coded).transpose(2, 0, 1).astype(bool)


def _detect(result: Detections) -> dict[str, Any]:
    return {
        "boxes": result.boxes.astype(np.float32).tolist(),
        "scores": result.scores.astype(np.float32).tolist(),
        "labels": result.labels.astype(np.int64).tolist(),
        "names": list(result.names),
        "masks": None if result.masks is None else encode_masks(result.masks),
    }


def _classify(result: Classification) -> dict[str, Any]:
    return {
        "label": result.label,
        "name": result.name,
        "score": result.score,
        "probabilities": result.probabilities.astype(np.float32).tolist(),
    }


def _segment(result: Segmentation) -> dict[str, Any]:
    labels, counts = np.unique(result.mask, return_counts=True)
    return {
        "labels": labels.astype(np.int64).tolist(),
        "names": [result.names[label] for label in labels],
        "fractions": (counts / result.mask.size).astype(np.float32).tolist(),
        "masks": encode_masks(result.mask[None] == labels[:, None, None]),
    }


def _generic(result: Any) -> dict[str, Any]:
    return {"result": json.dumps(result.to_dict())}


@dataclass(frozen=True)
class RowFormat:
    """How one task's results become rows: the Arrow ``schema`` and ``fields(result)``, the
    task's columns of one row."""

    schema: pa.Schema
    fields: Callable[[Any], dict[str, Any]]

    def table(self, rows: Sequence[dict[str, Any]]) -> pa.Table:
        """``rows`` (dicts with some of the schema's columns; missing ones are null) as a
        table of exactly :attr:`schema`."""
        columns = {name: [row.get(name) for row in rows] for name in self.schema.names}
        return pa.Table.from_pydict(columns, schema=self.schema)

    def result_row(self, path: str, result: Any, size: tuple[int, int]) -> dict[str, Any]:
        """The row of ``result`` predicted for the image at ``path`` of ``size`` ``(h, w)``."""
        return {"path": path, "height": size[0], "width": size[1], **self.fields(result)}


def error_row(path: str, reason: str) -> dict[str, Any]:
    """The row of an image that gave no result: its ``path`` and the ``error`` reason."""
    return {"path": path, "error": reason}


def _format(fields: Callable[[Any], dict[str, Any]], columns: list[tuple[str, Any]]) -> RowFormat:
    return RowFormat(pa.schema(BASE_FIELDS + columns), fields)


ROW_FORMATS: dict[str, RowFormat] = {
    "detect": _format(
        _detect,
        [
            ("boxes", pa.list_(pa.list_(pa.float32(), 4))),
            ("scores", pa.list_(pa.float32())),
            ("labels", pa.list_(pa.int64())),
            ("names", pa.list_(pa.string())),
            ("masks", pa.list_(RLE)),
        ],
    ),
    "classify": _format(
        _classify,
        [
            ("label", pa.int64()),
            ("name", pa.string()),
            ("score", pa.float32()),
            ("probabilities", pa.list_(pa.float32())),
        ],
    ),
    "segment": _format(
        _segment,
        [
            ("labels", pa.list_(pa.int64())),
            ("names", pa.list_(pa.string())),
            ("fractions", pa.list_(pa.float32())),
            ("masks", pa.list_(RLE)),
        ],
    ),
}
GENERIC_FORMAT = _format(_generic, [("result", pa.string())])


def row_format(task: str) -> RowFormat:
    """The :class:`RowFormat` of ``task`` (the JSON ``result`` column for unknown tasks)."""
    return ROW_FORMATS.get(task, GENERIC_FORMAT)
