"""Selective-search region proposals (OpenCV ximgproc) for R-CNN and Fast R-CNN, computed once.

:func:`~cvkit.selective_search.selective_search` (torch-free, shared with the runtime that
runs an exported Fast R-CNN) wraps OpenCV's ``createSelectiveSearchSegmentation`` (the contrib
build: ``pip install 'cvkit[rcnn]'``) and returns ``float32 [P, 4]`` ``(x1, y1, x2, y2)`` boxes
in the image's pixels, in a fixed order and reproducibly.

:class:`ProposalCache` keeps them per image content (a BLAKE2 digest of the pixels and their
shape) and settings, in memory and optionally as ``.npy`` files, so a training run computes
each image's proposals once however many epochs it runs; an augmented image has other pixels
and so gets its own entry. :class:`SelectiveSearchProposer` is what the detectors call: it
turns a normalized :class:`~cvkit.structures.ImageBatch` back into ``uint8`` RGB pixels (the
inverse of the loader's normalization), crops each image's valid region and looks its
proposals up. :class:`ProposalDetector` is what R-CNN and Fast R-CNN share: the proposer,
proposals given or computed per batch, and the final selection of detections.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from cvkit.config import Config
from cvkit.config.eval import EvalConfig
from cvkit.config.model import ProposalConfig
from cvkit.errors import ExportError
from cvkit.geometry import denormalize
from cvkit.models.backbones import Backbone
from cvkit.models.detection.base import Detector
from cvkit.selective_search import selective_search
from cvkit.structures import ImageBatch, Instances, Target


class ProposalCache:
    """Proposals per image content and settings, in memory and optionally on disk.

    Args:
        compute: ``image uint8 [H, W, 3] -> float32 [P, 4]`` (e.g. :func:`selective_search`
            with fixed options).
        settings: a text naming everything ``compute`` depends on (part of every key).
        folder: also store each entry as ``<folder>/<settings digest>/<image digest>.npy``
            and read entries from there (so other processes and later runs reuse them).

    Attributes:
        computed: how many images ``compute`` ran on (cache misses).
        hits: how many lookups were answered from memory or disk.
    """

    def __init__(
        self,
        compute: Callable[[np.ndarray], np.ndarray],
        settings: str,
        folder: str | Path | None = None,
    ) -> None:
        self.compute = compute
        self.settings = settings
        digest = hashlib.blake2b(settings.encode(), digest_size=8).hexdigest()
        self.folder = Path(folder) / digest if folder is not None else None
        self.computed = 0
        self.hits = 0
        self._memory: dict[str, np.ndarray] = {}

    def key(self, image: np.ndarray) -> str:
        """The entry name of ``image``: a digest of its shape, pixels and the settings."""
        digest = hashlib.blake2b(digest_size=16)
        digest.update(repr((image.shape, str(image.dtype), self.settings)).encode())
        digest.update(np.ascontiguousarray(image).tobytes())
        return digest.hexdigest()

    def __len__(self) -> int:
        return len(self._memory)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """The proposals of ``image`` (``uint8 [H, W, 3]``), computed on the first request only.

        Returns:
            ``float32 [P, 4]`` xyxy pixels (the cached array: do not modify it).
        """
        key = self.key(image)
        boxes = self._memory.get(key)
        path = self.folder / f"{key}.npy" if self.folder is not None else None
        if boxes is None and path is not None and path.is_file():
            boxes = np.load(path, allow_pickle=False)
        if boxes is not None:
            self.hits += 1
        else:
            boxes = np.asarray(self.compute(image), dtype=np.float32).reshape(-1, 4)
            self.computed += 1
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                temporary = path.with_suffix(f".{id(self)}.tmp.npy")
                np.save(temporary, boxes)
                temporary.replace(path)  # atomic: a concurrent reader sees all or nothing
        self._memory[key] = boxes
        return boxes


def unnormalize(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """``float [B, 3, H, W]`` normalized as the loader does → ``uint8 [B, H, W, 3]`` RGB.

    The inverse of ``(pixel - 255 * mean) / (255 * std)``, rounded, so the loader's pixels come
    back exactly (:func:`cvkit.geometry.denormalize`, which the runtime uses too).
    """
    return denormalize(images.detach().float().cpu().numpy(), mean, std)


class SelectiveSearchProposer:
    """Selective-search proposals for the images of a normalized batch.

    Args:
        options: ``model.<name>.proposals``.
        mean, std: the normalization the images went through (``data.mean``/``data.std``).

    Attributes:
        cache: the :class:`ProposalCache` (its ``computed`` and ``hits`` count the work).
    """

    def __init__(
        self,
        options: ProposalConfig | None = None,
        mean: Sequence[float] = (0.485, 0.456, 0.406),
        std: Sequence[float] = (0.229, 0.224, 0.225),
    ) -> None:
        self.options = options or ProposalConfig()
        self.mean = tuple(mean)
        self.std = tuple(std)
        settings = self.options.model_dump(exclude={"cache_dir"})
        self.cache = ProposalCache(
            self._search, f"selective_search {sorted(settings.items())}", self.options.cache_dir
        )

    def _search(self, image: np.ndarray) -> np.ndarray:
        return selective_search(image, self.options)

    def __call__(self, images: Tensor | ImageBatch) -> list[Tensor]:
        """One ``float32 [P_i, 4]`` xyxy input-pixel tensor per image, on the images' device,
        computed on each image's valid (unpadded) region."""
        batch = ImageBatch.of(images)
        pixels = unnormalize(batch.tensor, self.mean, self.std)
        device = batch.tensor.device
        return [
            torch.tensor(self.cache(np.ascontiguousarray(image[:height, :width])), device=device)
            for image, (height, width) in zip(pixels, batch.image_sizes, strict=True)
        ]


