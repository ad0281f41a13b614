"""``cvkit train`` with ``export.after_train``: the run ends with a checked ``best.onnx``."""

from pathlib import Path

import numpy as np
import pytest

from cvkit.cli import main
from cvkit.errors import ExportError
from cvkit.logs import setup_logging

SSD_CONFIG = str(Path(__file__).resolve().parents[2] / "configs" / "ssd.yaml")


@pytest.fixture
def tiny_overrides(tmp_path):
    yield [
        "data.synthetic.num_train=8",
        "data.synthetic.num_val=4",
        "data.synthetic.image_size=64",
        "data.image_size=64",
        "data.batch_size=4",
        "data.workers=0",
        f"data.cache_dir={tmp_path / 'cache'}",
        "train.epochs=1",
        "train.val_every=1",
        "train.threads=1",
        "device=cpu",
        "export.after_train=true",
    ]
    setup_logging()  # detach the run folder's log file


def test_train_exports_best_to_onnx_that_the_runtime_serves(tmp_path, tiny_overrides, capsys):
    from cvkit.runtime import Detector

    out = tmp_path / "run"
    argv = ["train", "--cfg", SSD_CONFIG, "--out", str(out), "--set", *tiny_overrides]
    assert main(argv) == 0
    onnx_path = out / "weights" / "best.onnx"
    assert f"exported: {onnx_path}" in capsys.readouterr().out
    detector = Detector(onnx_path, providers="cpu")
    assert detector.provider == "CPUExecutionProvider"
    result = detector.predict(np.zeros((48, 80, 3), dtype=np.uint8))
    assert result.boxes.shape[1] == 4 and len(result.boxes) == len(result.labels)


def test_failed_export_keeps_the_training_results_and_exits_1(
    tmp_path, tiny_overrides, monkeypatch
):
    import cvkit.export.commands

    def broken_export(weights, out=None, options=None):
        raise ExportError("parity check failed: boxes differ by 3.0")

    monkeypatch.setattr(cvkit.export.commands, "export_checkpoint", broken_export)
    out = tmp_path / "run"
    argv = ["train", "--cfg", SSD_CONFIG, "--out", str(out), "--set", *tiny_overrides]
    assert main(argv) == 1
    assert (out / "weights" / "best.pt").is_file()
    assert not (out / "weights" / "best.onnx").exists()


def test_eval_score_threshold_is_read_when_eval_runs(tmp_path, tiny_overrides, monkeypatch):
    from cvkit.engine.tasks import detect

    overrides = [o for o in tiny_overrides if not o.startswith("export.")]
    out = tmp_path / "run"
    assert main(["train", "--cfg", SSD_CONFIG, "--out", str(out), "--set", *overrides]) == 0
    counted = []
    real = detect.detections_to_coco

    def counting(detections, image_ids, category_ids):
        counted.append(sum(len(d.scores) for d in detections))
        return real(detections, image_ids, category_ids)

    monkeypatch.setattr(detect, "detections_to_coco", counting)
    weights = str(out / "weights" / "best.pt")
    argv = ["eval", "--cfg", SSD_CONFIG, "--weights", weights, "--set", *overrides]
    totals = []  # detections kept by each evaluation (converted image by image)
    for setting in ("eval.score_threshold=0.001", "eval.score_threshold=0.999", "eval.max_det=3"):
        counted.clear()
        assert main([*argv, setting]) == 0
        totals.append(sum(counted))
    low, high, capped = totals
    assert low > high, f"score_threshold 0.999 kept {high} detections, 0.001 kept {low}"
    assert capped == 4 * 3 < low  # 4 val images, at most 3 detections each
