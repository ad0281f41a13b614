"""``cvkit train`` with ``configs/yolov1.yaml`` and ``configs/yolo.yaml`` on a tiny synthetic
set, then ``eval``: the evaluation of ``best.pt`` repeats the training's validation metrics,
the run ends with a checked ``best.onnx`` (``export.after_train``), and the torch-free
runtime's detections on it equal those of the checkpoint."""

import json
from pathlib import Path

import numpy as np
import pytest

import cvkit
from cvkit.cli import main
from cvkit.logs import setup_logging

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
NARROW = {"yolov1": "model.yolov1.head_channels=16", "yolo": "model.yolo.reg_max=8"}


@pytest.mark.parametrize("name", ["yolov1", "yolo"])
def test_trains_evaluates_and_exports_from_the_command_line(name, tmp_path):
    from cvkit.runtime import Detector

    config = str(CONFIGS / f"{name}.yaml")

    overrides = [
        "data.synthetic.num_train=4",
        "data.synthetic.num_val=3",
        "data.synthetic.image_size=64",
        "data.image_size=64",
        "data.batch_size=4",
        "data.workers=0",
        f"data.cache_dir={tmp_path / 'cache'}",
        NARROW[name],
        "train.epochs=2",
        "train.val_every=1",
        "train.threads=1",
        "device=cpu",
    ]
    run = tmp_path / "run"
    try:
        train = ["train", "--cfg", config, "--out", str(run), "--json", str(tmp_path / "t.json")]
        assert main([*train, "--set", *overrides]) == 0
        weights = run / "weights" / "best.pt"
        evaluate = ["eval", "--cfg", config, "--weights", str(weights)]
        assert main([*evaluate, "--json", str(tmp_path / "e.json"), "--set", *overrides]) == 0
    finally:
        setup_logging()  # detach the run folder's log file
    trained = json.loads((tmp_path / "t.json").read_text())
    evaluated = json.loads((tmp_path / "e.json").read_text())
    for key in ("mAP", "mAP50", "per_class_AP"):
        assert evaluated[key] == trained[key]
    photos = [
        np.random.default_rng(seed).integers(0, 256, (64, 64, 3), np.uint8) for seed in (0, 1)
    ]
    runtime = Detector(run / "weights" / "best.onnx", providers="cpu", batch_size=2)
    got = runtime.predict(photos)
    want = cvkit.load(weights, device="cpu").predict(photos)
    assert sum(len(result.labels) for result in want) > 0
    for ours, theirs in zip(got, want, strict=True):
        np.testing.assert_array_equal(ours.labels, theirs.labels)
        np.testing.assert_allclose(ours.scores, theirs.scores, atol=1e-5)
        np.testing.assert_allclose(ours.boxes, theirs.boxes, atol=1e-2)
