"""``cvkit predict``: run a trained detector on image files, draw the detections, write JSON.

The model call and the output are separate pieces. A *detector* is any callable that takes a
list of RGB images (``uint8 [H, W, 3]``) and returns one
:class:`~cvkit.runtime.results.Detections` per image in original image pixels;
:class:`CheckpointDetector` is the one for a ``.pt`` checkpoint (same pre-processing as
validation: the config's ``letterbox``/``resize`` and normalization),
:class:`OnnxPredictor` the one for an exported ``.onnx`` (the torch-free runtime).
:class:`PredictionWriter` (drawing with :func:`cvkit.data.visualize.draw_detections`) works on
predictions from any detector.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from cvkit.data.visualize import COLOURS, draw_detections
from cvkit.errors import DatasetError, ImageError
from cvkit.images import IMAGE_SUFFIXES, read_image
from cvkit.logs import get_logger
from cvkit.runtime.results import Classification, Detections, category_ids_of

DEFAULT_SCORE_THRESHOLD = 0.3

logger = get_logger("predict")


Detector = Callable[[Sequence[np.ndarray]], list[Detections]]


def list_images(sources: Iterable[str | Path]) -> list[Path]:
    """Image files named by ``sources``: files as given, folders by their image files (sorted).

    Raises:
        DatasetError: a source does not exist, or no image file was found.
    """
    paths: list[Path] = []
    for source in map(Path, sources):
        if source.is_dir():
            paths += sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif source.is_file():
            paths.append(source)
        else:
            raise DatasetError(f"{source}: no such image file or folder")
    if not paths:
        names = ", ".join(str(s) for s in sources)
        raise DatasetError(f"{names}: no images found (looked for {', '.join(IMAGE_SUFFIXES)})")
    return paths


class CheckpointModel:
    """A trained cvkit model (``.pt`` checkpoint) ready for inference, for any task.

    Loading, the validation pre-processing and batching are shared; a subclass turns one
    batch's model outputs into its results (:meth:`_predict_batch`).

    Args:
        weights: checkpoint written by ``cvkit train``; the model is rebuilt from it alone.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        batch_size: images per forward pass.
    """

    def __init__(self, weights: str | Path, device: str = "auto", batch_size: int = 8) -> None:
        import torch

        from cvkit.config import Config
        from cvkit.engine.checkpoint import load_checkpoint
        from cvkit.engine.environment import select_device
        from cvkit.models.loading import load_model

        self._torch = torch
        self.device = select_device(device)
        checkpoint = load_checkpoint(weights, self.device)
        self.model = load_model(checkpoint, self.device, weights)
        config = Config.model_validate(checkpoint["config"])
        self.config = config
        self.classes: list[str] = list(checkpoint["classes"])
        self.category_ids: list[int] | None = checkpoint.get("category_ids")
        self.batch_size = batch_size

    def __call__(self, images: Sequence[np.ndarray]) -> list[Any]:
        """The results of each RGB image ``uint8 [H, W, 3]``, in its original pixels."""
        results: list[Any] = []
        for start in range(0, len(images), self.batch_size):
            results += self._predict_batch(images[start : start + self.batch_size])
        return results

    def _forward(self, images: Sequence[np.ndarray]) -> tuple[Any, list[Any]]:
        """The model's outputs for ``images`` (eval pre-processing, no grad) and each image's
        fitted sample (its ``geometry``)."""
        from cvkit.data.loader import Collate
        from cvkit.data.transforms import build_transform

        torch = self._torch
        data = self.config.data
        transform = build_transform(data, self.config.task, train=False)
        no_boxes, no_labels = np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
        fitted = [transform(image, no_boxes, no_labels) for image in images]
        batch, _ = Collate(data.mean, data.std)(
            [
                (torch.from_numpy(np.ascontiguousarray(f.image.transpose(2, 0, 1))), {})
                for f in fitted
            ]
        )
        with torch.no_grad():
            return self.model(batch.to(self.device)), fitted

    def _predict_batch(self, images: Sequence[np.ndarray]) -> list[Any]:
        raise NotImplementedError


class CheckpointDetector(CheckpointModel):
    """A trained cvkit detector (``.pt`` checkpoint) as a :data:`Detector`.

    Images go through the validation path: the config's eval pre-processing
    (``data.resize`` to ``data.image_size``, ``data.mean``/``data.std``), the model in eval
    mode, and boxes (and the masks of a Mask R-CNN, foreground above 0.5) mapped back to
    original pixels as validation maps them.

    Args:
        weights: checkpoint written by ``cvkit train``; the model is rebuilt from it alone.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        batch_size: images per forward pass.
    """

    def _predict_batch(self, images: Sequence[np.ndarray]) -> list[Detections]:
        outputs, fitted = self._forward(images)
        predictions = []
        for output, sample, image in zip(outputs, fitted, images, strict=True):
            mapped = output.to_original(sample.geometry)
            labels = mapped.labels.numpy().astype(np.int64)
            masks = None if mapped.masks is None else (mapped.masks > 0.5).numpy()
            predictions.append(
                Detections(
                    mapped.boxes.numpy(),
                    mapped.scores.numpy(),
                    labels,
                    [self.classes[label] for label in labels],
                    masks,
                    orig_size=image.shape[:2],
                    category_ids=category_ids_of(labels, self.category_ids),
                )
            )
        return predictions


class OnnxPredictor:
    """An exported ``.onnx`` model run by the torch-free :mod:`cvkit.runtime` predictor its
    metadata's task names; pre-processing and thresholds come from the file's metadata.

    Args:
        path: file written by ``cvkit export``.
        providers: onnxruntime providers (``auto``, ``cpu``, ``cuda``, ``tensorrt``).
    """

    def __init__(self, path: str | Path, providers: str = "auto") -> None:
        from cvkit.runtime import load_predictor

        self.runtime = load_predictor(path, providers)
        self.classes: list[str] = list(self.runtime.classes)
        self.batch_size = self.runtime.batch_size

    def __call__(self, images: Sequence[np.ndarray]) -> list[Any]:
        """The runtime result of each RGB image ``uint8 [H, W, 3]``, in its original pixels."""
        return self.runtime.predict(list(images))


class CheckpointClassifier(CheckpointModel):
    """A trained cvkit classifier (``.pt`` checkpoint): one
    :class:`~cvkit.runtime.results.Classification` per RGB image ``uint8 [H, W, 3]``.

    Pre-processing is the exported runtime's (:func:`cvkit.runtime.preprocess.preprocess` with
    the config's ``data.image_size``, ``data.resize`` and ``data.mean``/``data.std``), so a
    checkpoint and its ``.onnx`` see the same input.

    Args:
        weights: checkpoint written by ``cvkit train``.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        batch_size: images per forward pass.
    """

    def _predict_batch(self, images: Sequence[np.ndarray]) -> list[Classification]:
        """Softmax probabilities ``float32 [C]`` of each image, as a Classification."""
        from cvkit.runtime.postprocess import classification
        from cvkit.runtime.preprocess import preprocess

        data = self.config.data
        batch, _ = preprocess(
            images, (data.image_size, data.image_size), data.resize, data.mean, data.std
        )
        with self._torch.no_grad():
            logits = self.model(self._torch.from_numpy(batch).to(self.device))
        logits = logits.float().cpu().numpy()
        return [classification(row, tuple(self.classes)) for row in logits]


def prediction_record(path: Path, prediction: Detections, classes: Sequence[str]) -> dict[str, Any]:
    """One image's entry of ``predictions.json``; each detection of a model with masks also
    has ``mask``: compressed COCO RLE (``counts`` str, ``size`` ``[H, W]``) in original pixels,
    and of a model trained on a COCO set ``category_id``: the dataset's id of its class."""
    detections = [
        {
            "box": [round(float(v), 2) for v in box],
            "score": round(float(score), 5),
            "label": int(label),
            "class": classes[label],
        }
        for box, score, label in zip(
            prediction.boxes, prediction.scores, prediction.labels, strict=True
        )
    ]
    if prediction.category_ids is not None:
        for detection, category_id in zip(detections, prediction.category_ids, strict=True):
            detection["category_id"] = int(category_id)
    if prediction.masks is not None:
        from cvkit.eval.coco import mask_rles

        for detection, rle in zip(detections, mask_rles(prediction.masks), strict=True):
            detection["mask"] = rle
    return {"image": str(path), "detections": detections}


