"""Detector, Classifier and Segmenter: an exported model plus its pre- and post-processing.

All three share one core (:class:`Predictor`): the onnxruntime session with its metadata, the
pre-processing that metadata describes, and batching. ``predict`` takes one image (RGB
``uint8 [H, W, 3]`` array or a file path) and returns one result, or a list of them and
returns a list. Nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cvkit.images import ImageSource, read_image
from cvkit.runtime.errors import InputError, ModelFileError
from cvkit.runtime.masks import masks_to_original
from cvkit.runtime.metadata import ModelMetadata
from cvkit.runtime.postprocess import (
    classification,
    segmentation,
    select_detections,
)
from cvkit.runtime.preprocess import (
    Geometry,
    pad_proposal_rows,
    padded_proposals,
    preprocess,
    search_proposals,
)
from cvkit.runtime.results import Classification, Detections, Segmentation, category_ids_of
from cvkit.runtime.session import OnnxModel

_PREDICTORS: dict[str, type[Predictor]] = {}
PROPOSALS = "proposals"


def register_predictor(name: str) -> Callable[[type[Predictor]], type[Predictor]]:
    """Class decorator registering a :class:`Predictor` subclass as the runtime of the files
    whose metadata ``task`` is ``name``."""

    def decorate(cls: type[Predictor]) -> type[Predictor]:
        cls.task = name
        _PREDICTORS[name] = cls
        return cls

    return decorate


def registered_tasks() -> tuple[str, ...]:
    """The task names that have a runtime predictor, sorted."""
    return tuple(sorted(_PREDICTORS))


def load_predictor(path: str | Path, providers: str | Sequence[str] = "auto", **options: Any):
    """The registered predictor for the task in ``path``'s metadata, opened on ``path``.

    Raises:
        ModelFileError: unreadable file, or a task no predictor is registered for.
    """
    task = OnnxModel(path, "cpu").metadata.task
    return _PREDICTORS[task](path, providers, **options)


class Predictor:
    """The shared core: session, metadata, pre-processing, batching.

    Args:
        path: ``.onnx`` file written by ``cvkit export``.
        providers: ``auto``, ``cpu``, ``cuda``, ``tensorrt`` or a list of onnxruntime
            provider names (see :mod:`cvkit.runtime.session`).
        threads: CPU intra-op threads (None: onnxruntime's default).
        batch_size: images per ``session.run`` for models with a dynamic batch axis; a static
            model runs its own batch size (the last chunk is padded).
        spin: let onnxruntime's threads spin-wait after each run (see :class:`OnnxModel`).

    Raises:
        ModelFileError: unreadable file, missing metadata, or a model of another task.
        ProviderError: the provider asked for did not start.
    """

    task = ""

    def __init__(
        self,
        path: str | Path,
        providers: str | Sequence[str] = "auto",
        threads: int | None = None,
        batch_size: int = 8,
        spin: bool = True,
    ) -> None:
        self.model = OnnxModel(path, providers, threads, spin)
        if self.task and self.metadata.task != self.task:
            raise ModelFileError(
                f"{path}: this is a '{self.metadata.task}' model; "
                f"{type(self).__name__} needs a '{self.task}' model"
            )
        static_batch = self.model.input_shape[0]
        self.batch_size = static_batch if isinstance(static_batch, int) else batch_size

    @property
    def metadata(self) -> ModelMetadata:
        """The model's metadata (task, classes, input size, pre-processing, thresholds)."""
        return self.model.metadata

    @property
    def provider(self) -> str:
        """The onnxruntime execution provider that runs the graph."""
        return self.model.provider

    @property
    def classes(self) -> tuple[str, ...]:
        """Class names, index ``i`` is class ``i``."""
        return self.metadata.classes

    def preprocess(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, list[Geometry]]:
        """RGB ``uint8`` images → network batch ``[B, 3, H, W]`` and per-image geometry."""
        meta = self.metadata
        return preprocess(
            images, meta.input_size, meta.resize, meta.mean, meta.std, self.model.input_dtype
        )

    def _chunks(
        self, images: list[np.ndarray], per_image: list[Any] | None = None
    ) -> Iterator[tuple[dict[str, np.ndarray], list[Geometry]]]:
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            batch, geometries = self.preprocess(chunk)
            padding = self.batch_size - len(chunk)
            if padding and isinstance(self.model.input_shape[0], int):
                batch = np.concatenate([batch, np.zeros_like(batch[:1]).repeat(padding, 0)])
            given = None if per_image is None else per_image[start : start + len(chunk)]
            extra = self._graph_inputs(batch, given, geometries)
            yield self.model.run(batch, extra), geometries

    def _graph_inputs(
        self, batch: np.ndarray, per_image: list[Any] | None, geometries: list[Geometry]
    ) -> dict[str, np.ndarray]:
        """The graph's inputs after the images for one chunk: ``batch`` is its network input
        ``[B, 3, H, W]`` (the first ``len(geometries)`` images real), ``per_image`` what
        ``predict`` got for those images; none by default."""
        return {}

    def predict(self, images: ImageSource | Sequence[ImageSource]) -> Any:
        """Run the model on one image or a list (arrays RGB ``uint8 [H, W, 3]`` or paths).

        Returns:
            One result for one image, a list of results for a list.

        Raises:
            InputError: an unreadable file or an array of the wrong shape/dtype.
        """
        return self._predict(images, None)

    def _predict(self, images: ImageSource | Sequence[ImageSource], per_image: Any) -> Any:
        """:meth:`predict` with ``per_image`` (one item per image, or one item for one image)
        handed to :meth:`_graph_inputs` chunk by chunk."""
        single = isinstance(images, (str, Path, np.ndarray))
        sources = [images] if single else list(images)
        if not sources:
            raise InputError("predict() got an empty list of images")
        if per_image is not None:
            per_image = [per_image] if single else list(per_image)
            if len(per_image) != len(sources):
                raise InputError(f"predict() got {len(per_image)} inputs for {len(sources)} images")
        loaded = [read_image(source) for source in sources]
        results = []
        for outputs, geometries in self._chunks(loaded, per_image):
            results.extend(self._postprocess(outputs, geometries))
        return results[0] if single else results

    def _postprocess(self, outputs: dict[str, np.ndarray], geometries: list[Geometry]) -> list[Any]:
        raise NotImplementedError


@register_predictor("detect")
class Detector(Predictor):
    """Object detector: ``predict`` returns :class:`Detections` in original image pixels.

    Uses the graph's NMS when it has one, else applies score threshold, class-aware NMS and
    ``max_det`` from the metadata in numpy. A graph with masks (``metadata.mask_size``) gives
    each detection's mask in its box; it is pasted into the original image
    (:func:`cvkit.runtime.masks.masks_to_original`) as ``Detections.masks``.

    A graph with a ``proposals`` input (Fast R-CNN) classifies and refines proposed boxes.
    Selective search is no ONNX op, so it runs beside the graph: with the settings the export
    recorded (``metadata.proposals``), ``predict(images)`` computes the proposals on the
    network input as the checkpoint does
    (:func:`cvkit.runtime.preprocess.search_proposals`; OpenCV's contrib build, the ``rcnn``
    extra); ``predict(images, proposals=...)`` takes the caller's instead, and is the only
    way for a file exported before the settings were recorded.
    """

    def predict(
        self,
        images: ImageSource | Sequence[ImageSource],
        proposals: np.ndarray | Sequence[np.ndarray] | None = None,
    ) -> Detections | list[Detections]:
        """Detections of one image or a list (arrays RGB ``uint8 [H, W, 3]`` or paths).

        Args:
            images: one image or a list.
            proposals: for a graph with a ``proposals`` input only: per image ``[P, 4]`` xyxy
                boxes in that image's original pixels (one array for one image, a list for a
                list); rows of zero width or height are ignored. They are mapped into the
                network input as the image is and zero-padded
                (:func:`cvkit.runtime.preprocess.padded_proposals`). None: selective search
                with the file's settings, when it has them.

        Returns:
            One :class:`Detections` for one image, a list for a list.

        Raises:
            InputError: an unreadable image, or proposals missing for a graph that takes them
                and has no selective-search settings, given to one that takes none, or not one
                ``[P, 4]`` array per image.
            ConfigError: proposals to compute without OpenCV's contrib build.
        """
        if proposals is not None and PROPOSALS not in self.model.extra_inputs:
            raise InputError(f"{self.model.path}: this detector takes no proposals")
        return self._predict(images, proposals)

    def _graph_inputs(
        self, batch: np.ndarray, per_image: list[Any] | None, geometries: list[Geometry]
    ) -> dict[str, np.ndarray]:
        """``proposals [B, P, 4]`` input pixels when the graph takes them (the caller's, else
        computed from ``batch`` with the file's selective-search settings); ``P`` at least
        ``topk_candidates // C + 1``, the rows the graph was traced to select from.

        Raises:
            InputError: no proposals given and no settings to compute them.
        """
        if PROPOSALS not in self.model.extra_inputs:
            return {}
        meta = self.metadata
        min_rows = (meta.topk_candidates or 0) // len(meta.classes) + 1
        if per_image is not None:
            return {PROPOSALS: padded_proposals(per_image, geometries, len(batch), min_rows)}
        if meta.proposals is None:
            raise InputError(
                f"{self.model.path}: this detector classifies given proposals and the file "
                "records no selective-search settings to compute them (exported by an older "
                "cvkit; export the .pt again to have them computed): pass proposals=[P, 4] "
                "xyxy original pixels per image (e.g. selective search)"
            )
        found = search_proposals(batch, len(geometries), meta.mean, meta.std, meta.proposals)
        return {PROPOSALS: pad_proposal_rows(found, len(batch), min_rows)}

    def _postprocess(
        self, outputs: dict[str, np.ndarray], geometries: list[Geometry]
    ) -> list[Detections]:
        meta = self.metadata
        results = []
        for index, geometry in enumerate(geometries):
            masks = None
            if meta.nms_in_graph:
                count = int(outputs["num_dets"][index])
                boxes = outputs["boxes"][index, :count]
                scores = outputs["scores"][index, :count]
                labels = outputs["labels"][index, :count].astype(np.int64)
                if meta.mask_size:
                    masks = masks_to_original(
                        outputs["masks"][index, :count], boxes, meta.input_size, geometry
                    )
            else:
                boxes, scores, labels = select_detections(
                    outputs["boxes"][index].astype(np.float32),
                    outputs["scores"][index].astype(np.float32),
                    meta.score_threshold,
                    meta.iou_threshold,
                    meta.max_det,
                    meta.topk_candidates,
                )
            results.append(
                Detections(
                    geometry.boxes_to_original(boxes),
                    scores.astype(np.float32),
                    labels,
                    [self.classes[label] for label in labels],
                    masks=masks,
                    orig_size=geometry.orig_size,
                    category_ids=category_ids_of(labels, meta.category_ids),
                )
            )
        return results


@register_predictor("classify")
class Classifier(Predictor):
    """Image classifier: ``predict`` returns :class:`Classification` (softmax of the logits)."""

    def _postprocess(
        self, outputs: dict[str, np.ndarray], geometries: list[Geometry]
    ) -> list[Classification]:
        logits = outputs["logits"]
        return [classification(logits[i], self.classes) for i in range(len(geometries))]


@register_predictor("segment")
class Segmenter(Predictor):
    """Semantic segmenter: ``predict`` returns :class:`Segmentation` at the original size."""

    def _postprocess(
        self, outputs: dict[str, np.ndarray], geometries: list[Geometry]
    ) -> list[Segmentation]:
        logits = outputs["logits"]
        return [
            segmentation(logits[i], geometry, self.classes) for i, geometry in enumerate(geometries)
        ]