class ProposalDetector(Detector):
    """Base of the detectors on external proposals (R-CNN, Fast R-CNN).

    Args:
        backbone: any :class:`Backbone`; its last selected stage is what the detector reads.
        num_classes: foreground classes (labels 0..C-1).
        options: the detector's ``model.<name>`` section (with ``proposals`` and
            ``topk_candidates``).
        inference: ``eval`` section, read when the eval forward runs.
        body_lr_mult, head_lr_mult: learning-rate multipliers of the backbone and the rest.
        proposer: ``images -> list of Tensor[P_i, 4]`` used when a forward gets no
            ``proposals`` (default: cached selective search on images normalized with
            ImageNet's mean/std; :meth:`from_config` uses ``data.mean``/``data.std``).
    """

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int,
        options: Any,
        inference: EvalConfig | None = None,
        body_lr_mult: float = 1.0,
        head_lr_mult: float = 1.0,
        proposer: SelectiveSearchProposer | None = None,
    ) -> None:
        super().__init__(backbone, num_classes, inference, body_lr_mult, head_lr_mult)
        self.options = options
        self.proposer = proposer or SelectiveSearchProposer(options.proposals)
        self.feature_name = backbone.out_features[-1]

    @classmethod
    def from_config(cls, config: Config, num_classes: int, options: Any) -> ProposalDetector:
        """:meth:`Detector.from_config` with a proposer that un-normalizes images with
        ``data.mean``/``data.std``."""
        model = super().from_config(config, num_classes, options)
        data = config.data
        model.proposer = SelectiveSearchProposer(options.proposals, data.mean, data.std)
        return model

    def proposals_for(
        self, batch: ImageBatch, proposals: Sequence[Tensor] | None = None
    ) -> list[Tensor]:
        """``proposals`` (one ``Tensor[P_i, 4]`` xyxy input pixels per image) as float32 on
        the batch's device, else the proposer's.

        Raises:
            ValueError: not one proposal tensor per image.
            ExportError: no proposals while tracing (selective search is not a graph op); for
                a detector without an ``export_inputs`` proposals input (R-CNN) the message
                says it has no ONNX export.
        """
        if proposals is None:
            if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
                name = type(self).__name__
                if not hasattr(self, "export_inputs"):
                    raise ExportError(
                        f"{name} has no ONNX export: its selective-search proposals are no "
                        "graph op, and unlike Fast R-CNN it takes none as a graph input; "
                        "predict and evaluate with the .pt checkpoint (cvkit predict --weights "
                        "best.pt, cvkit eval)"
                    )
                raise ExportError(
                    f"{name}: selective-search proposals cannot be traced into a "
                    "graph; pass the proposals as an input"
                )
            return self.proposer(batch)
        if len(proposals) != len(batch):
            raise ValueError(
                f"{type(self).__name__}: {len(proposals)} proposal tensors for {len(batch)} images"
            )
        return [boxes.to(batch.tensor.device, torch.float32).reshape(-1, 4) for boxes in proposals]

    def check_targets(self, batch: ImageBatch, targets: list[Target] | None) -> list[Target]:
        """``targets`` when there is one per image, else a ValueError."""
        if targets is None or len(targets) != len(batch):
            raise ValueError(f"{type(self).__name__} in training mode needs one Target per image")
        return targets

    def detect(self, batch: ImageBatch, proposals: Sequence[Tensor] | None) -> list[Instances]:
        """``candidates`` then class-aware NMS with the ``eval`` settings: one
        :class:`~cvkit.structures.Instances` per image (``boxes [K, 4]`` xyxy input pixels,
        ``scores [K]``, ``labels [K]``)."""
        boxes, scores = self.candidates(batch, proposals)
        return self.select(boxes, scores, batch.image_sizes)
