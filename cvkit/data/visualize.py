"""Draw boxes, masks and class names onto images, for checks, notebooks and predictions."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from cvkit.data.records import Sample
from cvkit.errors import DatasetError

# Distinct, readable colours (RGB), cycled by class index.
COLOURS = np.array(
    [
        [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
        [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212],
    ],
    np.uint8,
)  # fmt: skip


def draw_detections(
    image: np.ndarray,
    boxes: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str],
    masks: np.ndarray | None = None,
    scores: np.ndarray | None = None,
) -> np.ndarray:
    """A copy of ``image`` with each object drawn in its class colour.

    Args:
        image: ``uint8 [H, W, 3]`` RGB.
        boxes: ``[N, 4]`` ``(x1, y1, x2, y2)`` pixels.
        labels: ``[N]`` class indices into ``classes`` (out-of-range ones are drawn as ``?``).
        masks: optional ``[N, H, W]`` instance masks, blended at 40 %.
        scores: optional ``[N]`` scores appended to the names.

    Returns:
        ``uint8 [H, W, 3]`` RGB.
    """
    canvas = image.copy()
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    labels = np.asarray(labels).reshape(-1)
    if masks is not None:
        for mask, label in zip(masks, labels, strict=True):
            colour = COLOURS[int(label) % len(COLOURS)]
            area = mask > 0
            canvas[area] = (0.6 * canvas[area] + 0.4 * colour).astype(np.uint8)
    thickness = max(1, round(max(image.shape[:2]) / 300))
    for index, (box, label) in enumerate(zip(boxes, labels, strict=True)):
        if not np.isfinite(box).all():
            continue
        colour = tuple(int(c) for c in COLOURS[int(label) % len(COLOURS)])
        x1, y1, x2, y2 = (round(float(v)) for v in box)
        cv2.rectangle(canvas, (x1, y1), (x2 - 1, y2 - 1), colour, thickness)
        name = classes[label] if 0 <= label < len(classes) else "?"
        if scores is not None:
            name = f"{name} {float(scores[index]):.2f}"
        cv2.putText(
            canvas, name, (x1 + 2, max(y1 - 3, 10)), cv2.FONT_HERSHEY_SIMPLEX, 0.35, colour, 1
        )
    return canvas


def draw_sample(sample: Sample, classes: Sequence[str], with_masks: bool = True) -> np.ndarray:
    """A :class:`Sample` with its annotations drawn (masks when it has segmentations)."""
    masks = sample.instance_masks() if with_masks and sample.segmentations else None
    return draw_detections(sample.load_image(), sample.boxes, sample.labels, classes, masks)


def save_png(image: np.ndarray, path: str | Path) -> Path:
    """Write an RGB ``uint8 [H, W, 3]`` image as PNG (folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise DatasetError(f"{path}: cannot write the PNG")
    return path
