"""Box formats and box clean-up: conversion, area, clipping, small/invalid box removal.

Inside cvkit a box is a row of ``Tensor[N, 4]`` holding ``(x1, y1, x2, y2)`` in absolute pixels.
The other layouts (``xywh`` = top-left corner plus size, ``cxcywh`` = centre plus size) and
normalized coordinates (fractions of the image width and height) exist only at I/O
boundaries; :func:`box_convert` is the one place that translates between them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from cvkit.errors import CvkitError
from cvkit.logs import get_logger

BOX_FORMATS = ("xyxy", "xywh", "cxcywh")

_log = get_logger("ops")


class BoxError(CvkitError, ValueError):
    """Boxes (or an argument of a box op) have the wrong shape, format name or value.

    The subclasses below also derive from the exception torchvision.ops raises for the same
    mistake, so ``except IndexError`` around a torchvision call keeps working with cvkit.
    """


class BoxTypeError(BoxError, TypeError, AttributeError):
    """Boxes are not a ``torch.Tensor`` (torchvision: ``AttributeError`` or ``TypeError``)."""


class BoxShapeError(BoxError, IndexError, RuntimeError):
    """Boxes or their companions have the wrong shape (torchvision: ``IndexError``, ...)."""


class BoxDtypeError(BoxError, NotImplementedError):
    """Boxes have a dtype the op does not take (torchvision: ``RuntimeError``, ...)."""


def check_boxes(boxes: Tensor, name: str = "boxes", integer: bool = False) -> None:
    """Raise a :class:`BoxError` unless ``boxes`` is a ``Tensor[..., 4]`` of a usable dtype.

    Floating dtypes are always usable; integer (not bool) dtypes too when ``integer``.
    """
    if not isinstance(boxes, Tensor):
        raise BoxTypeError(f"{name} must be a torch.Tensor, got {type(boxes).__name__}")
    if boxes.ndim < 1 or boxes.shape[-1] != 4:
        raise BoxShapeError(f"{name} must have shape [..., 4], got {tuple(boxes.shape)}")
    if not boxes.is_floating_point() and not (integer and boxes.dtype != torch.bool):
        kind = "a floating or integer" if integer else "a floating"
        raise BoxDtypeError(f"{name} must be {kind} tensor, got dtype {boxes.dtype}")


def upcast_boxes(boxes: Tensor) -> Tensor:
    """float16/bfloat16 → float32 and small integers → int32, as ``torchvision.ops`` does."""
    if boxes.is_floating_point():
        return boxes if boxes.dtype in (torch.float32, torch.float64) else boxes.float()
    return boxes if boxes.dtype in (torch.int32, torch.int64) else boxes.int()


def _check_format(fmt: str, name: str) -> None:
    if fmt not in BOX_FORMATS:
        raise BoxError(f"{name}={fmt!r} is not a box format; use one of {BOX_FORMATS}")


def box_convert(
    boxes: Tensor,
    in_fmt: str,
    out_fmt: str,
    image_size: tuple[int, int] | None = None,
    in_normalized: bool = False,
    out_normalized: bool = False,
) -> Tensor:
    """Convert boxes between ``xyxy``, ``xywh`` and ``cxcywh``, and normalized ↔ pixels.

    Args:
        boxes (Tensor[..., 4]): boxes in ``in_fmt``; normalized (fractions of the image width
            and height) when ``in_normalized``, absolute pixels otherwise.
        in_fmt, out_fmt: one of ``"xyxy"``, ``"xywh"``, ``"cxcywh"``. Integer boxes stay
            integer where the conversion needs no halving (as in ``torchvision.ops``).
        image_size: ``(height, width)`` in pixels; needed when exactly one of
            ``in_normalized`` / ``out_normalized`` is true.
        in_normalized, out_normalized: whether the input / output coordinates are normalized.

    Returns:
        Tensor[..., 4]: the same boxes in ``out_fmt`` (a new tensor).
    """
    check_boxes(boxes, integer=True)
    _check_format(in_fmt, "in_fmt")
    _check_format(out_fmt, "out_fmt")
    scale = None
    if in_normalized != out_normalized:
        if image_size is None:
            raise BoxError("box_convert needs image_size=(height, width) to change normalization")
        height, width = image_size
        if height <= 0 or width <= 0:
            raise BoxError(f"image_size must be positive (height, width), got {image_size}")
        scale = boxes.new_tensor([width, height, width, height])
        if out_normalized:
            scale = 1.0 / scale
    a, b, c, d = boxes.unbind(-1)
    if in_fmt == "xywh":
        c, d = a + c, b + d
    elif in_fmt == "cxcywh":
        a, b, c, d = a - 0.5 * c, b - 0.5 * d, a + 0.5 * c, b + 0.5 * d
    if out_fmt == "xywh":
        c, d = c - a, d - b
    elif out_fmt == "cxcywh":
        a, b, c, d = 0.5 * (a + c), 0.5 * (b + d), c - a, d - b
    out = torch.stack((a, b, c, d), dim=-1)
    return out if scale is None else out * scale


def box_area(boxes: Tensor, fmt: str = "xyxy") -> Tensor:
    """Area of each box.

    Args:
        boxes (Tensor[..., 4]): float or integer boxes in ``fmt``.
        fmt: ``"xyxy"`` (default), ``"xywh"`` or ``"cxcywh"``.

    Returns:
        Tensor[...]: width × height; negative for inverted boxes, never clamped. float16 and
        bfloat16 boxes give float32, integer boxes int32/int64 (as ``torchvision.ops.box_area``).
    """
    check_boxes(boxes, integer=True)
    _check_format(fmt, "fmt")
    boxes = upcast_boxes(boxes)
    if fmt != "xyxy":
        return boxes[..., 2] * boxes[..., 3]
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def clip_boxes(boxes: Tensor, image_size: tuple[int, int]) -> Tensor:
    """Clip boxes to the image ``[0, width] × [0, height]``.

    Args:
        boxes (Tensor[..., 4]): float or integer ``(x1, y1, x2, y2)`` in pixels.
        image_size: ``(height, width)`` in pixels.

    Returns:
        Tensor[..., 4]: clipped boxes (a new tensor of the same dtype).
    """
    check_boxes(boxes, integer=True)
    height, width = image_size
    x = boxes[..., 0::2].clamp(min=0, max=width)
    y = boxes[..., 1::2].clamp(min=0, max=height)
    return torch.stack((x[..., 0], y[..., 0], x[..., 1], y[..., 1]), dim=-1)


def clip_boxes_to_image(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """torchvision's name for :func:`clip_boxes`: ``boxes (Tensor[..., 4])``, ``size (h, w)``."""
    return clip_boxes(boxes, size)


