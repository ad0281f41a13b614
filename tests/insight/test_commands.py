"""``cvkit viz filters | features | cam`` on checkpoints of an SSD and a classifier."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from cvkit.cli import main
from cvkit.config import config_to_dict, load_config
from cvkit.engine.checkpoint import save_checkpoint
from cvkit.insight.filters import filter_grid
from cvkit.models.build import build_model

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
CLASSES = ["circle", "rectangle", "triangle"]


def checkpoint(tmp_path, name, *overrides):
    """A checkpoint of the config's freshly built model (no training needed to look inside)."""
    config = load_config(CONFIGS / name, ["device=cpu", *overrides])
    model = build_model(config, len(CLASSES))
    path = tmp_path / f"{config.name}.pt"
    save_checkpoint(
        {"model": model.state_dict(), "config": config_to_dict(config), "classes": CLASSES}, path
    )
    return path, model


def read_rgb(path):
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


@pytest.fixture
def image_file(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "photo.png"
    cv2.imwrite(str(path), rng.integers(0, 255, (50, 70, 3), dtype=np.uint8))
    return path


def test_viz_on_an_ssd(tmp_path, image_file, capsys):
    weights, model = checkpoint(tmp_path, "ssd.yaml", "data.image_size=64")
    out = tmp_path / "viz"
    assert main(["viz", "filters", "--weights", str(weights), "--out", str(out)]) == 0
    grid = read_rgb(out / "filters_backbone.conv1.png")
    np.testing.assert_array_equal(grid, filter_grid(model.backbone.conv1.weight))
    args = ["--weights", str(weights), "--out", str(out), str(image_file)]
    assert main(["viz", "features", *args]) == 0
    names = sorted(path.name for path in out.glob("features_*.png"))
    assert names == sorted(f"features_photo_{s}.png" for s in model.backbone.stage_names)
    assert main(["viz", "features", *args, "--layers", "extras.0"]) == 0
    assert (out / "features_photo_extras.0.png").is_file()
    assert main(["viz", "cam", *args, "--box", "0"]) == 0
    (cam,) = out.glob("cam_gradcam_photo_box0_*.png")
    assert read_rgb(cam).shape == (50, 70, 3)  # drawn on the original image
    assert main(["viz", "cam", *args, "--class", "square"]) == 2
    assert "not a class of the model" in capsys.readouterr().err


def test_viz_cam_on_a_classifier(tmp_path, image_file):
    weights, _ = checkpoint(tmp_path, "classify_resnet.yaml")
    out = tmp_path / "viz"
    args = ["--weights", str(weights), "--out", str(out), str(image_file)]
    assert main(["viz", "cam", *args, "--class", "triangle", "--method", "gradcam++"]) == 0
    assert read_rgb(out / "cam_gradcam++_photo_triangle.png").shape == (50, 70, 3)
