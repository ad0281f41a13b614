"""Overlap measures between boxes (IoU, GIoU, DIoU, CIoU), their losses, and mask IoU.

Pairwise forms take ``boxes1 (Tensor[..., N, 4])`` and ``boxes2 (Tensor[..., M, 4])`` and return
``Tensor[..., N, M]``; aligned forms (and the losses) take two ``Tensor[..., 4]`` whose shapes
broadcast and return ``Tensor[...]`` of the broadcast shape (box ``i`` against box ``i``).
Boxes are ``(x1, y1, x2, y2)``. Half-precision and integer (not bool) boxes are computed in
float32 (the results are float, as in torchvision). This is a deliberate difference: on such
boxes torchvision's ``box_iou`` and ``generalized_box_iou`` subtract coordinates before
upcasting, so their values are off by up to a few 1e-3 in float16 and bfloat16, and wrap around
in uint8; cvkit gives the IoU of the boxes as stored. Two zero-area boxes have IoU 0 / 0 = NaN,
as in torchvision; the losses add ``eps`` to the union, as torchvision's do, and stay finite.
The losses also follow torchvision's formulas where they differ from the IoU functions': no
clamping of the enclosing box or the union, and no gradient through the intersection of boxes
that only touch.

:func:`box_iou` on the CPU works on row blocks that stay in cache and reuses two scratch
buffers with in-place ops, which makes it several times faster than the textbook broadcast
(see ``benchmarks/results/ops.md``) while computing the very same floating-point operations,
so on float32 and float64 boxes its results are bit-identical to ``torchvision.ops.box_iou``.
"""

from __future__ import annotations

import math

import torch
import torchvision
from torch import Tensor

from cvkit.ops.boxes import (
    ROTATED_FORMATS,
    BoxError,
    BoxShapeError,
    box_area,
    box_convert,
    check_boxes,
)

# Elements of one [rows, M] block on the CPU. Below torch's parallel grain size (32768) every op
# runs on the calling thread: no thread barriers, which on a busy, shared CPU cost milliseconds
# each (bigger multi-threaded blocks were ~5x slower than these on a loaded 2-core machine and
# only ~1.5x faster on an idle one). The buffers (128 KiB) stay in L2.
CPU_BLOCK_ELEMENTS = (1 << 15) - 1
_REDUCTIONS = ("none", "mean", "sum")


def _upcast(boxes: Tensor) -> Tensor:
    return boxes if boxes.dtype in (torch.float32, torch.float64) else boxes.float()


def _pair_inputs(boxes1: Tensor, boxes2: Tensor) -> tuple[Tensor, Tensor]:
    check_boxes(boxes1, "boxes1", integer=True)
    check_boxes(boxes2, "boxes2", integer=True)
    if boxes1.ndim < 2 or boxes2.ndim < 2:
        raise BoxShapeError(
            f"pairwise IoU needs boxes1 [..., N, 4] and boxes2 [..., M, 4], got "
            f"{tuple(boxes1.shape)} and {tuple(boxes2.shape)}"
        )
    return _upcast(boxes1), _upcast(boxes2)


def _pairs(boxes1: Tensor, boxes2: Tensor) -> tuple[Tensor, Tensor]:
    """``boxes1 [..., N, 1, 4]`` and ``boxes2 [..., 1, M, 4]``, which broadcast to all pairs."""
    return boxes1[..., :, None, :], boxes2[..., None, :, :]


def _inter_union(boxes1: Tensor, boxes2: Tensor) -> tuple[Tensor, Tensor]:
    """Broadcast intersection and union areas (differentiable, traceable)."""
    wh = (
        torch.minimum(boxes1[..., 2:], boxes2[..., 2:])
        - torch.maximum(boxes1[..., :2], boxes2[..., :2])
    ).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter, box_area(boxes1) + box_area(boxes2) - inter


def _iou_into(
    first: tuple[Tensor, ...], second: tuple[Tensor, ...], inter: Tensor, out: Tensor
) -> Tensor:
    """IoU of broadcast coordinate tensors, written into ``out`` using ``inter`` as scratch.

    ``first`` and ``second`` are ``(x1, y1, x2, y2, area)`` tensors that broadcast to the shape
    of ``inter`` and ``out``. The operations and their order match torchvision's ``box_iou``.
    """
    x1a, y1a, x2a, y2a, area_a = first
    x1b, y1b, x2b, y2b, area_b = second
    torch.minimum(x2a, x2b, out=inter)
    torch.maximum(x1a, x1b, out=out)
    inter.sub_(out).clamp_(min=0)
    height = torch.minimum(y2a, y2b, out=out)
    height.sub_(torch.maximum(y1a, y1b)).clamp_(min=0)
    inter.mul_(height)
    torch.add(area_a, area_b, out=out)
    out.sub_(inter)
    return torch.div(inter, out, out=out)


