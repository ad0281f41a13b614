"""Feature maps: what named layers output for an image, captured with forward hooks, and
every backbone stage's output; drawn as grids of the most active channels."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torchvision.utils import make_grid

from cvkit.errors import InputError


def module_outputs(
    model: nn.Module, names: Sequence[str], run: Callable[[], Any]
) -> OrderedDict[str, Tensor]:
    """The output of each module in ``names`` while ``run()`` executes (forward hooks, removed
    afterwards); a module that runs several times keeps its first output.

    Args:
        model: the model whose ``named_modules()`` hold ``names``.
        names: module names, e.g. ``backbone.layer2``, ``extras.0``.
        run: calls the model (e.g. ``lambda: model(images)``).

    Returns:
        name → detached ``Tensor[B, C, h, w]`` (whatever the module returns), in ``names`` order.

    Raises:
        InputError: a name that is not a module of ``model``, or a module that did not run.
    """
    modules = dict(model.named_modules())
    unknown = [name for name in names if name not in modules]
    if unknown:
        shown = ", ".join(name for name in modules if name and name.count(".") <= 1)
        raise InputError(f"--layers {unknown}: not modules of the model; modules: {shown}")
    outputs: dict[str, Tensor] = {}

    def keeper(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if name not in outputs and isinstance(output, Tensor):
                outputs[name] = output.detach()

        return hook

    handles = [modules[name].register_forward_hook(keeper(name)) for name in names]
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    silent = [name for name in names if name not in outputs]
    if silent:
        raise InputError(f"--layers {silent}: these modules returned no tensor in the forward pass")
    return OrderedDict((name, outputs[name]) for name in names)


@torch.no_grad()
def stage_outputs(backbone: nn.Module, images: Tensor) -> OrderedDict[str, Tensor]:
    """Every stage of a cvkit backbone (``backbone.iter_stages``): name → ``Tensor[B, C, h, w]``."""
    return OrderedDict(backbone.iter_stages(images))


def feature_grid(feature: Tensor, channels: int = 16, scale: int | None = None) -> np.ndarray:
    """The ``channels`` channels of ``feature [C, h, w]`` with the highest mean activation, each
    min-max scaled and coloured with viridis, in a grid; each map is enlarged to at least
    64 pixels (or by ``scale``).

    Returns:
        ``uint8 [H, W, 3]`` RGB.
    """
    from matplotlib import colormaps

    maps = feature.detach().float().cpu()
    if maps.dim() != 3:
        raise InputError(f"feature_grid: expected a [C, h, w] map, got {tuple(maps.shape)}")
    order = maps.mean(dim=(1, 2)).argsort(descending=True)[:channels]
    maps = maps[order]
    low = maps.amin(dim=(1, 2), keepdim=True)
    span = maps.amax(dim=(1, 2), keepdim=True) - low
    maps = torch.where(span > 0, (maps - low) / span.clamp(min=1e-12), torch.zeros_like(maps))
    scale = scale or max(1, -(-64 // max(maps.shape[1:])))
    maps = maps.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)
    coloured = torch.from_numpy(colormaps["viridis"](maps.numpy())[..., :3]).permute(0, 3, 1, 2)
    grid = make_grid(
        coloured.float(), nrow=int(np.ceil(np.sqrt(len(maps)))), padding=2, pad_value=1.0
    )
    return (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
