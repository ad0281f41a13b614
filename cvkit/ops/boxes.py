"""Box formats and box clean-up: conversion, normalization, area, clipping, small box removal.

Inside cvkit a box is a row of ``Tensor[N, 4]`` holding ``(x1, y1, x2, y2)`` in absolute pixels.
The other layouts exist only at I/O boundaries, and :func:`box_convert` is the one place that
translates between them, with ``torchvision.ops.box_convert``'s names and results:

- axis-aligned, 4 numbers: ``xyxy`` (corners), ``xywh`` (top-left corner plus size),
  ``cxcywh`` (centre plus size);
- rotated, ``r`` in degrees counter-clockwise about the box centre: ``xywhr`` and ``cxcywhr``
  (5 numbers), ``xyxyxyxy`` (8 numbers: the corners from the top-left one, clockwise).

Normalized coordinates (fractions of the image width and height) are handled by
:func:`normalize_boxes`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from cvkit.errors import CvkitError
from cvkit.logs import get_logger

AXIS_ALIGNED_FORMATS = ("xyxy", "xywh", "cxcywh")
ROTATED_FORMATS = ("xywhr", "cxcywhr", "xyxyxyxy")
BOX_FORMATS = AXIS_ALIGNED_FORMATS + ROTATED_FORMATS
_COORDS = {"xywhr": 5, "cxcywhr": 5, "xyxyxyxy": 8}

_log = get_logger("ops")


class BoxError(CvkitError, ValueError):
    """Boxes (or an argument of a box op) have the wrong shape, format name or value.

    The subclasses below also derive from the exception torchvision.ops raises for the same
    mistake, so ``except IndexError`` around a torchvision call keeps working with cvkit.
    """


class BoxTypeError(BoxError, TypeError, AttributeError, RuntimeError):
    """An argument is not a ``torch.Tensor`` (torchvision: ``AttributeError``, ``TypeError``,
    or ``RuntimeError`` from its C++ ops)."""


class BoxShapeError(BoxError, IndexError, RuntimeError, AssertionError):
    """Boxes or their companions have the wrong shape (torchvision: ``IndexError``,
    ``RuntimeError``, or ``AssertionError`` from ``torch._assert`` in the RoI ops)."""


class BoxDtypeError(BoxError, NotImplementedError):
    """Boxes have a dtype the op does not take (torchvision: ``RuntimeError``, ...)."""


class BoxConversionError(BoxError, NotImplementedError):
    """No conversion between an axis-aligned and a rotated format (torchvision:
    ``NotImplementedError``)."""


def check_boxes(boxes: Tensor, name: str = "boxes", integer: bool = False, coords: int = 4) -> None:
    """Raise a :class:`BoxError` unless ``boxes`` is a ``Tensor[..., coords]`` of a usable dtype.

    Floating dtypes are always usable; integer (not bool) dtypes too when ``integer``.
    """
    if not isinstance(boxes, Tensor):
        raise BoxTypeError(f"{name} must be a torch.Tensor, got {type(boxes).__name__}")
    if boxes.ndim < 1 or boxes.shape[-1] != coords:
        raise BoxShapeError(f"{name} must have shape [..., {coords}], got {tuple(boxes.shape)}")
    if not boxes.is_floating_point() and not (integer and boxes.dtype != torch.bool):
        kind = "a floating or integer" if integer else "a floating"
        raise BoxDtypeError(f"{name} must be {kind} tensor, got dtype {boxes.dtype}")


def upcast_boxes(boxes: Tensor) -> Tensor:
    """float16/bfloat16 → float32 and small integers → int32, as ``torchvision.ops`` does."""
    if boxes.is_floating_point():
        return boxes if boxes.dtype in (torch.float32, torch.float64) else boxes.float()
    return boxes if boxes.dtype in (torch.int32, torch.int64) else boxes.int()


def _check_format(fmt: str, name: str, formats: tuple[str, ...] = AXIS_ALIGNED_FORMATS) -> None:
    if fmt not in formats:
        raise BoxError(f"{name}={fmt!r} is not a box format; use one of {formats}")


def _to_xyxy(boxes: Tensor, fmt: str) -> Tensor:
    a, b, c, d = boxes.unbind(-1)
    if fmt == "xywh":
        c, d = a + c, b + d
    elif fmt == "cxcywh":
        a, b, c, d = a - 0.5 * c, b - 0.5 * d, a + 0.5 * c, b + 0.5 * d
    return torch.stack((a, b, c, d), dim=-1)


def _from_xyxy(boxes: Tensor, fmt: str) -> Tensor:
    a, b, c, d = boxes.unbind(-1)
    if fmt == "xywh":
        c, d = c - a, d - b
    elif fmt == "cxcywh":
        a, b, c, d = (a + c) / 2, (b + d) / 2, c - a, d - b
    return torch.stack((a, b, c, d), dim=-1)


def _cos_sin(degrees: Tensor) -> tuple[Tensor, Tensor]:
    radians = degrees * math.pi / 180.0
    return torch.cos(radians), torch.sin(radians)


def _rotated_step(boxes: Tensor, in_fmt: str, out_fmt: str) -> Tensor:
    """One rotated conversion to or from ``xywhr``; integer boxes are rounded back to their dtype
    after each step (as in torchvision)."""
    coords = boxes if boxes.is_floating_point() else boxes.float()
    if out_fmt == "xywhr" and in_fmt == "xyxyxyxy":
        x1, y1, x2, y2, x3, y3, *_ = coords.unbind(-1)
        w = ((x2 - x1) ** 2 + (y1 - y2) ** 2).sqrt()
        h = ((x3 - x2) ** 2 + (y3 - y2) ** 2).sqrt()
        out = torch.stack((x1, y1, w, h, torch.atan2(y1 - y2, x2 - x1) * 180 / math.pi), dim=-1)
    elif out_fmt == "xyxyxyxy":  # from xywhr
        x1, y1, w, h, r = coords.unbind(-1)
        cos, sin = _cos_sin(r)
        x2, y2 = x1 + w * cos, y1 - w * sin
        corners = (x1, y1, x2, y2, x2 + h * sin, y2 + h * cos, x1 + h * sin, y1 + h * cos)
        out = torch.stack(corners, dim=-1)
    else:  # between xywhr and cxcywhr: move the reference point by half the rotated diagonal
        x, y, w, h, r = coords.unbind(-1)
        cos, sin = _cos_sin(r)
        if in_fmt == "cxcywhr":
            x, y = x - w / 2 * cos - h / 2 * sin, y - h / 2 * cos + w / 2 * sin
        else:
            x, y = x + w / 2 * cos + h / 2 * sin, y - w / 2 * sin + h / 2 * cos
        out = torch.stack((x, y, w, h, r), dim=-1)
    return out if boxes.is_floating_point() else out.round().to(boxes.dtype)


def box_convert(boxes: Tensor, in_fmt: str, out_fmt: str) -> Tensor:
    """Convert boxes between formats, as ``torchvision.ops.box_convert``.

    Args:
        boxes (Tensor[..., K]): boxes in ``in_fmt``: ``K = 4`` for ``"xyxy"``, ``"xywh"``,
            ``"cxcywh"``; ``K = 5`` for ``"xywhr"``, ``"cxcywhr"``; ``K = 8`` for
            ``"xyxyxyxy"`` (see the module docstring for the layouts).
        in_fmt, out_fmt: two formats of the same family (axis-aligned or rotated).

    Returns:
        Tensor[..., K']: the same boxes in ``out_fmt`` (always a new tensor). Integer
        axis-aligned boxes stay integer unless the conversion halves (to or from ``cxcywh``,
        which gives float); integer rotated boxes are rounded back to their dtype.

    Raises:
        BoxError: an unknown format name (a ``ValueError``); BoxConversionError: formats of
        different families (a ``NotImplementedError``).
    """
    _check_format(in_fmt, "in_fmt", BOX_FORMATS)
    _check_format(out_fmt, "out_fmt", BOX_FORMATS)
    rotated = in_fmt in ROTATED_FORMATS
    if rotated != (out_fmt in ROTATED_FORMATS):
        raise BoxConversionError(
            f"no conversion from {in_fmt!r} to {out_fmt!r}: one is axis-aligned, one rotated"
        )
    check_boxes(boxes, integer=True, coords=_COORDS.get(in_fmt, 4))
    if in_fmt == out_fmt:
        return boxes.clone()
    if not rotated:
        return _from_xyxy(_to_xyxy(boxes, in_fmt), out_fmt)
    if in_fmt != "xywhr":
        boxes = _rotated_step(boxes, in_fmt, "xywhr")
    return boxes if out_fmt == "xywhr" else _rotated_step(boxes, "xywhr", out_fmt)


def normalize_boxes(boxes: Tensor, image_size: tuple[int, int], inverse: bool = False) -> Tensor:
    """Pixel boxes → fractions of the image size, or back when ``inverse``.

    Args:
        boxes (Tensor[..., 4]): boxes in any axis-aligned format (``xyxy``, ``xywh``,
            ``cxcywh``: all four numbers scale with ``(width, height, width, height)``).
        image_size: ``(height, width)`` in pixels, both positive.
        inverse: ``False``: pixels in, fractions out; ``True``: fractions in, pixels out.

    Returns:
        Tensor[..., 4] floating: the scaled boxes, in the same format.
    """
    check_boxes(boxes, integer=True)
    height, width = image_size
    if height <= 0 or width <= 0:
        raise BoxError(f"image_size must be positive (height, width), got {image_size}")
    scale = torch.tensor([width, height, width, height], dtype=torch.float64)
    boxes = boxes if boxes.is_floating_point() else boxes.float()
    scale = scale.to(boxes)
    return boxes * scale if inverse else boxes / scale


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
    """Clip boxes (or any ``(x, y)`` points) to the image ``[0, width] × [0, height]``.

    Args:
        boxes (Tensor[..., 2K]): float or integer ``(x, y)`` pairs in pixels, such as
            ``(x1, y1, x2, y2)`` boxes (``K = 2``) or ``xyxyxyxy`` corners (``K = 4``).
        image_size: ``(height, width)`` in pixels.

    Returns:
        Tensor[..., 2K]: clipped boxes (a new tensor of the same dtype).
    """
    if not isinstance(boxes, Tensor):
        raise BoxTypeError(f"boxes must be a torch.Tensor, got {type(boxes).__name__}")
    if boxes.ndim < 1 or boxes.shape[-1] % 2:
        raise BoxShapeError(f"boxes must have shape [..., 2K] (x, y), got {tuple(boxes.shape)}")
    height, width = image_size
    x = boxes[..., 0::2].clamp(min=0, max=width)
    y = boxes[..., 1::2].clamp(min=0, max=height)
    return torch.stack((x, y), dim=-1).reshape(boxes.shape)


def clip_boxes_to_image(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """torchvision's name for :func:`clip_boxes`: ``boxes (Tensor[..., 4])``, ``size (h, w)``."""
    return clip_boxes(boxes, size)


def remove_small_boxes(boxes: Tensor, min_size: float) -> Tensor:
    """Indices of the boxes whose width and height are both at least ``min_size``.

    Args:
        boxes (Tensor[N, 4]): float or integer ``(x1, y1, x2, y2)``.
        min_size: minimum side length, in the units of ``boxes``.

    Returns:
        Tensor[K] int64: kept indices, increasing. As in torchvision, boxes with more leading
        dimensions (``Tensor[N, ..., 4]``) give the first index of each kept box, and one box
        ``Tensor[4]`` gives ``[0]`` or ``[]``.
    """
    check_boxes(boxes, integer=True)
    widths = boxes[..., 2] - boxes[..., 0]
    heights = boxes[..., 3] - boxes[..., 1]
    return torch.where((widths >= min_size) & (heights >= min_size))[0]


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