def _box_iou_blocked(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    n, m = boxes1.shape[0], boxes2.shape[0]
    out = boxes1.new_empty((n, m))
    if n == 0 or m == 0:
        return out
    first = (*boxes1.t().contiguous()[:, :, None].unbind(0), box_area(boxes1)[:, None])
    second = (*boxes2.t().contiguous().unbind(0), box_area(boxes2))
    rows = n if boxes1.device.type != "cpu" else max(1, min(n, CPU_BLOCK_ELEMENTS // m))
    inter_buf = boxes1.new_empty((rows, m))
    for start in range(0, n, rows):
        block = slice(start, min(start + rows, n))
        _iou_into(
            tuple(t[block] for t in first), second, inter_buf[: block.stop - start], out[block]
        )
    return out


def box_iou(boxes1: Tensor, boxes2: Tensor, fmt: str = "xyxy") -> Tensor:
    """Pairwise intersection over union.

    Args:
        boxes1 (Tensor[..., N, K]): float or integer boxes in ``fmt``.
        boxes2 (Tensor[..., M, K]): float or integer boxes in ``fmt``.
        fmt: ``"xyxy"`` (default), ``"xywh"`` or ``"cxcywh"`` (``K = 4``); or a rotated format
            (``"xywhr"``, ``"cxcywhr"``: ``K = 5``; ``"xyxyxyxy"``: ``K = 8``), whose IoU is
            torchvision's rotated-box kernel (``Tensor[N, K]`` float32/float64 boxes only).

    Returns:
        Tensor[..., N, M]: IoU of every pair, in [0, 1] for valid boxes.
    """
    if fmt in ROTATED_FORMATS:
        boxes1 = box_convert(boxes1, fmt, "cxcywhr")
        boxes2 = box_convert(boxes2, fmt, "cxcywhr")
        return torchvision.ops.box_iou(boxes1, boxes2, fmt="cxcywhr")
    if fmt != "xyxy":
        boxes1 = box_convert(boxes1, fmt, "xyxy")
        boxes2 = box_convert(boxes2, fmt, "xyxy")
    boxes1, boxes2 = _pair_inputs(boxes1, boxes2)
    if (
        boxes1.ndim > 2
        or boxes2.ndim > 2
        or boxes1.requires_grad
        or boxes2.requires_grad
        or torch.jit.is_tracing()
    ):
        inter, union = _inter_union(*_pairs(boxes1, boxes2))
        return inter / union
    return _box_iou_blocked(boxes1, boxes2)


def _enclosing_sides(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """``(w, h)`` of the box enclosing both, signed (negative for inverted boxes)."""
    return torch.maximum(boxes1[..., 2:], boxes2[..., 2:]) - torch.minimum(
        boxes1[..., :2], boxes2[..., :2]
    )


def _enclosing_area(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    wh = _enclosing_sides(boxes1, boxes2).clamp(min=0)
    return wh[..., 0] * wh[..., 1]


def _centre_penalty(boxes1: Tensor, boxes2: Tensor, enclosing_wh: Tensor, eps: float) -> Tensor:
    """DIoU's penalty: the squared distance of the box centres over the squared diagonal of
    the enclosing box (``enclosing_wh``) plus ``eps``."""
    diagonal_sq = enclosing_wh.square().sum(-1) + eps
    centre_delta = (boxes1[..., :2] + boxes1[..., 2:]) / 2 - (boxes2[..., :2] + boxes2[..., 2:]) / 2
    return centre_delta.square().sum(-1) / diagonal_sq


def _giou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """GIoU of broadcast boxes."""
    inter, union = _inter_union(boxes1, boxes2)
    enclosing = _enclosing_area(boxes1, boxes2)
    return inter / union - (enclosing - union) / enclosing


def _diou(boxes1: Tensor, boxes2: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """DIoU and IoU of broadcast boxes; ``eps`` is added to the squared enclosing diagonal."""
    inter, union = _inter_union(boxes1, boxes2)
    iou = inter / union
    enclosing_wh = _enclosing_sides(boxes1, boxes2).clamp(min=0)
    return iou - _centre_penalty(boxes1, boxes2, enclosing_wh, eps), iou


def _aspect_term(boxes1: Tensor, boxes2: Tensor, iou: Tensor, eps: float) -> Tensor:
    """CIoU's aspect-ratio term ``alpha * v``: ``v = 4 / pi^2 * (atan(w2 / h2) - atan(w1 /
    h1))^2`` and ``alpha = v / (1 - iou + v + eps)``, with no gradient through ``alpha``."""
    wh1 = boxes1[..., 2:] - boxes1[..., :2]
    wh2 = boxes2[..., 2:] - boxes2[..., :2]
    aspect = torch.atan(wh2[..., 0] / wh2[..., 1]) - torch.atan(wh1[..., 0] / wh1[..., 1])
    v = (4 / math.pi**2) * aspect.square()
    with torch.no_grad():
        alpha = v / (1 - iou + v + eps)
    return alpha * v


def _ciou(boxes1: Tensor, boxes2: Tensor, eps: float) -> Tensor:
    """CIoU of broadcast boxes; ``eps`` as in :func:`_diou` and in ``alpha``'s denominator."""
    diou, iou = _diou(boxes1, boxes2, eps)
    return diou - _aspect_term(boxes1, boxes2, iou, eps)


def _loss_terms(boxes1: Tensor, boxes2: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """``(iou, enclosing_wh, union)`` of aligned boxes as torchvision's IoU losses define them.

    Unlike the IoU functions, the losses clamp nothing: the intersection is the product of the
    overlap sides where both are positive (no gradient at touching boxes), the union and the
    enclosing box sides are signed, so inverted boxes give torchvision's finite losses.
    """
    sides = torch.minimum(boxes1[..., 2:], boxes2[..., 2:]) - torch.maximum(
        boxes1[..., :2], boxes2[..., :2]
    )
    product = sides[..., 0] * sides[..., 1]
    inter = torch.where((sides > 0).all(-1), product, torch.zeros_like(product))
    union = box_area(boxes1) + box_area(boxes2) - inter
    return inter / (union + eps), _enclosing_sides(boxes1, boxes2), union


def _diou_loss(boxes1: Tensor, boxes2: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """``1 - DIoU`` and IoU of aligned boxes, as torchvision's ``distance_box_iou_loss``."""
    iou, enclosing_wh, _ = _loss_terms(boxes1, boxes2, eps)
    return 1 - iou + _centre_penalty(boxes1, boxes2, enclosing_wh, eps), iou


def generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise generalized IoU: IoU minus the enclosing box's share not covered by the union.

    Args:
        boxes1 (Tensor[..., N, 4]), boxes2 (Tensor[..., M, 4]): float or integer
            ``(x1, y1, x2, y2)``.

    Returns:
        Tensor[..., N, M]: GIoU in [-1, 1].
    """
    return _giou(*_pairs(*_pair_inputs(boxes1, boxes2)))


def distance_box_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7) -> Tensor:
    """Pairwise distance IoU: IoU minus squared centre distance over squared enclosing diagonal.

    Args:
        boxes1 (Tensor[..., N, 4]), boxes2 (Tensor[..., M, 4]): float or integer
            ``(x1, y1, x2, y2)``.
        eps: added to the squared diagonal to avoid 0 / 0.

    Returns:
        Tensor[..., N, M]: DIoU in [-1, 1].
    """
    return _diou(*_pairs(*_pair_inputs(boxes1, boxes2)), eps)[0]


def complete_box_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7) -> Tensor:
    """Pairwise complete IoU: DIoU minus an aspect-ratio consistency term ``alpha * v``.

    Args:
        boxes1 (Tensor[..., N, 4]), boxes2 (Tensor[..., M, 4]): float or integer
            ``(x1, y1, x2, y2)``.
        eps: stabilizes the divisions.

    Returns:
        Tensor[..., N, M]: CIoU.
    """
    return _ciou(*_pairs(*_pair_inputs(boxes1, boxes2)), eps)


def _aligned_inputs(boxes1: Tensor, boxes2: Tensor) -> tuple[Tensor, Tensor]:
    check_boxes(boxes1, "boxes1", integer=True)
    check_boxes(boxes2, "boxes2", integer=True)
    try:
        torch.broadcast_shapes(boxes1.shape, boxes2.shape)
    except RuntimeError:
        raise BoxShapeError(
            f"aligned IoU needs boxes of broadcastable shapes, got {tuple(boxes1.shape)} "
            f"and {tuple(boxes2.shape)}"
        ) from None
    return _upcast(boxes1), _upcast(boxes2)


def aligned_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU of ``boxes1[i]`` with ``boxes2[i]``: ``Tensor[..., 4]`` × 2 → ``Tensor[...]``."""
    boxes1, boxes2 = _aligned_inputs(boxes1, boxes2)
    inter, union = _inter_union(boxes1, boxes2)
    return inter / union


def aligned_generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """GIoU of ``boxes1[i]`` with ``boxes2[i]``: ``Tensor[..., 4]`` × 2 → ``Tensor[...]``."""
    return _giou(*_aligned_inputs(boxes1, boxes2))


def aligned_distance_box_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7) -> Tensor:
    """DIoU of ``boxes1[i]`` with ``boxes2[i]``: ``Tensor[..., 4]`` × 2 → ``Tensor[...]``."""
    return _diou(*_aligned_inputs(boxes1, boxes2), eps)[0]


def aligned_complete_box_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7) -> Tensor:
    """CIoU of ``boxes1[i]`` with ``boxes2[i]``: ``Tensor[..., 4]`` × 2 → ``Tensor[...]``."""
    return _ciou(*_aligned_inputs(boxes1, boxes2), eps)


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.mean() if loss.numel() else loss.sum() * 0.0
    raise BoxError(f"Invalid reduction={reduction!r}: use one of {_REDUCTIONS}")


def generalized_box_iou_loss(
    boxes1: Tensor, boxes2: Tensor, reduction: str = "none", eps: float = 1e-7
) -> Tensor:
    """``1 - GIoU`` of aligned boxes, differentiable in both inputs (torchvision's loss).

    Args:
        boxes1 (Tensor[..., 4]): predicted ``(x1, y1, x2, y2)``.
        boxes2 (Tensor[..., 4]): target ``(x1, y1, x2, y2)``, a shape that broadcasts with
            ``boxes1`` (e.g. ``Tensor[N, 4]`` and ``Tensor[4]``).
        reduction: ``"none"`` (``Tensor[...]``, the broadcast shape), ``"mean"`` or ``"sum"``
            (scalar; the mean of no boxes is 0).
        eps: added to the union and enclosing areas, so degenerate (zero-area) boxes give
            finite losses and gradients. Inverted boxes (``x2 < x1`` or ``y2 < y1``) give
            torchvision's (finite) values: their signed areas are used, not clamped.

    Float16, bfloat16 and integer boxes are computed in float32.
    """
    boxes1, boxes2 = _aligned_inputs(boxes1, boxes2)
    iou, enclosing_wh, union = _loss_terms(boxes1, boxes2, eps)
    enclosing = enclosing_wh[..., 0] * enclosing_wh[..., 1]
    return _reduce(1 - (iou - (enclosing - union) / (enclosing + eps)), reduction)


def distance_box_iou_loss(
    boxes1: Tensor, boxes2: Tensor, reduction: str = "none", eps: float = 1e-7
) -> Tensor:
    """``1 - DIoU`` of aligned boxes ``Tensor[..., 4]`` ``(x1, y1, x2, y2)``, differentiable.

    Arguments as in :func:`generalized_box_iou_loss`; ``eps`` is added to the union and to the
    squared diagonal of the enclosing box.
    """
    boxes1, boxes2 = _aligned_inputs(boxes1, boxes2)
    return _reduce(_diou_loss(boxes1, boxes2, eps)[0], reduction)


def complete_box_iou_loss(
    boxes1: Tensor, boxes2: Tensor, reduction: str = "none", eps: float = 1e-7
) -> Tensor:
    """``1 - CIoU`` of aligned boxes ``Tensor[..., 4]`` ``(x1, y1, x2, y2)``, differentiable.

    Arguments as in :func:`distance_box_iou_loss`. The trade-off weight ``alpha`` is treated as
    a constant in the backward pass, as in the CIoU paper and torchvision. (torchvision uses
    ``eps=1e-7`` in the DIoU part whatever ``eps`` is passed; here ``eps`` applies throughout,
    which gives the same losses with the default.)
    """
    boxes1, boxes2 = _aligned_inputs(boxes1, boxes2)
    loss, iou = _diou_loss(boxes1, boxes2, eps)
    return _reduce(loss + _aspect_term(boxes1, boxes2, iou, eps), reduction)


def mask_iou(masks1: Tensor, masks2: Tensor) -> Tensor:
    """Pairwise IoU of binary masks.

    Args:
        masks1 (Tensor[N, H, W]): masks (bool, or numbers where non-zero means inside).
        masks2 (Tensor[M, H, W]): masks of the same H, W.

    Returns:
        Tensor[N, M] float32: intersection / union of pixel sets; 0 where both masks are empty.
    """
    if masks1.ndim != 3 or masks2.ndim != 3 or masks1.shape[1:] != masks2.shape[1:]:
        raise BoxError(
            f"mask_iou needs masks1 [N, H, W] and masks2 [M, H, W], got "
            f"{tuple(masks1.shape)} and {tuple(masks2.shape)}"
        )
    flat1 = (masks1 != 0).flatten(1).float()
    flat2 = (masks2 != 0).flatten(1).float()
    inter = flat1 @ flat2.t()
    union = flat1.sum(1)[:, None] + flat2.sum(1)[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(inter))


giou_loss = generalized_box_iou_loss
diou_loss = distance_box_iou_loss
ciou_loss = complete_box_iou_loss
