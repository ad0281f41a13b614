"""Batches of images of unequal sizes: normalized per image, then padded into an ImageBatch.

:class:`~cvkit.data.loader.Collate` stacks images that all have the input size (the letterbox
or stretch step made them square). A detector that trains on each image's own aspect ratio
(torchvision's and detectron2's two-stage detectors: shorter side resized, no square canvas)
gets ``uint8 [3, h_i, w_i]`` images instead; :class:`PaddedCollate` normalizes each one with the
same constants and pads the batch bottom/right to a multiple of the model's
``size_divisibility`` (:meth:`cvkit.structures.ImageBatch.from_tensors`). The padding is zero
after normalization, i.e. the mean colour, as torchvision pads.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from cvkit.data.loader import Collate
from cvkit.structures import ImageBatch


class PaddedCollate(Collate):
    """Normalize ``uint8 [3, h_i, w_i]`` images and pad them into one :class:`ImageBatch`.

    Each image becomes ``(pixel / 255 - mean) / std`` (float32, the arithmetic of
    :func:`cvkit.geometry.normalize`); the batch tensor is ``[B, 3, H, W]`` with ``H``, ``W``
    the largest height and width rounded up to ``size_divisibility``, and
    ``image_sizes[i] = (h_i, w_i)``. Targets stay a list, as with :class:`Collate`, their boxes
    in each image's own pixels (padding bottom/right moves no pixel).

    Args:
        mean, std: per-channel normalization (``data.mean``, ``data.std``).
        size_divisibility: the model's total stride (``model.size_divisibility``).
    """

    def __init__(
        self, mean: tuple[float, ...], std: tuple[float, ...], size_divisibility: int = 1
    ) -> None:
        super().__init__(mean, std)
        if size_divisibility < 1:
            raise ValueError(f"size_divisibility must be >= 1, got {size_divisibility}")
        self.size_divisibility = size_divisibility

    def __call__(self, batch: list[tuple[Tensor, Any]]) -> tuple[ImageBatch, list[Any]]:
        """``[(image uint8 [3, h_i, w_i], target), ...]`` → ``(ImageBatch, [target, ...])``.

        Raises:
            ValueError: an image is not ``[3, h, w]``; the message gives its index and shape.
        """
        for index, (image, _) in enumerate(batch):
            if image.dim() != 3 or image.shape[0] != 3:
                raise ValueError(
                    f"PaddedCollate: image {index} of the batch is {tuple(image.shape)}, "
                    "expected [3, h, w]"
                )
        images = [(image.float() - self.mean[0]) * self.inv_std[0] for image, _ in batch]
        padded = ImageBatch.from_tensors(images, self.size_divisibility)
        return padded, [target for _, target in batch]
