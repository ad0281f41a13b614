"""The per-batch step of every engine: image rows in, result rows out, one predictor held.

:class:`BatchPredictor` is what each Ray Data actor holds (``map_batches`` builds it once per
actor, so the model loads once per actor) and what the local engine calls in-process. A batch
is a mapping of columns with one entry per image: ``path`` always, plus ``bytes`` (encoded
file contents, as ``ray.data.read_binary_files``) or ``image`` (RGB ``uint8 [H, W, 3]``, as
``ray.data.read_images``); with neither, the step reads each ``path`` itself. Bytes are
decoded by :func:`cvkit.images.decode_image_bytes`, the decoder of
:func:`cvkit.images.read_image`, so every engine sees the pixels ``cvkit predict`` and training
see. An image that cannot be read or decoded becomes an error row naming the reason; the rest
of the batch is predicted as usual.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from cvkit.errors import CvkitError, InputError
from cvkit.images import decode_image_bytes, read_image
from cvkit.runtime import load_predictor
from cvkit.runtime.results import Detections
from cvkit.scale.rows import RowFormat, error_row, row_format
from cvkit.scale.sources import read_bytes


class BatchPredictor:
    """A runtime predictor (:func:`cvkit.runtime.load_predictor`) over batches of image rows.

    Args:
        model: exported ``.onnx`` file (local path; every worker must see it).
        providers: onnxruntime providers (``cpu``, ``cuda``, ``auto`` ...).
        threads: onnxruntime intra-op threads (None: its default, all cores).
        batch_size: images per ``session.run``.
        score_threshold: detectors: keep only detections scoring at least this (None: the
            threshold exported in the model).
    """

    def __init__(
        self,
        model: str | Path,
        providers: str = "cpu",
        threads: int | None = None,
        batch_size: int = 16,
        score_threshold: float | None = None,
    ) -> None:
        self.predictor = load_predictor(model, providers, threads=threads, batch_size=batch_size)
        self.format: RowFormat = row_format(self.predictor.task)
        self.score_threshold = score_threshold

    def __call__(self, batch: Mapping[str, Any]) -> pa.Table:
        """Result rows (schema :attr:`format`) of ``batch``'s images, in ``batch`` order."""
        if "path" not in batch:
            raise InputError(
                f"batch columns {sorted(batch)}: a 'path' column is needed to key the rows; "
                "read the dataset with include_paths=True"
            )
        paths = [str(path) for path in batch["path"]]
        rows: list[dict[str, Any] | None] = [None] * len(paths)
        loaded: list[tuple[int, np.ndarray]] = []
        for index, path in enumerate(paths):
            try:
                loaded.append((index, self._image(batch, index, path)))
            except (CvkitError, OSError) as exc:
                rows[index] = error_row(path, _reason(exc))
        for (index, image), result in zip(
            loaded, self._predict([i for _, i in loaded]), strict=True
        ):
            if isinstance(result, Exception):
                rows[index] = error_row(paths[index], _reason(result))
            else:
                rows[index] = self.format.result_row(paths[index], result, image.shape[:2])
        return self.format.table(rows)

    def _image(self, batch: Mapping[str, Any], index: int, path: str) -> np.ndarray:
        if "image" in batch:
            return read_image(np.asarray(batch["image"][index]))
        data = batch["bytes"][index] if "bytes" in batch else read_bytes(path)
        return decode_image_bytes(bytes(data), path)

    def _predict(self, images: Sequence[np.ndarray]) -> list[Any]:
        """One result per image; if the batch fails, each image alone, a failure becoming
        its exception."""
        if not images:
            return []
        try:
            results = self.predictor.predict(list(images))
        except CvkitError:
            results = []
            for image in images:
                try:
                    results.append(self.predictor.predict(image))
                except CvkitError as exc:
                    results.append(exc)
        if self.score_threshold is None:
            return results
        return [r.above(self.score_threshold) if isinstance(r, Detections) else r for r in results]


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
