"""``cvkit predict`` with a segmenter: the same masks from the ``.pt`` checkpoint (torch) and its
``.onnx`` export (numpy runtime), colour overlays that leave the background untouched."""

import json

import cv2
import numpy as np
import pytest
import torch

from cvkit.cli import main
from cvkit.config import config_to_dict, load_config
from cvkit.data.synthetic import render_sample
from cvkit.engine.checkpoint import save_checkpoint, weights_task
from cvkit.export.commands import export_checkpoint
from cvkit.models.build import build_model
from cvkit.runtime.results import class_colour, overlay_mask

torch.set_num_threads(2)
CLASSES = ["background", "circle", "rectangle", "triangle"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    config = load_config(
        None,
        ["task=segment", "model.name=fcn", "model.backbone=resnet18_tiny", "data.image_size=64"],
    )
    torch.manual_seed(0)
    model = build_model(config, len(CLASSES))
    with torch.no_grad():  # give the untrained model distinct classes in different places
        model.train()(torch.randn(4, 3, 64, 64))
        for score in model.skip_scores:
            score.weight.normal_(0, 0.2)
    path = tmp_path_factory.mktemp("weights") / "best.pt"
    state = model.eval().state_dict()
    save_checkpoint({"model": state, "config": config_to_dict(config), "classes": CLASSES}, path)
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Two non-square crops (40×90 and 100×50) of one synthetic shapes image."""
    folder = tmp_path_factory.mktemp("images")
    bgr = cv2.cvtColor(
        render_sample(np.random.default_rng(0), image_size=100).image, cv2.COLOR_RGB2BGR
    )
    cv2.imwrite(str(folder / "wide.png"), bgr[:40, :90])
    cv2.imwrite(str(folder / "tall.png"), bgr[:, 50:])
    return folder


def test_overlay_blends_only_foreground_pixels():
    image = np.full((2, 3, 3), 100, np.uint8)
    mask = np.array([[0, 1, 2], [0, 0, 1]])
    drawn = overlay_mask(image, mask, alpha=0.5)
    assert np.array_equal(drawn[mask == 0], image[mask == 0])
    expected = np.round(0.5 * 100 + 0.5 * class_colour(2).astype(np.float32)).astype(np.uint8)
    assert np.array_equal(drawn[0, 2], expected)
    assert not np.array_equal(class_colour(1), class_colour(2))


def test_checkpoint_and_onnx_give_the_same_masks(weights, images, tmp_path):
    onnx_path = export_checkpoint(weights, tmp_path / "fcn.onnx").path
    assert weights_task(weights) == weights_task(onnx_path) == "segment"
    outputs = {}
    for kind, path in {"pt": weights, "onnx": onnx_path}.items():
        out = tmp_path / kind
        assert main(["predict", str(images), "--weights", str(path), "--out", str(out)]) == 0
        records = json.loads((out / "predictions.json").read_text())
        assert [r["image"] for r in records] == [str(images / "tall.png"), str(images / "wide.png")]
        outputs[kind] = {r["image"]: cv2.imread(r["mask"], cv2.IMREAD_UNCHANGED) for r in records}
        for record in records:
            original = cv2.imread(record["image"])
            overlay = cv2.imread(record["overlay"])
            mask = outputs[kind][record["image"]]
            assert overlay.shape == original.shape and mask.shape == original.shape[:2]
            assert np.array_equal(overlay[mask == 0], original[mask == 0])
            assert set(record["classes"]) <= set(CLASSES)
            assert sum(record["classes"].values()) == pytest.approx(1.0, abs=1e-4)
    for name, mask in outputs["pt"].items():
        assert len(np.unique(mask)) > 1
        assert (mask == outputs["onnx"][name]).mean() > 0.999
