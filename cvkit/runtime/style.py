"""The torch-free stylizer: an exported fast style-transfer network at any image size.

A ``style`` export takes ``float32 [B, 3, H, W]`` RGB in 0..1 (its metadata says
``mean = 0``, ``std = 1``) with dynamic ``B``, ``H`` and ``W``, and returns ``image``
``[B, 3, H, W]`` in 0..1. :class:`Stylizer` feeds each image at its own size (no resize,
consecutive same-size images share a ``session.run``) and returns :class:`Stylized`, whose
``image`` is RGB ``uint8 [H, W, 3]`` of the input's size.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cvkit.geometry import normalize
from cvkit.runtime.predictors import Predictor, register_predictor
from cvkit.runtime.preprocess import Geometry
from cvkit.runtime.results import Result


def to_uint8_image(image: np.ndarray) -> np.ndarray:
    """``[3, H, W]`` float in 0..1 → RGB ``uint8 [H, W, 3]`` (rounded, clipped)."""
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8).transpose(1, 2, 0).copy()


@dataclass
class Stylized(Result):
    """One stylised image: ``image`` RGB ``uint8 [H, W, 3]``, the size of its input."""

    image: np.ndarray
    names: Sequence[str] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        """``{"height": H, "width": W}`` of the stylised image."""
        return {"height": int(self.image.shape[0]), "width": int(self.image.shape[1])}

    def draw(self, image: np.ndarray) -> np.ndarray:
        """The stylised image itself (``image``, its input, is not needed)."""
        return self.image.copy()


@register_predictor("style")
class Stylizer(Predictor):
    """An exported fast stylizer: ``predict`` returns :class:`Stylized` at the input's size."""

    def preprocess(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, list[Geometry]]:
        """Same-size RGB ``uint8`` images → ``[B, 3, H, W]`` (no resize) and their geometry."""
        meta = self.metadata
        batch = normalize(np.stack(images), meta.mean, meta.std, self.model.input_dtype)
        height, width = images[0].shape[:2]
        geometry = Geometry(scale=(1.0, 1.0), offset=(0.0, 0.0), orig_size=(height, width))
        return batch, [geometry] * len(images)

    def _chunks(
        self, images: list[np.ndarray], per_image: list[Any] | None = None
    ) -> Iterator[tuple[dict[str, np.ndarray], list[Geometry]]]:
        """Runs of consecutive images of one size, at most ``batch_size`` long."""
        start = 0
        while start < len(images):
            end = start + 1
            shape = images[start].shape
            while end < len(images) and end - start < self.batch_size:
                if images[end].shape != shape:
                    break
                end += 1
            given = None if per_image is None else per_image[start:end]
            yield from super()._chunks(images[start:end], given)
            start = end

    def _postprocess(
        self, outputs: dict[str, np.ndarray], geometries: list[Geometry]
    ) -> list[Stylized]:
        stylised = outputs["image"]
        return [Stylized(to_uint8_image(stylised[i]), self.classes) for i in range(len(geometries))]
