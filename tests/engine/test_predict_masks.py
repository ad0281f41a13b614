"""``cvkit predict`` with a Mask R-CNN: the ``.pt`` checkpoint (torch) and its ``.onnx`` export
(numpy runtime) give the same RLE masks in ``predictions.json``, and the drawings colour the
image inside the masks."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from cvkit.cli import main
from cvkit.config import config_to_dict, load_config
from cvkit.data.synthetic import render_sample
from cvkit.data.visualize import save_png
from cvkit.engine.checkpoint import save_checkpoint
from cvkit.export.commands import export_checkpoint
from cvkit.models.build import build_model

torch.set_num_threads(2)
CLASSES = ["circle", "rectangle", "triangle"]
CONFIG = Path(__file__).resolve().parents[2] / "configs" / "mask_rcnn.yaml"


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A seeded, untrained small Mask R-CNN (its detections and masks are arbitrary but
    deterministic); its mask logits are scaled up so that the masks have shape and few pixels
    sit near the 0.5 threshold."""
    small = (
        "fpn_channels=16 representation_size=32 mask_layers=[8,8] mask_dim_reduced=8 "
        "rpn.pre_nms_top_n_test=100 rpn.post_nms_top_n_test=30 topk_candidates=60"
    )
    settings = [f"model.mask_rcnn.{option}" for option in small.split()]
    config = load_config(CONFIG, ["data.image_size=96", "eval.max_det=10", *settings])
    torch.manual_seed(0)
    model = build_model(config, len(CLASSES)).eval()
    with torch.no_grad():
        model.mask_predictor.mask_fcn_logits.weight.mul_(20)
    path = tmp_path_factory.mktemp("weights") / "best.pt"
    save_checkpoint(
        {"model": model.state_dict(), "config": config_to_dict(config), "classes": CLASSES}, path
    )
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A wide (60x90) and a tall (100x70) synthetic shapes image."""
    folder = tmp_path_factory.mktemp("images")
    rendered = render_sample(np.random.default_rng(1), image_size=100).image
    save_png(np.ascontiguousarray(rendered[:60, 5:95]), folder / "wide.png")
    save_png(np.ascontiguousarray(rendered[:, 20:90]), folder / "tall.png")
    return folder


def _decode(rle: dict) -> np.ndarray:
    return mask_utils.decode({**rle, "counts": rle["counts"].encode("ascii")}).astype(bool)


def _iou(first: np.ndarray, second: np.ndarray) -> float:
    union = np.logical_or(first, second).sum()
    return 1.0 if union == 0 else float(np.logical_and(first, second).sum() / union)


def test_checkpoint_and_onnx_give_the_same_rle_masks_and_draw_them(weights, images, tmp_path):
    onnx_path = export_checkpoint(weights, tmp_path / "mask_rcnn.onnx").path
    outputs = {}
    for kind, path in {"pt": weights, "onnx": onnx_path}.items():
        out = tmp_path / kind
        command = ["predict", str(images), "--weights", str(path), "--out", str(out)]
        assert main([*command, "--score-threshold", "0"]) == 0
        outputs[kind] = json.loads((out / "predictions.json").read_text())
    sizes = []
    for pt_record, onnx_record in zip(outputs["pt"], outputs["onnx"], strict=True):
        original = cv2.imread(pt_record["image"])
        pt_dets, onnx_dets = pt_record["detections"], onnx_record["detections"]
        assert pt_dets and len(pt_dets) == len(onnx_dets)
        union = np.zeros(original.shape[:2], bool)
        for pt_det, onnx_det in zip(pt_dets, onnx_dets, strict=True):
            assert pt_det["label"] == onnx_det["label"]
            assert isinstance(pt_det["mask"]["counts"], str)
            assert pt_det["mask"]["size"] == list(original.shape[:2])
            pt_mask, onnx_mask = _decode(pt_det["mask"]), _decode(onnx_det["mask"])
            assert _iou(pt_mask, onnx_mask) > 0.99
            union |= pt_mask
            sizes.append(int(pt_mask.sum()))
        drawn = cv2.imread(str(tmp_path / "pt" / f"{Path(pt_record['image']).stem}.png"))
        assert drawn.shape == original.shape and union.any()
        inside = np.abs(drawn.astype(int) - original.astype(int)).sum(-1)[union]
        assert (inside > 0).mean() > 0.9  # blended: changed nearly everywhere inside the masks
    assert max(sizes) >= 100  # some masks are large enough for the IoU to mean something
