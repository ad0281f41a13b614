"""A convolution's filters as one image: each filter scaled to [0, 1] on its own, enlarged
and laid out in a grid (:func:`torchvision.utils.make_grid`)."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn
from torchvision.utils import make_grid

from cvkit.errors import InputError


def find_conv(model: nn.Module, name: str | None = None) -> tuple[str, nn.Conv2d]:
    """The ``Conv2d`` module called ``name`` (``model.named_modules()`` names), or the first
    one in module order.

    Raises:
        InputError: no such module, it is not a ``Conv2d``, or the model has none.
    """
    convs = [(key, m) for key, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise InputError(f"{type(model).__name__} has no Conv2d layer")
    if name is None:
        return convs[0]
    found = dict(convs)
    if name not in found:
        shown = ", ".join(key for key, _ in convs[:12])
        raise InputError(f"--layer {name!r}: not a Conv2d of the model; convolutions: {shown} ...")
    return name, found[name]


def filter_grid(
    weight: Tensor, scale: int = 8, columns: int | None = None, padding: int = 1
) -> np.ndarray:
    """The filters of a convolution weight as an RGB image.

    Each filter ``weight[o]`` is min-max scaled to [0, 1] over all its values (a constant
    filter becomes 0.5); filters with three input channels are shown in colour (channel order
    RGB, as the images cvkit feeds), others as the mean over their input channels in grey.
    Every kernel cell becomes a ``scale × scale`` block; cells sit in a grid of ``columns``
    (default ``ceil(sqrt(O))``) with ``padding`` white pixels between them.

    Args:
        weight: ``Tensor[O, I, kh, kw]``.

    Returns:
        ``uint8 [H, W, 3]`` with ``H = rows * (kh * scale + padding) + padding``.
    """
    if weight.dim() != 4:
        raise InputError(
            f"filter_grid: expected a [O, I, kh, kw] weight, got {tuple(weight.shape)}"
        )
    filters = weight.detach().float().cpu()
    if filters.shape[1] != 3:
        filters = filters.mean(dim=1, keepdim=True).expand(-1, 3, -1, -1)
    low = filters.amin(dim=(1, 2, 3), keepdim=True)
    span = filters.amax(dim=(1, 2, 3), keepdim=True) - low
    filters = torch.where(
        span > 0, (filters - low) / span.clamp(min=1e-12), torch.full_like(filters, 0.5)
    )
    filters = filters.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    columns = columns or math.ceil(math.sqrt(len(filters)))
    grid = make_grid(filters, nrow=columns, padding=padding, pad_value=1.0)
    return (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
