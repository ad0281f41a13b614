"""Box coding: anchor-relative regression targets and their inverse.

A box ``(x1, y1, x2, y2)`` is coded against an anchor of centre ``(ax, ay)`` and size
``(aw, ah)`` as ``((cx - ax) / aw, (cy - ay) / ah, log(w / aw), log(h / ah))``, then
normalized as ``(code - means) / stds``. The SSD "variance" form is ``stds = (v0, v0, v1, v1)``
with ``(v0, v1) = (0.1, 0.2)`` (:func:`stds_from_variances`); the Faster R-CNN "weights" form
multiplies by ``(wx, wy, ww, wh) = (10, 10, 5, 5)``, i.e. ``stds = 1 / weights``
(:func:`stds_from_weights`). Decoding clamps the log-size terms so ``exp`` cannot overflow.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from cvkit.ops.boxes import BoxError, check_boxes

SSD_VARIANCES = (0.1, 0.2)
RCNN_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
DEFAULT_MAX_LOG_SCALE = math.log(1000.0 / 16)
"""Largest log size ratio decoded: a box at most 62.5 times its anchor (torchvision's limit)."""


def stds_from_variances(variances: Sequence[float] = SSD_VARIANCES) -> tuple[float, ...]:
    """SSD ``(center_variance, size_variance)`` → the four stds ``(v0, v0, v1, v1)``."""
    if len(variances) != 2 or min(variances) <= 0:
        raise BoxError(f"variances must be two positive numbers, got {variances}")
    return (variances[0], variances[0], variances[1], variances[1])


def stds_from_weights(weights: Sequence[float] = RCNN_WEIGHTS) -> tuple[float, ...]:
    """Faster R-CNN weights ``(wx, wy, ww, wh)`` → the four stds ``1 / weights``."""
    if len(weights) != 4 or min(weights) <= 0:
        raise BoxError(f"weights must be four positive numbers, got {weights}")
    return tuple(1.0 / w for w in weights)


def _centre_size(boxes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    widths = boxes[..., 2] - boxes[..., 0]
    heights = boxes[..., 3] - boxes[..., 1]
    return boxes[..., 0] + 0.5 * widths, boxes[..., 1] + 0.5 * heights, widths, heights


def _norm(stats: Sequence[float], name: str, like: Tensor) -> Tensor:
    if len(stats) != 4:
        raise BoxError(f"{name} must have 4 values (x, y, w, h), got {stats}")
    return like.new_tensor(list(stats))


def encode_boxes(
    boxes: Tensor,
    anchors: Tensor,
    means: Sequence[float] = (0.0, 0.0, 0.0, 0.0),
    stds: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
) -> Tensor:
    """Regression targets of ``boxes`` relative to ``anchors``.

    Args:
        boxes (Tensor[..., 4]): target ``(x1, y1, x2, y2)``.
        anchors (Tensor[..., 4]): ``(x1, y1, x2, y2)``, broadcastable to ``boxes``; positive
            width and height.
        means, stds: normalization of ``(dx, dy, dw, dh)``.

    Returns:
        Tensor[..., 4]: ``(dx, dy, dw, dh)``.
    """
    check_boxes(boxes)
    check_boxes(anchors, "anchors")
    bx, by, bw, bh = _centre_size(boxes)
    ax, ay, aw, ah = _centre_size(anchors)
    codes = torch.stack(
        [(bx - ax) / aw, (by - ay) / ah, torch.log(bw / aw), torch.log(bh / ah)], dim=-1
    )
    return (codes - _norm(means, "means", codes)) / _norm(stds, "stds", codes)


def decode_boxes(
    deltas: Tensor,
    anchors: Tensor,
    means: Sequence[float] = (0.0, 0.0, 0.0, 0.0),
    stds: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
    max_log_scale: float = DEFAULT_MAX_LOG_SCALE,
) -> Tensor:
    """Boxes from regression outputs: the inverse of :func:`encode_boxes`.

    Args:
        deltas (Tensor[..., 4]): ``(dx, dy, dw, dh)``, e.g. ``[B, A, 4]``.
        anchors (Tensor[..., 4]): ``(x1, y1, x2, y2)``, broadcastable, e.g. ``[A, 4]``.
        means, stds: the normalization used when encoding.
        max_log_scale: ``dw`` and ``dh`` (after de-normalizing) are clamped to at most this
            before ``exp``, keeping sizes finite for wild predictions.

    Returns:
        Tensor[..., 4]: ``(x1, y1, x2, y2)`` in the units of ``anchors``.
    """
    if deltas.shape[-1] != 4:
        raise BoxError(f"deltas must have shape [..., 4], got {tuple(deltas.shape)}")
    check_boxes(anchors, "anchors")
    codes = deltas * _norm(stds, "stds", deltas) + _norm(means, "means", deltas)
    ax, ay, aw, ah = _centre_size(anchors)
    cx = codes[..., 0] * aw + ax
    cy = codes[..., 1] * ah + ay
    half_w = 0.5 * torch.exp(codes[..., 2].clamp(max=max_log_scale)) * aw
    half_h = 0.5 * torch.exp(codes[..., 3].clamp(max=max_log_scale)) * ah
    return torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], dim=-1)
