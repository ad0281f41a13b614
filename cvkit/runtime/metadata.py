"""The metadata an exported cvkit model carries in its ONNX ``metadata_props``.

An exported file is self-describing: :class:`ModelMetadata` holds everything the runtime needs
to pre-process an image, interpret the outputs and name the classes. It is written by
:mod:`cvkit.export.onnx` and read back by :mod:`cvkit.runtime`; this module is the one place
both sides agree on the keys. Values are strings (ONNX metadata is ``str -> str``); lists are
JSON.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from cvkit.runtime.errors import ModelFileError
from cvkit.selective_search import SearchSettings

RESIZE_POLICIES = ("letterbox", "resize")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelMetadata:
    """What an exported model needs around its graph.

    Attributes:
        task: the name of the runtime predictor that reads the file (``detect``,
            ``classify``, ``segment`` or any name given to
            :func:`cvkit.runtime.predictors.register_predictor`).
        classes: class names; output index ``i`` is ``classes[i]``.
        category_ids: the dataset's COCO ``category_id`` of each class (``category_ids[i]`` is
            class ``i``'s), for a model trained on a COCO set; None: the dataset had none
            (YOLO, VOC, synthetic) or the file was exported before cvkit recorded them.
        input_size: ``(height, width)`` of the network input in pixels.
        mean, std: per-channel RGB normalization on the 0..1 scale:
            ``input = (pixel / 255 - mean) / std``.
        resize: ``letterbox`` (keep aspect ratio, longer side = input size, zero padding at the
            bottom/right) or ``resize`` (stretch to the input size).
        box_format: format of box outputs (detectors): ``xyxy`` absolute input pixels.
        nms_in_graph: detectors: True when the graph returns ``boxes [B, K, 4]``,
            ``scores [B, K]``, ``labels [B, K]``, ``num_dets [B]``; False when it returns raw
            candidates ``boxes [B, N, 4]``, ``scores [B, N, C]`` and NMS runs in the runtime.
        score_threshold, iou_threshold, max_det, topk_candidates: detection post-processing
            (used by the graph's NMS, or by the runtime when NMS is not in the graph):
            (candidate, class) pairs above ``score_threshold``, the best ``topk_candidates``
            of them (None: all), class-aware NMS at ``iou_threshold``, ``max_det`` kept.
        mask_size: detectors with NMS in the graph that segment (Mask R-CNN): the graph also
            returns ``masks [B, K, mask_size, mask_size]`` probabilities in the frame of each
            box; 0: no masks.
        proposals: detectors whose graph takes a ``proposals`` input (Fast R-CNN): the
            selective-search settings the model was trained with, so the runtime computes the
            proposals itself as the checkpoint does; None (files exported before cvkit recorded
            them): the caller passes the proposals.
        model_name: the cvkit model family (``ssd``, ``classifier`` ...), for information.
        cvkit_version: version of cvkit that exported the file.
    """

    task: str
    classes: tuple[str, ...]
    input_size: tuple[int, int]
    category_ids: tuple[int, ...] | None = None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    resize: str = "letterbox"
    box_format: str = "xyxy"
    nms_in_graph: bool = True
    score_threshold: float = 0.01
    iou_threshold: float = 0.5
    max_det: int = 100
    topk_candidates: int | None = None
    mask_size: int = 0
    proposals: SearchSettings | None = None
    model_name: str = ""
    cvkit_version: str = field(default="")

    def __post_init__(self) -> None:
        from cvkit.runtime.predictors import registered_tasks

        if self.task not in registered_tasks():
            raise ModelFileError(
                f"metadata 'task': no runtime predictor for task {self.task!r}; "
                f"known tasks: {', '.join(registered_tasks())}"
            )
        if self.resize not in RESIZE_POLICIES:
            raise ModelFileError(
                f"metadata 'resize': expected one of {RESIZE_POLICIES}, got {self.resize!r}"
            )
        if len(self.input_size) != 2 or min(self.input_size) < 1:
            raise ModelFileError(f"metadata 'input_size': expected (h, w), got {self.input_size}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ModelFileError(f"metadata 'mean'/'std': bad values {self.mean} / {self.std}")
        if not self.classes:
            raise ModelFileError("metadata 'classes': the class list is empty")
        if self.category_ids is not None and len(self.category_ids) != len(self.classes):
            raise ModelFileError(
                f"metadata 'category_ids': {len(self.category_ids)} ids for "
                f"{len(self.classes)} classes"
            )

    def to_props(self) -> dict[str, str]:
        """The ``metadata_props`` entries: every field, JSON-encoded, under its own name."""
        return {key: json.dumps(value) for key, value in asdict(self).items()}

    @classmethod
    def from_props(cls, props: Mapping[str, str], source: str = "model") -> ModelMetadata:
        """Parse what :meth:`to_props` wrote.

        Raises:
            ModelFileError: a required key is missing or a value does not parse; the message
                names ``source`` and the key.
        """
        missing = [key for key in ("task", "classes", "input_size") if key not in props]
        if missing:
            raise ModelFileError(
                f"{source}: not a cvkit export, metadata lacks {missing} "
                f"(found keys: {sorted(props)})"
            )
        values: dict[str, Any] = {}
        for name in cls.__dataclass_fields__:
            if name not in props:
                continue
            try:
                values[name] = json.loads(props[name])
            except json.JSONDecodeError:
                raise ModelFileError(
                    f"{source}: metadata {name!r} is not valid JSON: {props[name]!r}"
                ) from None
        for name in ("classes", "input_size", "mean", "std", "category_ids"):
            if values.get(name) is not None:
                values[name] = tuple(values[name])
        if values.get("proposals") is not None:
            try:
                values["proposals"] = SearchSettings(**values["proposals"])
            except (TypeError, ValueError) as exc:
                raise ModelFileError(f"{source}: metadata 'proposals': {exc}") from None
        try:
            return cls(**values)
        except TypeError as exc:
            raise ModelFileError(f"{source}: malformed metadata: {exc}") from None
