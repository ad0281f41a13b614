"""``cvkit predict`` for segmenters: class masks at the original size, drawn as colour overlays.

A *segmenter* here is any callable that takes a list of RGB images (``uint8 [H, W, 3]``) and
returns one ``int64 [H, W]`` class mask per image at that image's own size.
:class:`CheckpointSegmenter` runs a ``.pt`` checkpoint through the validation pre-processing
(``letterbox``/``resize`` to ``data.image_size``, normalization); :class:`OnnxSegmenter` runs an
exported ``.onnx`` through the torch-free runtime. Both map logits back the same way: crop the
letterbox padding, resize the logits bilinearly to the original size, take the arg-max.

:class:`MaskWriter` writes, per image, ``<stem>.png`` (the image with every non-background class
blended in its colour), ``<stem>_mask.png`` (class indices, 8-bit) and one ``predictions.json``
with the pixel fraction of each class.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np

from cvkit.engine.predict import CheckpointModel, OutputFolder, open_model, write_results
from cvkit.runtime.results import overlay_mask

Segmenter = Callable[[Sequence[np.ndarray]], list[np.ndarray]]


class CheckpointSegmenter(CheckpointModel):
    """A trained cvkit segmenter (``.pt`` checkpoint) as a :data:`Segmenter`.

    Loading and batching are :class:`~cvkit.engine.predict.CheckpointModel`'s; calling it
    returns one class mask ``int64 [H, W]`` per RGB image ``uint8 [H, W, 3]``, at its size.

    Args:
        weights: checkpoint written by ``cvkit train``; the model is rebuilt from it alone.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        batch_size: images per forward pass.
    """

    def _predict_batch(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        torch = self._torch
        logits, fitted = self._forward(images)
        masks = []
        for scores, image, sample in zip(logits.float(), images, fitted, strict=True):
            height, width = image.shape[:2]
            sx, sy = sample.geometry.scale
            valid = scores[:, : round(height * sy), : round(width * sx)]
            resized = torch.nn.functional.interpolate(
                valid[None], size=(height, width), mode="bilinear", align_corners=False
            )
            masks.append(resized[0].argmax(0).cpu().numpy().astype(np.int64))
        return masks


class OnnxSegmenter:
    """An exported ``.onnx`` segmenter, run by the torch-free :mod:`cvkit.runtime`.

    Args:
        path: file written by ``cvkit export``.
        providers: onnxruntime providers (``auto``, ``cpu``, ``cuda``, ``tensorrt``).
    """

    def __init__(self, path: str | Path, providers: str = "auto") -> None:
        from cvkit.runtime import Segmenter as RuntimeSegmenter

        self.runtime = RuntimeSegmenter(path, providers)
        self.classes: list[str] = list(self.runtime.classes)
        self.batch_size = self.runtime.batch_size

    def __call__(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Class masks ``int64 [H, W]`` of each RGB image ``uint8 [H, W, 3]``, at its size."""
        return [found.mask for found in self.runtime.predict(list(images))]


class MaskWriter(OutputFolder):
    """Writes the overlay, the raw mask and ``predictions.json`` of every predicted image.

    The JSON is a list with one entry per image: ``{"image": path, "overlay": png, "mask": png,
    "classes": {name: pixel fraction}}`` for the classes present.

    Args:
        out: output folder (created).
        classes: class names, indexed by mask value (``classes[0]`` is the background).
    """

    def add(self, path: Path, image: np.ndarray, mask: np.ndarray) -> Path:
        """Write one image's overlay and mask PNGs and record it; returns the overlay's path."""
        name = self._unique_stem(path)
        overlay = self.out / f"{name}.png"
        raw = self.out / f"{name}_mask.png"
        cv2.imwrite(str(overlay), cv2.cvtColor(overlay_mask(image, mask), cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(raw), mask.astype(np.uint8))
        labels, counts = np.unique(mask, return_counts=True)
        fractions = {
            self.classes[label]: round(count / mask.size, 5)
            for label, count in zip(labels.tolist(), counts.tolist(), strict=True)
        }
        self.records.append(
            {"image": str(path), "overlay": str(overlay), "mask": str(raw), "classes": fractions}
        )
        return overlay


def predict_segments(paths: Sequence[Path], weights: str | Path, out: str | Path) -> Path:
    """Segment ``paths`` with ``weights`` (``.pt`` or ``.onnx``) and write them to ``out``.

    Returns the ``predictions.json`` path.
    """
    segmenter = open_model(weights, CheckpointSegmenter, OnnxSegmenter)
    writer = MaskWriter(out, segmenter.classes)
    json_path = write_results(paths, segmenter, writer)
    print(f"{writer.summary('segmented')}; overlays, masks and JSON in {json_path.parent}")
    return json_path
