"""The Python API beside the CLI: ``cvkit.load(path)`` for a ``.pt`` or an ``.onnx`` alike."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


class CheckpointPredictor:
    """A ``.pt`` checkpoint behind the runtime predictors' interface: ``predict(images)``.

    Args:
        weights: checkpoint written by ``cvkit train`` for a task with a checkpoint
            predictor (:meth:`cvkit.engine.tasks.Task.checkpoint_predictor`).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
    """

    def __init__(self, weights: str | Path, device: str = "auto") -> None:
        from cvkit.engine.checkpoint import weights_task
        from cvkit.engine.tasks import get_task

        self.task = weights_task(weights)
        self.model = get_task(self.task).checkpoint_predictor(weights, device)
        self.classes: list[str] = self.model.classes

    def predict(self, images: Any) -> Any:
        """One image or a list (RGB ``uint8 [H, W, 3]`` arrays or paths) → one typed result
        (:mod:`cvkit.runtime.results`) or a list of them."""
        import numpy as np

        from cvkit.images import read_image

        single = isinstance(images, (str, Path, np.ndarray))
        sources: Sequence[Any] = [images] if single else list(images)
        results = self.model([read_image(source) for source in sources])
        return results[0] if single else results


def load(path: str | Path, device: str = "auto") -> Any:
    """A predictor for a ``.pt`` checkpoint or an exported ``.onnx`` alike.

    ``load(path).predict(images)`` takes one image or a list (arrays or paths) and returns the
    typed results of :mod:`cvkit.runtime.results` (``Detections``, ``Classification`` ...).
    ``device`` picks the torch device of a checkpoint or the onnxruntime providers of a file
    (``auto``, ``cpu``, ``cuda``).
    """
    if Path(path).suffix.lower() == ".onnx":
        from cvkit.runtime import load_predictor

        return load_predictor(path, device)
    return CheckpointPredictor(path, device)
