"""``cvkit style``: Gatys style transfer of one content image from the command line."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
import torch

from cvkit.errors import ConfigError
from cvkit.images import read_image
from cvkit.style.gatys import GatysOptions, save_image, stylize, to_tensor
from cvkit.style.losses import PerceptualLoss, build_loss_network


def _resized(image: np.ndarray, long_side: int) -> np.ndarray:
    """``image`` scaled so its longer side is ``long_side`` pixels (area filter to shrink)."""
    height, width = image.shape[:2]
    scale = long_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    return cv2.resize(image, size, interpolation=interpolation)


def run_style(args: argparse.Namespace) -> int:
    """Stylise ``--content`` with the ``--style`` images; write ``--out`` (and its losses as
    ``<out>.json``)."""
    if args.size < 32:
        raise ConfigError(
            f"--size: need at least 32 pixels (VGG pools 4 times before relu5_1), got {args.size}"
        )
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    if args.vgg is None:
        print("no --vgg file: the loss network has random weights (texture-like results)")
    network = build_loss_network(args.vgg).to(device)
    content = to_tensor(_resized(read_image(args.content), args.size)).to(device)
    styles = [to_tensor(_resized(read_image(path), args.size)).to(device) for path in args.style]
    loss = PerceptualLoss(
        network,
        styles,
        style_blend=args.style_weights,
        content_weight=args.content_weight,
        style_weight=args.style_weight,
        tv_weight=args.tv_weight,
    )
    out = Path(args.out)
    options = GatysOptions(
        steps=args.steps,
        optimizer=args.optimizer,
        lr=args.lr,
        levels=args.levels,
        init=args.init,
        preserve_colour=args.preserve_colour,
        save_every=args.save_every,
        save_dir=out.with_suffix("") if args.save_every else None,
    )
    result = stylize(content, loss, options)
    save_image(result.image, out)
    out.with_suffix(".json").write_text(json.dumps(result.history))
    last = result.history[-1]
    print(f"wrote {out} ({len(result.history)} steps, final loss {last['total']:.4g})")
    return 0