class OutputFolder:
    """An output folder of per-image PNGs and one ``predictions.json`` of ``records``.

    Subclasses write each image's files under :meth:`_unique_stem` and append its record.

    Args:
        out: output folder (created).
        classes: class names, indexed by label.
    """

    def __init__(self, out: str | Path, classes: Sequence[str]) -> None:
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.classes = list(classes)
        self.records: list[dict[str, Any]] = []
        self.skipped = 0
        self._names: set[str] = set()

    def _unique_stem(self, path: Path) -> str:
        """``path``'s stem, with ``_`` appended until no earlier image has it (the same stem in
        two folders keeps both outputs)."""
        name = path.stem
        while name in self._names:
            name += "_"
        self._names.add(name)
        return name

    def skip(self, path: Path, error: ImageError) -> None:
        """Record an image that could not be read: ``{"image": path, "error": reason}`` in
        ``predictions.json``, and a warning in the log."""
        self.skipped += 1
        self.records.append({"image": str(path), "error": str(error)})
        logger.warning("skipped an unreadable image: %s", error)

    def summary(self, verb: str) -> str:
        """``"<n> images <verb>"``, with the count of unreadable ones, for a command's output."""
        unreadable = f" ({self.skipped} unreadable, named in the JSON)" if self.skipped else ""
        return f"{len(self.records) - self.skipped} images {verb}{unreadable}"

    def finish(self) -> Path:
        """Write ``predictions.json`` (atomically) and return its path."""
        json_path = self.out / "predictions.json"
        tmp = json_path.with_name(json_path.name + ".tmp")
        tmp.write_text(json.dumps(self.records, indent=1), encoding="utf-8")
        tmp.replace(json_path)
        return json_path


