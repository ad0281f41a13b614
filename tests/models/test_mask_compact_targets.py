"""Mask R-CNN trains on :class:`~cvkit.structures.CroppedMasks` targets exactly as on the dense
masks they hold: the same losses under the same sampling seed."""

import dataclasses
from pathlib import Path

import numpy as np
import torch

from cvkit.config import load_config
from cvkit.geometry import Geometry
from cvkit.models.build import build_model
from cvkit.structures import CroppedMasks, Target

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "mask_rcnn.yaml"
SIZE = 64


def _targets() -> list[Target]:
    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[:SIZE, :SIZE]
    targets = []
    for _ in range(2):
        centres = rng.uniform(12, SIZE - 12, (3, 2))
        radii = rng.uniform(5, 12, (3, 2))
        masks = np.stack(
            [
                ((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 <= 1
                for (cy, cx), (ry, rx) in zip(centres, radii, strict=True)
            ]
        ).astype(np.uint8)
        boxes = [
            [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]
            for rows, cols in (np.nonzero(mask) for mask in masks)
        ]
        targets.append(
            Target(
                torch.tensor(boxes, dtype=torch.float32),
                torch.tensor([0, 1, 2]),
                Geometry((SIZE, SIZE), (1.0, 1.0)),
                masks=torch.from_numpy(masks),
            )
        )
    return targets


def test_mask_rcnn_losses_on_cropped_masks_equal_the_dense_ones():
    options = {
        "fpn_channels": 8,
        "representation_size": 32,
        "mask_layers": "[8,8,8,8]",
        "mask_dim_reduced": 8,
        "rpn.pre_nms_top_n_train": 200,
        "rpn.post_nms_top_n_train": 100,
    }
    settings = [f"model.mask_rcnn.{key}={value}" for key, value in options.items()]
    config = load_config(CONFIG, [f"data.image_size={SIZE}", *settings])
    torch.manual_seed(0)
    model = build_model(config, 3).train()
    images = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    dense = _targets()
    compact = [
        dataclasses.replace(t, masks=CroppedMasks.from_dense(t.masks)).to("cpu") for t in dense
    ]
    losses = []
    for targets in (dense, compact):
        torch.manual_seed(5)  # the RoI sampling
        losses.append(model(images, targets))
    assert losses[0]["roi_mask"] > 0
    for name, value in losses[0].items():
        assert torch.equal(value, losses[1][name]), name
