"""Anchor (prior / default box) generators: SSD multibox priors, multi-level grids, YOLO grids.

Conventions shared by every generator here:

- an aspect ratio is ``width / height`` of the anchor;
- anchors of a feature map are laid out row-major over cells, then anchor by anchor within a
  cell: anchor ``a`` of cell ``(row, col)`` is at index ``(row * W + col) * A + a``;
- the output is ``Tensor[H * W * A, 4]`` ``(x1, y1, x2, y2)``; :func:`multibox_prior` returns
  normalized coordinates (fractions of the image width and height) unless given the image size,
  the others return pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from cvkit.ops.boxes import BoxError


def _check_sizes(feature_size: tuple[int, int], sizes: Sequence, ratios: Sequence) -> None:
    height, width = feature_size
    if height <= 0 or width <= 0:
        raise BoxError(f"feature_size must be positive (height, width), got {feature_size}")
    if not sizes or not ratios:
        raise BoxError(f"anchor sizes and ratios must be non-empty, got {sizes} and {ratios}")
    if any(s <= 0 for s in sizes) or any(r <= 0 for r in ratios):
        raise BoxError(f"anchor sizes and ratios must be positive, got {sizes} and {ratios}")


def _place(centres: Tensor, shapes: Tensor) -> Tensor:
    """Anchors ``Tensor[C * A, 4]`` from cell centres ``[C, 2]`` and anchor (w, h) ``[A, 2]``."""
    half = shapes / 2
    boxes = torch.cat(
        [centres[:, None, :] - half[None, :, :], centres[:, None, :] + half[None, :, :]], dim=-1
    )
    return boxes.reshape(-1, 4)


def _cell_centres(
    feature_size: tuple[int, int],
    step: tuple[float, float],
    offset: float,
    device: torch.device | str | None,
    dtype: torch.dtype,
) -> Tensor:
    """Centres ``Tensor[H * W, 2]`` ``(x, y)`` of ``(col + offset) * step_x``, row-major."""
    height, width = feature_size
    ys = (torch.arange(height, device=device, dtype=dtype) + offset) * step[1]
    xs = (torch.arange(width, device=device, dtype=dtype) + offset) * step[0]
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], dim=1)


def multibox_prior(
    feature_size: tuple[int, int],
    sizes: Sequence[float],
    ratios: Sequence[float],
    image_size: tuple[int, int] | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """SSD-style priors: ``len(sizes) + len(ratios) - 1`` anchors centred on every cell.

    A cell gets every size with the first ratio, then the first size with each other ratio:
    ``(s_1, r_1), ..., (s_n, r_1), (s_1, r_2), ..., (s_1, r_m)``. A size ``s`` is a fraction
    of the image height; an anchor of size ``s`` and ratio ``r`` (width / height) is
    ``s * sqrt(r) * H_img`` pixels wide and ``s / sqrt(r) * H_img`` pixels high, so ratio 1
    anchors are square in pixels. Cell ``(row, col)`` is centred at
    ``((col + 0.5) / W, (row + 0.5) / H)`` in normalized coordinates; the image is assumed to
    have the feature map's aspect ratio.

    Args:
        feature_size: ``(H, W)`` cells of the feature map.
        sizes: n anchor sizes, fractions of the image height, e.g. ``[0.75, 0.5, 0.25]``.
        ratios: m aspect ratios (width / height), e.g. ``[1, 2, 0.5]``.
        image_size: ``(height, width)`` in pixels; when given the anchors are returned in
            pixels, otherwise normalized.

    Returns:
        Tensor[H * W * (n + m - 1), 4]: ``(x1, y1, x2, y2)`` normalized (or pixels), not
        clipped, so anchors of border cells may leave [0, 1].
    """
    _check_sizes(feature_size, sizes, ratios)
    height, width = feature_size
    size_t = torch.tensor(list(sizes), dtype=torch.float64)
    ratio_t = torch.tensor(list(ratios), dtype=torch.float64)
    shape_sizes = torch.cat([size_t, size_t[:1].expand(len(ratios) - 1)])
    shape_ratios = torch.cat([ratio_t[:1].expand(len(sizes)), ratio_t[1:]])
    shapes = torch.stack(
        [shape_sizes * shape_ratios.sqrt() * height / width, shape_sizes / shape_ratios.sqrt()],
        dim=1,
    ).to(device=device, dtype=dtype)
    centres = _cell_centres(feature_size, (1.0 / width, 1.0 / height), 0.5, device, dtype)
    anchors = _place(centres, shapes)
    if image_size is not None:
        img_h, img_w = image_size
        anchors = anchors * anchors.new_tensor([img_w, img_h, img_w, img_h])
    return anchors


def ssd_anchors(
    feature_sizes: Sequence[tuple[int, int]],
    sizes_per_level: Sequence[Sequence[float]],
    ratios: Sequence[float],
    image_size: tuple[int, int],
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """SSD priors of all levels in pixels, level after level (see :func:`multibox_prior`).

    Args:
        feature_sizes: ``(H_l, W_l)`` per level.
        sizes_per_level: anchor sizes (fractions of the image height) per level.
        ratios: aspect ratios (width / height) shared by all levels.
        image_size: ``(height, width)`` of the network input in pixels.

    Returns:
        Tensor[sum_l H_l * W_l * (n_l + m - 1), 4]: ``(x1, y1, x2, y2)`` pixels.
    """
    if len(feature_sizes) != len(sizes_per_level):
        raise BoxError(
            f"{len(feature_sizes)} feature levels but {len(sizes_per_level)} lists of sizes"
        )
    return torch.cat(
        [
            multibox_prior(size, sizes, ratios, image_size, device, dtype)
            for size, sizes in zip(feature_sizes, sizes_per_level, strict=True)
        ]
    )


def grid_anchors(
    feature_sizes: Sequence[tuple[int, int]],
    strides: Sequence[int | tuple[int, int]],
    sizes_per_level: Sequence[Sequence[float]],
    ratios: Sequence[float],
    offset: float = 0.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    rounded: bool = False,
) -> list[Tensor]:
    """Multi-level anchors for RPN / FPN heads: every size × ratio at every cell of every level.

    An anchor of size ``s`` (pixels) and ratio ``r`` (width / height) is ``s * sqrt(r)`` wide
    and ``s / sqrt(r)`` high, so its area is ``s²``. Within a cell anchors go ratio by ratio,
    size by size. With ``offset=0`` anchors are centred on the cells' top-left corners
    ``(col * stride, row * stride)`` (torchvision's ``AnchorGenerator``); ``offset=0.5``
    centres them on the cells.

    Args:
        feature_sizes: ``(H_l, W_l)`` per level.
        strides: stride of each level in input pixels, an int or ``(stride_y, stride_x)``.
        sizes_per_level: anchor sizes in pixels per level.
        ratios: aspect ratios (width / height), shared by all levels.
        offset: centre offset in cells.
        rounded: round each anchor's half width and half height to whole pixels, as
            torchvision's ``AnchorGenerator`` does (its cell anchors are rounded), so that
            ratios with irrational square roots give torchvision's anchors exactly.

    Returns:
        list of Tensor[H_l * W_l * A_l, 4]: ``(x1, y1, x2, y2)`` pixels per level.
    """
    if not len(feature_sizes) == len(strides) == len(sizes_per_level):
        raise BoxError(
            f"grid_anchors needs one stride and one size list per level, got "
            f"{len(feature_sizes)} levels, {len(strides)} strides, {len(sizes_per_level)} sizes"
        )
    levels = []
    for feature_size, stride, sizes in zip(feature_sizes, strides, sizes_per_level, strict=True):
        _check_sizes(feature_size, sizes, ratios)
        stride_y, stride_x = (stride, stride) if isinstance(stride, int | float) else stride
        size_t = torch.tensor(list(sizes), dtype=torch.float64)
        root = torch.tensor(list(ratios), dtype=torch.float64).sqrt()
        shapes = torch.stack(
            [(root[:, None] * size_t).reshape(-1), (size_t / root[:, None]).reshape(-1)], dim=1
        )
        if rounded:
            shapes = 2 * (shapes / 2).round()
        shapes = shapes.to(device=device, dtype=dtype)
        centres = _cell_centres(feature_size, (stride_x, stride_y), offset, device, dtype)
        levels.append(_place(centres, shapes))
    return levels


def yolo_anchors(
    feature_size: tuple[int, int],
    stride: int,
    anchor_sizes: Sequence[tuple[float, float]],
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """YOLO grid anchors: each ``(width, height)`` prior centred on every cell of one level.

    A YOLO head predicts offsets relative to its cell and prior: the cell of anchor ``k`` is
    ``(x1 + x2) / 2 / stride - 0.5`` (column) and likewise for the row; its prior size is
    ``x2 - x1`` by ``y2 - y1``.

    Args:
        feature_size: ``(H, W)`` cells.
        stride: input pixels per cell.
        anchor_sizes: ``(width, height)`` priors in pixels, e.g. ``[(10, 13), (16, 30), (33, 23)]``.

    Returns:
        Tensor[H * W * A, 4]: ``(x1, y1, x2, y2)`` pixels.
    """
    flat = [v for wh in anchor_sizes for v in wh]
    if not anchor_sizes or any(len(wh) != 2 for wh in anchor_sizes) or min(flat) <= 0:
        raise BoxError(f"anchor_sizes must be positive (width, height) pairs, got {anchor_sizes}")
    if stride <= 0:
        raise BoxError(f"stride must be positive, got {stride}")
    _check_sizes(feature_size, [1.0], [1.0])
    shapes = torch.tensor([list(wh) for wh in anchor_sizes], device=device, dtype=dtype)
    centres = _cell_centres(feature_size, (stride, stride), 0.5, device, dtype)
    return _place(centres, shapes)


def default_ssd_sizes(
    num_levels: int, min_scale: float = 0.2, max_scale: float = 0.9
) -> list[list[float]]:
    """Per-level SSD sizes ``[s_k, sqrt(s_k * s_{k+1})]``.

    ``s_1 .. s_L`` are spaced linearly from ``min_scale`` to ``max_scale`` and ``s_{L+1} = 1``.

    Returns:
        ``num_levels`` lists of two sizes (fractions of the image height).
    """
    if num_levels < 1:
        raise BoxError(f"num_levels must be >= 1, got {num_levels}")
    if num_levels == 1:
        scales = [min_scale, max_scale]
    else:
        step = (max_scale - min_scale) / (num_levels - 1)
        scales = [min_scale + step * k for k in range(num_levels)] + [1.0]
    return [[scales[k], math.sqrt(scales[k] * scales[k + 1])] for k in range(num_levels)]