def remove_small_boxes(boxes: Tensor, min_size: float) -> Tensor:
    """Indices of the boxes whose width and height are both at least ``min_size``.

    Args:
        boxes (Tensor[N, 4]): float or integer ``(x1, y1, x2, y2)``.
        min_size: minimum side length, in the units of ``boxes``.

    Returns:
        Tensor[K] int64: kept indices, increasing.
    """
    check_boxes(boxes, integer=True)
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    return torch.nonzero((widths >= min_size) & (heights >= min_size)).flatten()


def sanitize_boxes(boxes: Tensor, min_size: float = 0.0) -> tuple[Tensor, int]:
    """Find the usable boxes: finite coordinates, ``x2 > x1``, ``y2 > y1`` and sides ≥ ``min_size``.

    Args:
        boxes (Tensor[N, 4]): ``(x1, y1, x2, y2)``.
        min_size: minimum side length in the units of ``boxes``.

    Returns:
        ``(keep, num_dropped)``: ``keep`` (Tensor[K] int64) indexes the usable boxes in increasing
        order and ``num_dropped`` = N - K. A non-zero count is also logged at debug level.
    """
    check_boxes(boxes)
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    good = torch.isfinite(boxes).all(dim=1) & (widths > 0) & (heights > 0)
    if min_size > 0:
        good &= (widths >= min_size) & (heights >= min_size)
    keep = torch.nonzero(good).flatten()
    num_dropped = boxes.shape[0] - keep.numel()
    if num_dropped:
        _log.debug("sanitize_boxes dropped %d of %d boxes", num_dropped, boxes.shape[0])
    return keep, num_dropped


def masks_to_boxes(masks: Tensor) -> Tensor:
    """The tightest box around each mask, as ``torchvision.ops.masks_to_boxes``.

    Args:
        masks (Tensor[N, H, W]): bool masks, or numbers where non-zero means inside.

    Returns:
        Tensor[N, 4] float32: ``(x1, y1, x2, y2)`` of the first and last inside column and row
        (inclusive pixel indices, so a one-pixel mask gives ``x1 = x2``); ``[0, 0, 0, 0]`` for
        an empty mask; ``Tensor[0, 4]`` when ``masks`` has no elements.
    """
    if not isinstance(masks, Tensor):
        raise BoxTypeError(f"masks must be a torch.Tensor, got {type(masks).__name__}")
    if masks.numel() == 0:
        return torch.zeros((0, 4), dtype=torch.float32, device=masks.device)
    if masks.ndim != 3:
        raise BoxShapeError(f"masks must have shape [N, H, W], got {tuple(masks.shape)}")
    inside = masks != 0
    rows, cols = inside.any(dim=2), inside.any(dim=1)
    height, width = masks.shape[1:]
    y = torch.arange(height, device=masks.device, dtype=torch.float32)
    x = torch.arange(width, device=masks.device, dtype=torch.float32)
    big = torch.tensor(float(max(height, width)), device=masks.device)
    x1 = torch.where(cols, x, big).amin(dim=1)
    y1 = torch.where(rows, y, big).amin(dim=1)
    x2 = torch.where(cols, x, -1.0).amax(dim=1)
    y2 = torch.where(rows, y, -1.0).amax(dim=1)
    boxes = torch.stack((x1, y1, x2, y2), dim=1)
    return torch.where(rows.any(dim=1, keepdim=True), boxes, torch.zeros_like(boxes))
