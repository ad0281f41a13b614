"""Gatys et al. (2016): style transfer by optimising the pixels of one image.

The image starts from the content image (or noise) and is optimised with L-BFGS or Adam to
lower :class:`~cvkit.style.losses.PerceptualLoss`. With ``levels > 1`` it is first solved at
``1 / 2**(levels-1)`` of the size and each result, upsampled, starts the next finer level
(coarse-to-fine: large structures settle cheaply). ``preserve_colour`` keeps the content's
colours: the result's luminance with the content's chroma (YCbCr), applied at the end.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from cvkit.errors import ConfigError
from cvkit.style.losses import PerceptualLoss

# ITU-R BT.601 RGB → YCbCr (full range, 0..1 scale, chroma centred on 0)
_YCBCR = torch.tensor(
    [[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]]
)


@dataclass
class GatysOptions:
    """Settings of :func:`stylize`.

    Attributes:
        steps: optimiser steps per level; each evaluates the loss and its gradient once
            (L-BFGS runs one iteration per step without line search, as neural-style does).
        optimizer: ``lbfgs`` or ``adam``.
        lr: step size (default 1.0 for L-BFGS, 0.02 for Adam on the 0..1 pixel scale).
        levels: coarse-to-fine levels (1: full size only).
        init: start from the ``content`` image or from uniform ``noise``.
        preserve_colour: keep the content image's chroma.
        save_every: write the current image every N steps into ``save_dir`` (0: never).
        save_dir: folder for those PNGs (``level{L}_step{S}.png``).
        progress: show a tqdm bar with the losses.
        seed: seeds the noise start.
    """

    steps: int = 300
    optimizer: Literal["lbfgs", "adam"] = "lbfgs"
    lr: float | None = None
    levels: int = 1
    init: Literal["content", "noise"] = "content"
    preserve_colour: bool = False
    save_every: int = 0
    save_dir: Path | None = None
    progress: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.optimizer not in ("lbfgs", "adam"):
            raise ConfigError(f"style: optimizer must be lbfgs or adam, got {self.optimizer!r}")
        if self.init not in ("content", "noise"):
            raise ConfigError(f"style: init must be content or noise, got {self.init!r}")
        if self.steps < 1 or self.levels < 1:
            raise ConfigError(f"style: steps and levels must be ≥ 1 ({self.steps}, {self.levels})")
        if self.save_every > 0 and self.save_dir is None:
            raise ConfigError("style: save_every needs a save_dir")


@dataclass
class GatysResult:
    """The stylised image ``Tensor[1, 3, H, W]`` in 0..1 and one loss row per step."""

    image: Tensor
    history: list[dict[str, float]] = field(default_factory=list)


def to_tensor(image: np.ndarray) -> Tensor:
    """RGB ``uint8 [H, W, 3]`` → ``float32 [1, 3, H, W]`` in 0..1."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255


