"""Typed records that travel between cvkit's torch stages (data → models → engine → eval/export).

- :class:`Target`: one training/validation sample's ground truth in network-input pixels, with
  the :class:`~cvkit.geometry.Geometry` that maps it back to the original image.
- :class:`ImageBatch`: a padded image batch with each image's own (unpadded) size.
- :class:`Instances`: one image's detections (boxes, scores, labels, optional masks) — what a
  detector returns per image in eval mode.
- :class:`Candidates`: a detector's pre-NMS outputs for export (possibly per-class boxes).
- :class:`CroppedMasks`: instance masks kept as the crop of each mask's own region (what the
  data pipeline carries instead of dense ``[N, H, W]`` masks).

Boxes are always ``float32 (x1, y1, x2, y2)`` absolute pixels of the image they belong to.
The torch-free twin of :class:`Instances` is :class:`cvkit.runtime.results.Detections`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from cvkit.geometry import Geometry


@dataclass
class Instances:
    """Detections of one image.

    Attributes:
        boxes: ``float32 [N, 4]`` (x1, y1, x2, y2) in pixels of an image of ``image_size``.
        scores: ``float32 [N]``, highest first.
        labels: ``int64 [N]`` class indices ``0..C-1``.
        image_size: ``(h, w)`` of the image the pixels refer to.
        masks: optional ``float32 [N, h, w]`` per-instance mask probabilities in that image
            (models paste RoI-resolution masks back before returning), else None.
    """

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    image_size: tuple[int, int]
    masks: Tensor | None = None

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def __getitem__(self, index: Tensor | slice) -> Instances:
        """The instances selected by a boolean mask, an index tensor or a slice."""
        masks = None if self.masks is None else self.masks[index]
        return Instances(
            self.boxes[index], self.scores[index], self.labels[index], self.image_size, masks
        )

    def to(self, device: torch.device | str) -> Instances:
        """A copy with every tensor on ``device``."""
        return dataclasses.replace(
            self,
            **{
                name: getattr(self, name).to(device)
                for name in ("boxes", "scores", "labels", "masks")
                if getattr(self, name) is not None
            },
        )

    def to_original(self, geometry: Geometry) -> Instances:
        """A CPU copy in the original image's pixels (:meth:`Geometry.boxes_to_original`).

        Boxes are mapped and clipped to ``geometry.orig_size``; masks (if any) are cropped to
        the valid (unpadded) region and resized bilinearly to the original size.
        """
        boxes = geometry.boxes_to_original(self.boxes.detach().float().cpu().numpy())
        masks = self.masks
        if masks is not None:
            height, width = geometry.orig_size
            (sx, sy), (ox, oy) = geometry.scale, geometry.offset
            valid = (
                masks.detach()
                .float()
                .cpu()[:, round(oy) : round(oy + height * sy), round(ox) : round(ox + width * sx)]
            )
            masks = (
                torch.nn.functional.interpolate(
                    valid[None], size=(height, width), mode="bilinear", align_corners=False
                )[0]
                if len(valid)
                else valid.new_zeros((0, height, width))  # interpolate refuses no channels
            )
        return Instances(
            torch.from_numpy(boxes),
            self.scores.detach().float().cpu(),
            self.labels.detach().cpu(),
            tuple(geometry.orig_size),
            masks,
        )

    @classmethod
    def empty(cls, image_size: tuple[int, int], device: torch.device | str = "cpu") -> Instances:
        """No detections."""
        return cls(
            torch.zeros((0, 4), device=device),
            torch.zeros(0, device=device),
            torch.zeros(0, dtype=torch.int64, device=device),
            image_size,
        )


@dataclass
class Target:
    """Ground truth of one sample in network-input pixels.

    Attributes:
        boxes: ``float32 [N, 4]`` (x1, y1, x2, y2) input pixels.
        labels: ``int64 [N]`` class indices ``0..C-1``.
        geometry: how the original image was placed into the input
            (``original = (input - offset) / scale``, original size).
        image_id: the dataset's image id (-1 when unknown).
        masks: optional instance masks in input pixels: ``uint8 [N, H, W]``, or the same masks
            as :class:`CroppedMasks` (``to_dense()`` gives them back).
        semantic: optional ``int64 [H, W]`` class per pixel (255 = ignore).
    """

    boxes: Tensor
    labels: Tensor
    geometry: Geometry
    image_id: int = -1
    masks: Tensor | CroppedMasks | None = None
    semantic: Tensor | None = None

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Target:
        """A copy with every tensor on ``device``."""
        return dataclasses.replace(
            self,
            **{
                name: getattr(self, name).to(device, non_blocking=non_blocking)
                for name in ("boxes", "labels", "masks", "semantic")
                if getattr(self, name) is not None
            },
        )


@dataclass
class ImageBatch:
    """Images of unequal sizes padded (bottom/right, zeros) into one tensor.

    Attributes:
        tensor: ``float32 [B, 3, H, W]`` normalized images; ``H`` and ``W`` are multiples of the
            model's size divisibility.
        image_sizes: ``(h, w)`` of each image's valid (unpadded) region.
    """

    tensor: Tensor
    image_sizes: list[tuple[int, int]]

    def __len__(self) -> int:
        return int(self.tensor.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> ImageBatch:
        """The batch on ``device``."""
        return ImageBatch(self.tensor.to(device, non_blocking=non_blocking), self.image_sizes)

    @classmethod
    def from_tensors(
        cls, images: Sequence[Tensor], size_divisibility: int = 1, pad_value: float = 0.0
    ) -> ImageBatch:
        """Pad ``[3, h_i, w_i]`` images at the bottom/right into one ``[B, 3, H, W]`` tensor.

        ``H``/``W`` are the largest height/width rounded up to a multiple of
        ``size_divisibility`` (a model's total stride, so every level's grid is whole).

        Raises:
            ValueError: no images, or images that are not ``[C, h, w]`` with equal ``C``.
        """
        if not images:
            raise ValueError("ImageBatch.from_tensors: no images")
        if len({(image.dim(), image.shape[0]) for image in images}) != 1 or images[0].dim() != 3:
            shapes = [tuple(image.shape) for image in images]
            raise ValueError(f"ImageBatch.from_tensors: expected [C, h, w] images, got {shapes}")
        step = max(1, int(size_divisibility))
        sizes = [(int(image.shape[1]), int(image.shape[2])) for image in images]
        height = -(-max(h for h, _ in sizes) // step) * step
        width = -(-max(w for _, w in sizes) // step) * step
        first = images[0]
        tensor = first.new_full((len(images), first.shape[0], height, width), pad_value)
        for slot, image in zip(tensor, images, strict=True):
            slot[:, : image.shape[1], : image.shape[2]].copy_(image)
        return cls(tensor, sizes)

    @classmethod
    def of(cls, images: Tensor | ImageBatch) -> ImageBatch:
        """``images`` as an ImageBatch: a plain ``[B, 3, H, W]`` tensor is B images of
        ``(H, W)``."""
        if isinstance(images, ImageBatch):
            return images
        size = (int(images.shape[-2]), int(images.shape[-1]))
        return cls(images, [size] * len(images))


class Candidates(NamedTuple):
    """A detector's pre-NMS predictions for a batch (what export appends NMS to).

    Attributes:
        boxes: ``[B, N, 4]`` shared by all classes, or per-class ``[B, N, C, 4]``; xyxy input
            pixels.
        scores: ``[B, N, C]`` per-class probabilities in [0, 1] (no background column).
        masks: optional mask logits ``[B, N, h, w]`` or per-class ``[B, N, C, h, w]``.
    """

    boxes: Tensor
    scores: Tensor
    masks: Tensor | None = None


@dataclass
class CroppedMasks:
    """``N`` binary instance masks of an ``(H, W)`` image, each kept as the crop of its region.

    A mask is zero outside its region (the tightest rectangle around its pixels), so the crops
    hold the masks exactly: :meth:`to_dense` rebuilds the dense ``uint8 [N, H, W]`` masks bit
    for bit. One flat buffer holds all crops (one tensor to share between loader workers, not
    one per instance). Objects cover a small part of an image, so this costs about
    ``sum of region areas`` bytes instead of ``N * H * W``.

    Attributes:
        data: ``uint8 [sum(h_i * w_i)]``, the crops one after another, each row-major.
        regions: ``int64 [N, 4]`` ``(x1, y1, x2, y2)`` integer pixels of each crop, end
            exclusive (``x1 == x2`` for an empty mask).
        image_size: ``(H, W)``.
    """

    data: Tensor
    regions: Tensor
    image_size: tuple[int, int]

    def __len__(self) -> int:
        return int(self.regions.shape[0])

    @property
    def shape(self) -> torch.Size:
        """``(N, H, W)``: the shape of :meth:`to_dense`'s masks."""
        return torch.Size((len(self), *self.image_size))

    @property
    def offsets(self) -> Tensor:
        """``int64 [N + 1]``: where each crop starts in :attr:`data` (and where the last ends)."""
        areas = (self.regions[:, 2] - self.regions[:, 0]) * (
            self.regions[:, 3] - self.regions[:, 1]
        )
        return torch.cat([areas.new_zeros(1), areas.cumsum(0)])

    @property
    def nbytes(self) -> int:
        """Bytes held by :attr:`data` and :attr:`regions`."""
        return self.data.numel() + self.regions.numel() * 8

    @classmethod
    def from_dense(cls, masks: np.ndarray | Tensor) -> CroppedMasks:
        """Crop ``[N, H, W]`` masks (0/1, any dtype) to their regions.

        Raises:
            ValueError: ``masks`` is not ``[N, H, W]``.
        """
        masks = masks.numpy() if isinstance(masks, Tensor) else np.asarray(masks)
        if masks.ndim != 3:
            raise ValueError(
                f"CroppedMasks.from_dense: expected [N, H, W] masks, got {masks.shape}"
            )
        return cls.from_crops((mask for mask in masks), masks.shape[1:])

    @classmethod
    def from_crops(cls, masks, image_size: Sequence[int]) -> CroppedMasks:
        """Crop masks given one at a time (an iterable of ``[H, W]`` 0/1 arrays), so that only
        one dense mask at a time need exist."""
        crops, regions = [], []
        for mask in masks:
            rows = np.flatnonzero(mask.any(axis=1))
            if rows.size:
                cols = np.flatnonzero(mask.any(axis=0))
                x1, y1, x2, y2 = int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1
                crops.append((mask[y1:y2, x1:x2] != 0).astype(np.uint8).ravel())
            else:
                x1 = y1 = x2 = y2 = 0
            regions.append((x1, y1, x2, y2))
        data = np.concatenate(crops) if crops else np.zeros(0, np.uint8)
        boxes = np.array(regions, np.int64).reshape(-1, 4)
        height, width = (int(side) for side in image_size)
        return cls(torch.from_numpy(data), torch.from_numpy(boxes), (height, width))

    def crop(self, index: int) -> Tensor:
        """Mask ``index`` inside its region: ``uint8 [y2 - y1, x2 - x1]``."""
        x1, y1, x2, y2 = self.regions[index].tolist()
        start = int(self.offsets[index])
        return self.data[start : start + (x2 - x1) * (y2 - y1)].reshape(y2 - y1, x2 - x1)

    def to_dense(self, indices: Sequence[int] | Tensor | None = None) -> Tensor:
        """The dense masks ``uint8 [K, H, W]`` (all ``N``, or those at ``indices`` in that
        order), equal to the masks this was made from."""
        chosen = range(len(self)) if indices is None else [int(i) for i in indices]
        dense = self.data.new_zeros((len(chosen), *self.image_size))
        for slot, index in zip(dense, chosen, strict=True):
            x1, y1, x2, y2 = self.regions[index].tolist()
            slot[y1:y2, x1:x2] = self.crop(index)
        return dense

    def __getitem__(self, index: np.ndarray | Tensor | Sequence[int]) -> CroppedMasks:
        """The masks selected by a boolean mask or an index array, in that order."""
        chosen = torch.as_tensor(np.asarray(index))
        if chosen.dtype == torch.bool:
            chosen = torch.nonzero(chosen).flatten()
        parts = [self.crop(int(i)).flatten() for i in chosen]
        data = torch.cat(parts) if parts else self.data.new_zeros(0)
        return CroppedMasks(data, self.regions[chosen].reshape(-1, 4), self.image_size)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> CroppedMasks:
        """A copy on ``device``."""
        return CroppedMasks(
            self.data.to(device, non_blocking=non_blocking),
            self.regions.to(device, non_blocking=non_blocking),
            self.image_size,
        )