class PredictionWriter(OutputFolder):
    """Writes ``<out>/<image stem>.png`` (detections drawn) per image and ``predictions.json``.

    The JSON is a list with one entry per image: ``{"image": path, "detections": [{"box":
    [x1, y1, x2, y2], "score", "label", "class"}, ...]}``, boxes in original image pixels; a
    model trained on a COCO set adds each detection's dataset ``category_id`` (absent for
    datasets without ids: YOLO, VOC, synthetic); with masks, each detection adds ``mask`` (RLE,
    :func:`prediction_record`) and the drawing blends each instance's mask in its own
    colour. An unreadable image gets ``{"image": path,
    "error": reason}`` (:meth:`OutputFolder.skip`) and no drawing.

    Args:
        out: output folder (created).
        classes: class names, indexed by label.
    """

    def add(self, path: Path, image: np.ndarray, prediction: Detections) -> Path:
        """Draw one image's detections to a PNG and record them; returns the PNG's path."""
        drawing = self.out / f"{self._unique_stem(path)}.png"
        if prediction.masks is not None:
            image = image.copy()
            for index, mask in enumerate(np.asarray(prediction.masks, bool)):
                colour = COLOURS[index % len(COLOURS)].astype(np.float32)
                image[mask] = (0.55 * image[mask] + 0.45 * colour).astype(np.uint8)
        drawn = draw_detections(
            image, prediction.boxes, prediction.labels, self.classes, scores=prediction.scores
        )
        cv2.imwrite(str(drawing), cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))
        self.records.append(prediction_record(path, prediction, self.classes))
        return drawing


class ResultWriter(OutputFolder):
    """Writes ``<out>/<image stem>.png`` (:meth:`Result.draw`) per image and one
    ``predictions.json``: ``[{"image": path, **result.to_dict()}, ...]``."""

    def add(self, path: Path, image: np.ndarray, result: Any) -> Path:
        """Save one image's drawing and record its result; returns the PNG's path."""
        drawing = result.save(self.out / f"{self._unique_stem(path)}.png", image)
        self.records.append({"image": str(path), **result.to_dict()})
        return drawing


def predict_images(
    paths: Sequence[Path],
    model: Callable[[Sequence[np.ndarray]], list[Any]],
    batch_size: int,
    on_error: Callable[[Path, ImageError], None] | None = None,
) -> Iterator[tuple[Path, np.ndarray, Any]]:
    """Each of ``paths`` with its RGB image and ``model``'s result for it, reading and
    predicting ``batch_size`` images at a time.

    A file that cannot be read (missing, empty, cut off, not an image) raises its
    :class:`~cvkit.errors.ImageError`, or, with ``on_error``, is handed to ``on_error(path,
    error)`` and left out while the others are predicted."""
    for start in range(0, len(paths), batch_size):
        chunk, images = [], []
        for path in paths[start : start + batch_size]:
            try:
                images.append(read_image(path))
            except ImageError as exc:
                if on_error is None:
                    raise
                on_error(path, exc)
                continue
            chunk.append(path)
        if images:
            yield from zip(chunk, images, model(images), strict=True)


def open_model(
    weights: str | Path,
    checkpoint_type: Callable[..., Any],
    onnx_type: Callable[..., Any] = OnnxPredictor,
) -> Any:
    """``onnx_type(weights)`` for an ``.onnx`` file, else ``checkpoint_type(weights)``."""
    if Path(weights).suffix.lower() == ".onnx":
        return onnx_type(weights)
    return checkpoint_type(weights)


def write_results(paths: Sequence[Path], model: Any, writer: Any) -> Path:
    """Predict ``paths`` with ``model`` (a callable with ``batch_size``), ``writer.add`` each
    image's result, and return the written ``predictions.json``."""
    for path, image, result in predict_images(paths, model, model.batch_size, writer.skip):
        writer.add(path, image, result)
    return writer.finish()


def run_predict(args: Any) -> int:
    """``cvkit predict``: run ``args.weights`` on ``args.source`` as its task's
    :meth:`~cvkit.engine.tasks.Task.predict_folder` does."""
    from cvkit.engine.environment import configure_threads

    configure_threads()
    paths = list_images(args.source)
    from cvkit.engine.checkpoint import weights_task
    from cvkit.engine.tasks import get_task

    task = get_task(weights_task(args.weights))
    task.predict_folder(paths, args.weights, args.out, args.score_threshold)
    return 0
