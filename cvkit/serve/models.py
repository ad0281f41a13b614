"""The models one server holds: a runtime predictor and its batchers per model.

:class:`ServedModel` wraps :func:`cvkit.runtime.load_predictor` with two
:class:`~cvkit.serve.batcher.DynamicBatcher` queues that share one worker thread (so a model
runs one ``session.run`` at a time): decoded images for the image endpoint, batched through
``predictor.predict`` (pre-processing, the graph and post-processing of the whole batch), and
V2 tensors ``[B, 3, H, W]``, concatenated into one ``session.run``. An image batch waits (up
to ``--max-delay-ms``) only while more images for the model are being received or decoded; a
V2 batch waits the delay as Triton's does (its body is read and parsed before it joins the
queue, so there is nothing to watch). A model whose graph has a fixed batch size (the batch
axis of its input is a number) is not batched: each request runs alone (images padded to the
graph's batch by the predictor).

A detector whose graph takes proposals and whose file records selective-search settings (an
exported Fast R-CNN) has its proposals computed for every uploaded image, which needs OpenCV's
contrib build: without it the server refuses to start (:func:`check_proposal_search`), as it
would otherwise start and fail every image request.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from cvkit.errors import ConfigError
from cvkit.runtime import load_predictor
from cvkit.runtime.metadata import ModelMetadata
from cvkit.runtime.predictors import PROPOSALS
from cvkit.runtime.results import Result
from cvkit.runtime.session import OnnxModel
from cvkit.selective_search import segmentation_module
from cvkit.serve.batcher import DynamicBatcher
from cvkit.serve.metrics import ServeMetrics
from cvkit.serve.settings import ServeSettings


def check_proposal_search(path: Path, metadata: ModelMetadata, inputs: Iterable[str]) -> None:
    """Refuse a model whose image requests would all fail: its graph takes ``proposals``
    (``inputs``: the graph's inputs after the images) that the runtime computes by selective
    search (``metadata.proposals``), and this OpenCV has no ``cv2.ximgproc``.

    Raises:
        ConfigError: naming ``path`` and how to install OpenCV's contrib build
            (:data:`cvkit.selective_search.INSTALL_HINT`).
    """
    if PROPOSALS not in inputs or metadata.proposals is None:
        return
    try:
        segmentation_module()
    except ConfigError as exc:
        raise ConfigError(
            f"{path}: cannot be served: the image API computes this detector's proposals for "
            f"every image, and {exc}"
        ) from None


def check_proposal_searches(files: Mapping[str, Path]) -> None:
    """:func:`check_proposal_search` of every model file, for the parent process of several
    workers (which load the models themselves, where a failure would only restart them).
    The files are opened only when selective search is missing.

    Raises:
        ConfigError: a model needs selective search and OpenCV lacks it.
        ModelFileError: a file does not load (checked only then).
    """
    try:
        segmentation_module()
    except ConfigError:
        for path in files.values():
            model = OnnxModel(path, "cpu", threads=1)
            check_proposal_search(path, model.metadata, model.extra_inputs)


def _run_tensors(model, batches: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
    """Run V2 input tensors; consecutive ones of equal ``[3, H, W]`` share one run."""
    results: list[dict[str, np.ndarray]] = []
    start = 0
    while start < len(batches):
        end = start + 1
        while end < len(batches) and batches[end].shape[1:] == batches[start].shape[1:]:
            end += 1
        outputs = model.run(np.concatenate(batches[start:end]))
        offset = 0
        for batch in batches[start:end]:
            rows = slice(offset, offset + len(batch))
            results.append({name: value[rows] for name, value in outputs.items()})
            offset += len(batch)
        start = end
    return results


class ServedModel:
    """One served ``.onnx`` model.

    Args:
        name: the name in the URLs (``/v2/models/{name}``).
        path: the exported file.
        settings: batching limits, providers and threads.
        metrics: where the batchers report batch sizes and queue times.

    Raises:
        ModelFileError: the file is not a cvkit export.
        ProviderError: the providers asked for did not start.
        ConfigError: the model computes proposals by selective search and OpenCV lacks it
            (:func:`check_proposal_search`).
    """

    def __init__(
        self, name: str, path: Path, settings: ServeSettings, metrics: ServeMetrics
    ) -> None:
        self.name = name
        self.path = path
        self.predictor = load_predictor(
            path,
            settings.providers,
            threads=settings.threads,
            batch_size=settings.max_batch,
            spin=settings.spin,
        )
        self.model = self.predictor.model
        check_proposal_search(path, self.predictor.metadata, self.model.extra_inputs)
        fixed = self.model.input_shape[0]
        self.dynamic_batch = not (isinstance(fixed, int) and fixed > 0)
        self.max_batch = settings.max_batch if self.dynamic_batch else int(fixed)
        delay = settings.max_delay_ms / 1000 if self.dynamic_batch else 0.0
        executor = ThreadPoolExecutor(1, thread_name_prefix=f"cvkit-serve-{name}")
        observe = metrics.batch_observer(name)
        self.images: DynamicBatcher[np.ndarray, Result] = DynamicBatcher(
            self.predictor.predict,
            settings.max_batch if self.dynamic_batch else 1,
            delay,
            executor,
            observe,
            wait_for_incoming=True,
        )
        self.tensors: DynamicBatcher[np.ndarray, dict[str, np.ndarray]] = DynamicBatcher(
            lambda batches: _run_tensors(self.model, batches),
            self.max_batch,
            delay,
            executor,
            observe,
        )
        self._executor = executor

    @property
    def task(self) -> str:
        """The metadata's task (``detect``, ``classify``, ``segment`` ...)."""
        return self.predictor.metadata.task

    def start(self) -> None:
        """Start both batchers on the running event loop."""
        self.images.start()
        self.tensors.start()

    async def stop(self) -> None:
        """Stop the batchers and their worker thread."""
        await self.images.stop()
        await self.tensors.stop()
        self._executor.shutdown(wait=True)

    def describe(self) -> dict[str, Any]:
        """The model as ``GET /v1/models/{name}`` reports it."""
        meta = self.predictor.metadata
        return {
            "name": self.name,
            "task": meta.task,
            "classes": list(meta.classes),
            "input_size": list(meta.input_size),
            "model": meta.model_name,
            "dynamic_batch": self.dynamic_batch,
            "max_batch": self.max_batch,
            "provider": self.predictor.provider,
        }
