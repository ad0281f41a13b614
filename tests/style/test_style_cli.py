"""``cvkit style``: writes the image and its losses; says when the VGG has random weights."""

import json

import cv2
import numpy as np
import pytest
import torch
import torchvision

from cvkit.cli import main


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for name, shape in (("content.png", (24, 32, 3)), ("style.png", (40, 40, 3))):
        path = tmp_path / name
        cv2.imwrite(str(path), rng.integers(0, 256, shape, dtype=np.uint8))
        paths.append(path)
    return paths


def test_style_command_with_random_weights(images, tmp_path, capsys):
    content, style = images
    out = tmp_path / "out.png"
    args = ["style", "--content", str(content), "--style", str(style), "--style", str(content)]
    args += ["--style-weights", "3", "1", "--size", "32", "--steps", "3", "--out", str(out)]
    args += ["--save-every", "3", "--device", "cpu"]
    assert main(args) == 0
    printed = capsys.readouterr().out.splitlines()
    assert sum("random weights" in line for line in printed) == 1
    assert cv2.imread(str(out)).shape == (24, 32, 3)
    history = json.loads(out.with_suffix(".json").read_text())
    assert len(history) == 3 and history[-1]["total"] < history[0]["total"]
    assert (tmp_path / "out" / "level0_step0003.png").is_file()


def test_style_command_reads_a_torchvision_vgg16_file(images, tmp_path, capsys):
    torch.manual_seed(0)
    features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"])
    vgg = tmp_path / "vgg16.pth"
    torch.save({f"features.{key}": value for key, value in features.state_dict().items()}, vgg)
    content, style = images
    out = tmp_path / "out.jpg"
    args = ["style", "--content", str(content), "--style", str(style), "--vgg", str(vgg)]
    args += ["--size", "32", "--steps", "1", "--optimizer", "adam", "--out", str(out)]
    assert main(args) == 0
    assert "random" not in capsys.readouterr().out
    assert cv2.imread(str(out)).shape == (24, 32, 3)


def test_style_command_names_a_bad_blend(images, tmp_path, capsys):
    content, style = images
    args = ["style", "--content", str(content), "--style", str(style)]
    args += ["--style-weights", "1", "2", "--size", "32", "--out", str(tmp_path / "o.png")]
    assert main(args) == 2
    assert "--style-weights" in capsys.readouterr().err
