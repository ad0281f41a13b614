"""Handlers of ``cvkit viz filters | features | cam`` (see :mod:`cvkit.cli`).

Each loads a ``.pt`` checkpoint (the model is rebuilt from it alone) and writes PNGs to
``--out``. Images go through the eval pre-processing of the checkpoint's config (``data.resize``
to ``data.image_size``, ``data.mean``/``data.std``), as ``cvkit predict`` does.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cvkit.config import Config
from cvkit.data.visualize import draw_detections, save_png
from cvkit.engine.checkpoint import load_checkpoint
from cvkit.errors import InputError
from cvkit.images import read_image
from cvkit.models.loading import load_model


def load_for_insight(weights: str | Path) -> tuple[torch.nn.Module, Config, list[str]]:
    """The checkpoint's model (CPU, eval mode), its config and its class names."""
    checkpoint = load_checkpoint(weights)
    model = load_model(checkpoint, "cpu", weights)
    return model, Config.model_validate(checkpoint["config"]), list(checkpoint["classes"])


def prepare(image: np.ndarray, config: Config) -> tuple[torch.Tensor, Any]:
    """An RGB ``uint8 [h, w, 3]`` image → the network input ``Tensor[1, 3, S, S]`` and its
    :class:`~cvkit.geometry.Geometry` (:func:`cvkit.runtime.preprocess.preprocess`)."""
    from cvkit.runtime.preprocess import preprocess

    data = config.data
    batch, geometries = preprocess(
        [image], (data.image_size, data.image_size), data.resize, data.mean, data.std
    )
    return torch.from_numpy(batch), geometries[0]


def filters(args: argparse.Namespace) -> int:
    """``cvkit viz filters``: the first (or ``--layer``) convolution's filters as a grid."""
    from cvkit.insight.filters import filter_grid, find_conv

    model, _, _ = load_for_insight(args.weights)
    name, conv = find_conv(model, args.layer)
    path = save_png(filter_grid(conv.weight), Path(args.out) / f"filters_{name}.png")
    print(f"{name}: {tuple(conv.weight.shape)} filters -> {path}")
    return 0


def features(args: argparse.Namespace) -> int:
    """``cvkit viz features``: feature maps of ``--layers`` (default: every backbone stage)."""
    from cvkit.insight.features import feature_grid, module_outputs, stage_outputs

    model, config, _ = load_for_insight(args.weights)
    images, _ = prepare(read_image(args.image), config)
    if args.layers:
        with torch.no_grad():
            maps = module_outputs(model, args.layers, lambda: model(images))
    elif hasattr(getattr(model, "backbone", None), "iter_stages"):
        maps = stage_outputs(model.backbone, images)
    else:
        raise InputError(f"{args.weights}: the model has no cvkit backbone; name --layers")
    stem = Path(args.image).stem
    for name, output in maps.items():
        if output.dim() != 4:
            raise InputError(f"{name}: output {tuple(output.shape)} is not a [B, C, h, w] map")
        path = save_png(
            feature_grid(output[0], args.channels), Path(args.out) / f"features_{stem}_{name}.png"
        )
        print(f"{name}: {tuple(output.shape[1:])} -> {path}")
    return 0


def cam(args: argparse.Namespace) -> int:
    """``cvkit viz cam``: a class activation map overlaid on the image (and the explained
    detections drawn, for a detector)."""
    from cvkit.insight.cam import (
        compute_cam,
        default_layers,
        model_targets,
        overlay,
        resolve_layers,
    )

    model, config, classes = load_for_insight(args.weights)
    image = read_image(args.image)
    images, geometry = prepare(image, config)
    wrapped, target, label, detections = model_targets(
        model, images, classes, args.class_name, args.box, args.score_threshold
    )
    layers = resolve_layers(model, args.layer or default_layers(model))
    heat = overlay(image, compute_cam(wrapped, images, layers, target, args.method), geometry)
    if detections is not None:
        shown = detections.to_original(geometry)
        heat = draw_detections(
            heat, shown.boxes.numpy(), shown.labels.numpy(), classes, scores=shown.scores.numpy()
        )
    path = save_png(heat, Path(args.out) / f"cam_{args.method}_{Path(args.image).stem}_{label}.png")
    print(f"{args.method} for {label} at {args.layer or default_layers(model)} -> {path}")
    return 0