def to_uint8(image: Tensor) -> np.ndarray:
    """``Tensor[1, 3, H, W]`` in 0..1 → RGB ``uint8 [H, W, 3]`` (rounded, clipped)."""
    pixels = (image[0].detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
    return pixels.permute(1, 2, 0).numpy()


def preserve_colour(stylised: Tensor, content: Tensor) -> Tensor:
    """The luminance of ``stylised`` with the chroma of ``content`` (both ``[B, 3, H, W]``
    in 0..1, same size), clipped to 0..1."""
    matrix = _YCBCR.to(stylised)
    luma = torch.einsum("ij,bjhw->bihw", matrix, stylised)[:, :1]
    chroma = torch.einsum("ij,bjhw->bihw", matrix, content)[:, 1:]
    rgb = torch.einsum("ij,bjhw->bihw", torch.linalg.inv(matrix), torch.cat([luma, chroma], 1))
    return rgb.clamp(0, 1)


def _level_sizes(height: int, width: int, levels: int) -> list[tuple[int, int]]:
    """Image sizes from coarsest to full, halving per level; coarse sides stay ≥ 32 px (VGG
    pools four times before ``relu5_1``)."""
    return [
        (
            max(min(32, height), round(height / 2**level)),
            max(min(32, width), round(width / 2**level)),
        )
        for level in range(levels - 1, -1, -1)
    ]


def _optimizer(image: Tensor, options: GatysOptions) -> torch.optim.Optimizer:
    if options.optimizer == "lbfgs":
        lr = 1.0 if options.lr is None else options.lr
        # the caller decides the number of steps: no early stop on small changes
        return torch.optim.LBFGS(
            [image],
            lr=lr,
            max_iter=1,
            tolerance_grad=0.0,
            tolerance_change=0.0,
            line_search_fn=None,
        )
    return torch.optim.Adam([image], lr=0.02 if options.lr is None else options.lr)


def _gradient_scale(image: Tensor, loss: PerceptualLoss, content_target: Tensor) -> float:
    """``1 / max |∂loss/∂pixel|`` at ``image``: the factor that gives L-BFGS a unit-sized
    gradient.

    Scaling the objective leaves its minimiser unchanged, but L-BFGS has absolute thresholds
    (its curvature test ``yᵀs > 1e-10`` skips every Hessian update otherwise): with losses
    averaged over many pixels and small weights the raw gradients are far too small for them,
    and L-BFGS would creep along the gradient without ever building its Hessian estimate.
    """
    probe = image.detach().clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(sum(loss(probe, content_target).values()), probe)
    peak = float(gradient.abs().max())
    return 1.0 / peak if peak > 0 else 1.0


def _step(
    optimizer: torch.optim.Optimizer,
    image: Tensor,
    loss: PerceptualLoss,
    content_target: Tensor,
    scale: float = 1.0,
) -> dict[str, float]:
    """One optimiser step on ``scale * loss``; returns the (unscaled) losses at the image
    the step started from."""
    first: dict[str, float] = {}

    def closure() -> Tensor:
        optimizer.zero_grad()
        terms = loss(image, content_target)
        total = sum(terms.values())
        (total * scale).backward()
        if not first:
            first.update({key: float(value.detach()) for key, value in terms.items()})
            first["total"] = float(total.detach())
        return total * scale

    optimizer.step(closure)
    with torch.no_grad():
        image.clamp_(0, 1)
    return first


def stylize(
    content: Tensor,
    loss: PerceptualLoss,
    options: GatysOptions | None = None,
    on_step: Callable[[int, int, Tensor], None] | None = None,
) -> GatysResult:
    """Optimise an image to have ``content``'s content and ``loss``'s style.

    Args:
        content (Tensor[1, 3, H, W]): RGB in 0..1, on the loss network's device.
        loss: the perceptual loss (style targets already inside).
        options: see :class:`GatysOptions`.
        on_step: called as ``on_step(level, step, image)`` after every step.

    Returns:
        :class:`GatysResult`: the image (``[1, 3, H, W]`` in 0..1) and per step the losses
        before it (``level``, ``step``, ``content``, ``style``, ``tv``, ``total``).
    """
    options = options or GatysOptions()
    history: list[dict[str, float]] = []
    image = content
    for level, size in enumerate(
        _level_sizes(content.shape[-2], content.shape[-1], options.levels)
    ):
        target = F.interpolate(content, size=size, mode="bilinear", antialias=True)
        if level > 0:
            start = F.interpolate(image, size=size, mode="bilinear")
        elif options.init == "noise":
            generator = torch.Generator().manual_seed(options.seed)
            start = torch.rand(target.shape, generator=generator).to(target)
        else:
            start = target
        image = start.detach().clone().clamp(0, 1).requires_grad_(True)
        content_target = loss.content_features(target)
        optimizer = _optimizer(image, options)
        scale = (
            _gradient_scale(image, loss, content_target) if options.optimizer == "lbfgs" else 1.0
        )
        bar = tqdm(
            range(options.steps),
            desc=f"style {size[0]}x{size[1]}",
            disable=not options.progress,
            leave=False,
        )
        for step in bar:
            losses = _step(optimizer, image, loss, content_target, scale)
            history.append({"level": level, "step": step, **losses})
            bar.set_postfix({key: f"{losses[key]:.3g}" for key in ("content", "style", "tv")})
            if (
                options.save_dir is not None
                and options.save_every
                and (step + 1) % options.save_every == 0
            ):
                save_image(image, options.save_dir / f"level{level}_step{step + 1:04d}.png")
            if on_step is not None:
                on_step(level, step, image.detach())
    result = image.detach()
    if options.preserve_colour:
        result = preserve_colour(result, content)
    return GatysResult(result, history)


def save_image(image: Tensor, path: Path) -> Path:
    """Write ``Tensor[1, 3, H, W]`` in 0..1 as an 8-bit RGB image file; returns ``path``."""
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(to_uint8(image), cv2.COLOR_RGB2BGR)):
        raise ConfigError(f"{path}: could not write the image (unknown suffix or folder?)")
    return path
