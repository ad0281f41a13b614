"""The Python API beside the CLI: ``cvkit.train(cfg, **overrides)`` returns the run;
``cvkit.load(path)`` gives a predictor for a ``.pt`` or an ``.onnx`` alike."""

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


def train(
    cfg: Any = None,
    out: str | Path | None = None,
    resume: str | Path | None = None,
    callbacks: Sequence[Any] = (),
    **overrides: Any,
) -> Any:
    """Train as ``cvkit train`` does and return the run.

    ``cvkit.train("configs/ssd.yaml", train__epochs=3, data__image_size=96)`` — a keyword's
    ``__`` separates nested keys (``train__epochs`` is ``--set train.epochs=3``); dotted keys
    work too: ``cvkit.train(cfg, **{"train.epochs": 3})``. Values are Python values (numbers,
    strings, lists, None).

    Args:
        cfg: a YAML path, a :class:`~cvkit.config.Config`, or None (the defaults).
        out: the run folder (default: a new one under ``runs/<task>/``).
        resume: a ``last.pt`` to continue from (``--resume``).
        callbacks: extra :class:`~cvkit.engine.callbacks.Callback` objects for the Trainer.
        **overrides: config values that replace the file's.

    Returns:
        The :class:`~cvkit.engine.commands.TrainRun`: ``metrics``, ``best``, ``last``,
        ``folder``, ``best_epoch``, ``onnx`` (when ``export.after_train``).

    Raises:
        ConfigError: an unknown key or a bad value (named as ``--set KEY``).
    """
    import json
    import tempfile

    from cvkit.config import Config, load_config, save_config
    from cvkit.engine.commands import run_training

    settings = [f"{key.replace('__', '.')}={json.dumps(value)}" for key, value in overrides.items()]
    if isinstance(cfg, Config):
        with tempfile.TemporaryDirectory() as folder:
            config = load_config(save_config(cfg, Path(folder) / "config.yaml"), settings)
    else:
        config = load_config(cfg, settings)
    return run_training(config, resume=resume, out=out, callbacks=callbacks)
