"""Checkpoint files: written atomically, read with ``weights_only=True``.

A checkpoint is a plain dict (see :func:`save_checkpoint`). It is written to a temporary file
in the same folder, flushed to disk and renamed over the target, so a process killed mid-write
leaves the previous checkpoint intact and loadable. :func:`cvkit.models.loading.load_model`
rebuilds a model from the dict alone: the resolved config and class list inside it are enough.

Keys: ``model`` (state dict of the trained weights), ``ema`` (``{"module": state dict,
"updates": n}`` or None), ``config`` (resolved config dict), ``classes``, ``category_ids``
(or None), ``epoch`` (completed epochs), ``step`` (optimizer steps), ``optimizer``,
``scheduler``, ``scaler``, ``rng``, ``metrics`` (latest validation metrics), ``best_metric``,
``cvkit_version``.
"""

from __future__ import annotations

import os
import pickle
import random
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cvkit import __version__
from cvkit.errors import CheckpointError

REQUIRED_KEYS = ("model", "config", "classes")


def save_checkpoint(checkpoint: dict[str, Any], path: str | Path) -> Path:
    """Write ``checkpoint`` to ``path`` atomically (temp file + fsync + rename).

    Adds ``cvkit_version``. On any failure the temporary file is removed and ``path`` keeps
    its previous content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save({**checkpoint, "cvkit_version": __version__}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``torch.load(weights_only=True)``.

    Raises:
        CheckpointError: the file is missing, truncated or corrupt, or lacks a required key.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile) as exc:
        raise CheckpointError(
            f"{path}: not a readable checkpoint (truncated or corrupt): {exc}"
        ) from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path}: expected a dict checkpoint, got {type(checkpoint)}")
    missing = [key for key in REQUIRED_KEYS if key not in checkpoint]
    if missing:
        raise CheckpointError(f"{path}: not a cvkit checkpoint, missing keys {missing}")
    return checkpoint


def weights_task(path: str | Path) -> str:
    """The task (``detect``, ``segment`` ...) a ``.pt`` checkpoint or ``.onnx`` file was made for.

    Raises:
        CheckpointError: unreadable checkpoint. ModelFileError: unreadable ONNX file.
    """
    if Path(path).suffix.lower() == ".onnx":
        from cvkit.runtime import OnnxModel

        return OnnxModel(path, "cpu").metadata.task
    return str(load_checkpoint(path)["config"]["task"])


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU and CUDA generator states as tensors and plain types."""
    version, python_state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(python_state), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`capture_rng_state` returned."""
    version, python_state, gauss = state["python"]
    random.setstate((version, tuple(python_state), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
