"""Typed per-image results of every predictor (checkpoint or ONNX), torch-free.

Every result derives from :class:`Result`: it knows its class ``names``, turns into JSON-ready
values (:meth:`Result.to_dict`), draws itself onto its image (:meth:`Result.draw`, RGB
``uint8 [H, W, 3]``) and writes that drawing (:meth:`Result.save`), like Ultralytics'
``Results``. :class:`Detections` is the numpy twin of :class:`cvkit.structures.Instances`
(boxes xyxy in *original* image pixels); :class:`Classification` holds class probabilities and
:class:`Segmentation` a per-pixel class mask. A task whose output is an image (style transfer,
super-resolution) adds a subclass whose ``draw`` returns that image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from cvkit.data.visualize import COLOURS, draw_detections

OVERLAY_ALPHA = 0.5


class Result:
    """The shared base: class ``names`` (index ``i`` is class ``i``), JSON, drawing, saving."""

    names: Sequence[str]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values (lists, numbers, strings) describing this result."""
        raise NotImplementedError

    def draw(self, image: np.ndarray) -> np.ndarray:
        """This result drawn onto ``image`` (RGB ``uint8 [H, W, 3]``, the image it came from);
        returns a new RGB ``uint8`` array of the same size."""
        raise NotImplementedError

    def save(self, path: str | Path, image: np.ndarray) -> Path:
        """Write :meth:`draw` of ``image`` to ``path`` (any OpenCV image format)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(path), cv2.cvtColor(self.draw(image), cv2.COLOR_RGB2BGR)):
            raise OSError(f"{path}: could not write the image")
        return path


@dataclass
class Detections(Result):
    """Detections of one image, in its original pixels.

    Attributes:
        boxes: ``float32 [N, 4]`` (x1, y1, x2, y2) in original image pixels.
        scores: ``float32 [N]``, highest first.
        labels: ``int64 [N]`` class indices in ``0..C-1``.
        names: the class name of each detection (``names[i]`` is ``labels[i]``'s).
        masks: optional ``bool [N, H, W]`` instance masks at the original size.
        orig_size: ``(h, w)`` of the original image (None: unknown).
        category_ids: optional ``int64 [N]``: the dataset's COCO ``category_id`` of each
            detection (:func:`category_ids_of`), when the model was trained on a COCO set;
            None: the model knows no category ids.
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    names: Sequence[str]
    masks: np.ndarray | None = None
    orig_size: tuple[int, int] | None = None
    category_ids: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.scores)

    def above(self, score_threshold: float) -> Detections:
        """Only the detections scoring at least ``score_threshold``."""
        keep = self.scores >= score_threshold
        masks = None if self.masks is None else self.masks[keep]
        category_ids = None if self.category_ids is None else self.category_ids[keep]
        return Detections(
            self.boxes[keep],
            self.scores[keep],
            self.labels[keep],
            [name for name, kept in zip(self.names, keep, strict=True) if kept],
            masks,
            self.orig_size,
            category_ids,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready lists: ``boxes``, ``scores``, ``labels`` and ``names`` (of each
        detection), and ``category_ids`` only when they are known."""
        body: dict[str, Any] = {
            "boxes": self.boxes.tolist(),
            "scores": self.scores.tolist(),
            "labels": self.labels.tolist(),
            "names": list(self.names),
        }
        if self.category_ids is not None:
            body["category_ids"] = self.category_ids.tolist()
        return body

    def draw(self, image: np.ndarray) -> np.ndarray:
        """Boxes, class names and scores (and masks, if any) drawn onto ``image``."""
        classes = [""] * (int(self.labels.max(initial=-1)) + 1)
        for label, name in zip(self.labels, self.names, strict=True):
            classes[label] = name
        return draw_detections(
            image, self.boxes, self.labels, classes, masks=self.masks, scores=self.scores
        )


@dataclass
class Classification(Result):
    """Class probabilities of one image.

    Attributes:
        probabilities: ``float32 [C]`` softmax of the logits.
        names: class names.
    """

    probabilities: np.ndarray
    names: Sequence[str] = field(default_factory=list)

    @property
    def label(self) -> int:
        """The most probable class index."""
        return int(self.probabilities.argmax())

    @property
    def score(self) -> float:
        """The probability of :attr:`label`."""
        return float(self.probabilities[self.label])

    @property
    def name(self) -> str:
        """The name of :attr:`label`."""
        return self.names[self.label]

    def to_dict(self) -> dict[str, Any]:
        """``{"label", "class", "score", "probabilities": {name: p}}``."""
        return {
            "label": self.label,
            "class": self.name,
            "score": round(self.score, 6),
            "probabilities": {
                name: round(float(p), 6)
                for name, p in zip(self.names, self.probabilities, strict=True)
            },
        }

    def draw(self, image: np.ndarray) -> np.ndarray:
        """``image`` with the top class and its probability written in the top-left corner."""
        drawn = np.ascontiguousarray(image.copy())
        text = f"{self.name} {self.score:.2f}"
        colour = tuple(int(c) for c in COLOURS[self.label % len(COLOURS)])
        cv2.putText(drawn, text, (2, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour, 1, cv2.LINE_AA)
        return drawn


@dataclass
class Segmentation(Result):
    """Per-pixel classes of one image: ``mask int64 [h, w]`` at its original size.

    Attributes:
        mask: class index per pixel (``names[0]`` is the background).
        names: class names.
    """

    mask: np.ndarray
    names: Sequence[str] = field(default_factory=list)

    def fractions(self) -> dict[str, float]:
        """The fraction of pixels of each class present, by class name."""
        labels, counts = np.unique(self.mask, return_counts=True)
        return {
            self.names[label]: round(count / self.mask.size, 5)
            for label, count in zip(labels.tolist(), counts.tolist(), strict=True)
        }

    def to_dict(self) -> dict[str, Any]:
        """``{"classes": {name: pixel fraction}}`` for the classes present."""
        return {"classes": self.fractions()}

    def draw(self, image: np.ndarray) -> np.ndarray:
        """:func:`overlay_mask` of :attr:`mask` on ``image``."""
        return overlay_mask(image, self.mask)


def category_ids_of(labels: np.ndarray, category_ids: Sequence[int] | None) -> np.ndarray | None:
    """The COCO ``category_id`` of each label: ``int64 [N]`` of ``category_ids[labels[i]]``
    (``labels`` ``int [N]`` in ``0..C-1``, ``category_ids`` one id per class); None when
    ``category_ids`` is None."""
    if category_ids is None:
        return None
    return np.asarray(category_ids, np.int64)[np.asarray(labels, np.int64)]


def class_colour(label: int) -> np.ndarray:
    """RGB ``uint8 [3]`` of class ``label``; class 0 (background) is black and never drawn."""
    if label == 0:
        return np.zeros(3, np.uint8)
    return COLOURS[(label - 1) % len(COLOURS)]


def overlay_mask(image: np.ndarray, mask: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """``image`` (``uint8 [H, W, 3]`` RGB) with every pixel of class ``c > 0`` blended with
    :func:`class_colour` ``(c)`` at ``alpha``; background pixels stay as they are."""
    palette = np.stack([class_colour(label) for label in range(int(mask.max()) + 1)])
    coloured = palette[mask].astype(np.float32)
    blended = (1 - alpha) * image.astype(np.float32) + alpha * coloured
    return np.where((mask > 0)[..., None], blended, image).round().astype(np.uint8)
