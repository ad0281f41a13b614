"""``cvkit export``: checkpoint → .onnx through the command line, served by the runtime."""

import json

import cv2
import numpy as np
import pytest
import torch

from cvkit.cli import main
from cvkit.config import config_to_dict, load_config
from cvkit.engine.checkpoint import save_checkpoint
from cvkit.models.build import build_model
from cvkit.runtime import Classifier, OnnxModel

CLASSES = ["cat", "dog", "bird"]


def _classifier_checkpoint(tmp_path):
    config = load_config(
        None,
        [
            "task=classify",
            "model.name=classifier",
            "model.backbone=resnet18_tiny",
            "data.image_size=32",
        ],
    )
    torch.manual_seed(0)
    model = build_model(config, len(CLASSES)).eval()
    checkpoint = {"model": model.state_dict(), "config": config_to_dict(config), "ema": None}
    path = save_checkpoint(
        {**checkpoint, "classes": CLASSES, "category_ids": None}, tmp_path / "best.pt"
    )
    return model, path


@pytest.fixture(autouse=True)
def _keep_logging_off_captured_streams(monkeypatch):
    monkeypatch.setattr("cvkit.export.commands.setup_logging", lambda: None)


def test_export_command_writes_a_checked_self_describing_file(tmp_path, capsys):
    model, weights = _classifier_checkpoint(tmp_path)
    assert main(["export", "--weights", str(weights), "--dynamic", "--opset", "17"]) == 0
    path = tmp_path / "best.onnx"
    assert capsys.readouterr().out.strip() == str(path)
    onnx_model = OnnxModel(path, "cpu")
    assert onnx_model.input_shape == ["batch", 3, 32, 32]
    assert onnx_model.metadata.classes == tuple(CLASSES)
    assert onnx_model.metadata.model_name == "classifier"
    classifier = Classifier(path, providers="cpu")
    images = [np.random.default_rng(i).integers(0, 256, (40, 50, 3), np.uint8) for i in range(3)]
    batch, _ = classifier.preprocess(images)
    with torch.no_grad():
        expected = model(torch.from_numpy(batch)).softmax(-1).numpy()
    got = np.stack([r.probabilities for r in classifier.predict(images)])
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_export_command_reports_a_bad_checkpoint(tmp_path, capsys):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    assert main(["export", "--weights", str(tmp_path / "junk.pt")]) == 2
    assert "junk.pt" in capsys.readouterr().err


def test_predict_gives_the_same_detections_for_pt_and_onnx(tmp_path, tiny_ssd_weights, capsys):
    from cvkit.cli import HANDLERS

    if "predict" not in HANDLERS:
        pytest.skip("cvkit predict is not built yet")
    weights = tiny_ssd_weights
    assert main(["export", "--weights", str(weights)]) == 0
    rng = np.random.default_rng(0)
    for index, shape in enumerate([(64, 64, 3), (90, 50, 3)]):
        image = rng.integers(0, 256, shape, np.uint8)
        cv2.imwrite(str(tmp_path / f"image{index}.png"), image)
    results = {}
    for suffix in ("pt", "onnx"):
        out = tmp_path / f"predict_{suffix}"
        args = ["predict", str(tmp_path / "image0.png"), str(tmp_path / "image1.png")]
        assert main([*args, "--weights", str(tmp_path / f"ssd.{suffix}"), "--out", str(out)]) == 0
        results[suffix] = json.loads((out / "predictions.json").read_text())
    capsys.readouterr()
    for pt, onnx in zip(results["pt"], results["onnx"], strict=True):
        assert [d["class"] for d in pt["detections"]] == [d["class"] for d in onnx["detections"]]
        assert len(pt["detections"]) > 0
        for a, b in zip(pt["detections"], onnx["detections"], strict=True):
            assert abs(a["score"] - b["score"]) <= 1e-4
            assert np.abs(np.array(a["box"]) - np.array(b["box"])).max() <= 0.02


def test_classifier_predict_agrees_for_pt_and_onnx(tmp_path, capsys):
    """``cvkit predict`` on a classifier: same top class and probabilities within 1e-4."""
    _, weights = _classifier_checkpoint(tmp_path)
    assert main(["export", "--weights", str(weights)]) == 0
    rng = np.random.default_rng(0)
    sources = []
    for index, shape in enumerate([(32, 32, 3), (40, 70, 3), (90, 30, 3)]):
        sources.append(str(tmp_path / f"image{index}.png"))
        cv2.imwrite(sources[-1], rng.integers(0, 256, shape, np.uint8))
    results = {}
    for suffix in ("pt", "onnx"):
        out = tmp_path / f"predict_{suffix}"
        args = ["predict", *sources, "--weights", str(tmp_path / f"best.{suffix}")]
        assert main([*args, "--out", str(out)]) == 0
        results[suffix] = json.loads((out / "predictions.json").read_text())
    capsys.readouterr()
    assert len(results["pt"]) == len(results["onnx"]) == 3
    for pt, onnx in zip(results["pt"], results["onnx"], strict=True):
        assert pt["class"] == onnx["class"] and pt["class"] in CLASSES
        assert sum(pt["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
        for name in CLASSES:
            assert abs(pt["probabilities"][name] - onnx["probabilities"][name]) <= 1e-4


@pytest.mark.parametrize("method", ["soft", "diou"])
def test_export_nms_method_flag_puts_that_selection_in_the_graph(
    tmp_path, tiny_ssd_weights, method
):
    import onnx

    weights = tiny_ssd_weights
    hard, chosen = tmp_path / "hard.onnx", tmp_path / f"{method}.onnx"
    assert main(["export", "--weights", str(weights), "--out", str(hard)]) == 0
    argv = ["export", "--weights", str(weights), "--out", str(chosen), "--nms-method", method]
    assert main(argv) == 0  # the export's parity check compared it with torch
    ops = {
        name: {n.op_type for n in onnx.load(str(p)).graph.node}
        for name, p in (("hard", hard), (method, chosen))
    }
    assert "NonMaxSuppression" in ops["hard"] and "NonMaxSuppression" not in ops[method]
    assert OnnxModel(chosen, "cpu").metadata.nms_in_graph
