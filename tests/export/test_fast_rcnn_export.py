"""Fast R-CNN through ``cvkit export``: the proposals are the graph's second input.

References: the eager model on each image alone with the same proposals (for the exported
graph at batch 1 and 3, one image of the batch left without a detection), and the eager model
on the checkpoint's own pre-processing (for the torch-free runtime ``Detector``, whose
proposals are given in original pixels).
"""

import cv2
import numpy as np
import pytest
import torch

from cvkit.cli import main
from cvkit.config import config_to_dict, load_config
from cvkit.engine.checkpoint import save_checkpoint
from cvkit.geometry import fit, normalize
from cvkit.models.build import build_model
from cvkit.models.detection.fast_rcnn import FastRCNN
from cvkit.runtime import Detector, InputError, OnnxModel

CLASSES = ["circle", "square", "triangle"]
SIZE = 64
TOPK = 90  # 90 // 3 + 1 = 31 proposal rows at least


def _config(score_threshold: float):
    return load_config(
        None,
        [
            "model.name=fast_rcnn",
            "model.backbone=resnet18_tiny",
            "model.out_features=[layer3]",
            "model.fast_rcnn.representation_size=32",
            f"model.fast_rcnn.topk_candidates={TOPK}",
            f"data.image_size={SIZE}",
            "data.resize=resize",
            f"eval.score_threshold={score_threshold}",
            "eval.max_det=10",
        ],
    )


def _images(count: int) -> torch.Tensor:
    return torch.randn(count, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))


def _real_rows(padded: torch.Tensor) -> torch.Tensor:
    return padded[(padded[:, 2] > padded[:, 0]) & (padded[:, 3] > padded[:, 1])]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A seeded Fast R-CNN, its example proposals for 5 images, exported by ``cvkit export``
    with a score threshold under which exactly one of the 5 images detects nothing."""
    folder = tmp_path_factory.mktemp("fast_rcnn")
    torch.manual_seed(0)
    model = build_model(_config(0.0), len(CLASSES)).eval()
    assert isinstance(model, FastRCNN)
    images = _images(5)
    proposals = [_real_rows(p) for p in model.export_inputs(images)["proposals"][0]]
    with torch.no_grad():
        best = sorted(
            float(model(image[None], proposals=[boxes])[0].scores.max())
            for image, boxes in zip(images, proposals, strict=True)
        )
    threshold = (best[0] + best[1]) / 2
    config = _config(threshold)
    model.inference = config.eval
    checkpoint = {"model": model.state_dict(), "config": config_to_dict(config), "ema": None}
    weights = save_checkpoint({**checkpoint, "classes": CLASSES}, folder / "fast_rcnn_best.pt")
    assert main(["export", "--weights", str(weights), "--dynamic"]) == 0
    return model, images, proposals, folder / "fast_rcnn_best.onnx"


@pytest.fixture(autouse=True)
def _keep_logging_off_captured_streams(monkeypatch):
    monkeypatch.setattr("cvkit.export.commands.setup_logging", lambda: None)


def test_the_exported_graph_at_batch_1_and_3_equals_torch_on_each_image(exported):
    model, images, proposals, path = exported
    session = OnnxModel(path, "cpu")
    assert session.input_shape[0] == "batch"
    assert list(session.extra_inputs) == ["proposals"]
    assert session.output_names == ["boxes", "scores", "labels", "num_dets"]
    with torch.no_grad():
        alone = [
            model(image[None], proposals=[boxes])[0]
            for image, boxes in zip(images, proposals, strict=True)
        ]
    assert sum(len(found) == 0 for found in alone) == 1
    for chosen in ([2], [4, 0, 1], [3, 1, 2]):
        rows = max(TOPK // len(CLASSES) + 1, *(len(proposals[i]) for i in chosen))
        padded = np.zeros((len(chosen), rows, 4), np.float32)
        for slot, index in zip(padded, chosen, strict=True):
            slot[: len(proposals[index])] = proposals[index].numpy()
        outputs = session.run(images[chosen].numpy(), {"proposals": padded})
        for row, index in enumerate(chosen):
            want, count = alone[index], int(outputs["num_dets"][row])
            assert count == len(want)
            np.testing.assert_allclose(outputs["boxes"][row, :count], want.boxes, atol=1e-4)
            np.testing.assert_allclose(outputs["scores"][row, :count], want.scores, atol=1e-5)
            np.testing.assert_array_equal(outputs["labels"][row, :count], want.labels)


def test_the_runtime_detector_equals_the_checkpoint_with_proposals_in_original_pixels(exported):
    model, _, proposals, path = exported
    rng = np.random.default_rng(0)
    shapes = [(80, 48), (64, 64), (40, 96)]
    pictures = [rng.integers(0, 256, (*shape, 3), dtype=np.uint8) for shape in shapes]
    config = _config(0.0)
    expected, given = [], []
    for picture, boxes in zip(pictures, proposals[:3], strict=True):
        canvas, geometry = fit(picture, (SIZE, SIZE), "resize")
        batch = torch.from_numpy(normalize(canvas[None], config.data.mean, config.data.std))
        with torch.no_grad():
            found = model(batch, proposals=[boxes])[0]
        expected.append(found.to_original(geometry))
        sx, sy = geometry.scale
        given.append(boxes.numpy() / np.array([sx, sy, sx, sy], np.float32))
    detector = Detector(path, providers="cpu", batch_size=2)
    got = detector.predict(pictures, proposals=given)
    assert sum(len(found) for found in expected) > 0
    for detections, want in zip(got, expected, strict=True):
        assert len(detections.scores) == len(want)
        np.testing.assert_allclose(detections.boxes, want.boxes, atol=1e-3)
        np.testing.assert_allclose(detections.scores, want.scores, atol=1e-5)
        np.testing.assert_array_equal(detections.labels, want.labels)
    single = detector.predict(pictures[0], proposals=given[0])
    np.testing.assert_array_equal(single.labels, got[0].labels)
    with pytest.raises(InputError, match="pass proposals="):
        detector.predict(pictures)
    with pytest.raises(InputError, match=r"expected \[P, 4\]"):
        detector.predict(pictures[0], proposals=np.zeros((3, 5), np.float32))


def test_cvkit_predict_on_the_export_says_to_use_the_checkpoint(exported, tmp_path, capsys):
    """``cvkit predict best.onnx`` cannot compute selective search: it once failed with the
    runtime's ``pass proposals=...`` advice, meaningless on a command line."""
    image = tmp_path / "image.png"
    cv2.imwrite(str(image), np.zeros((40, 60, 3), np.uint8))
    command = ["predict", "--weights", str(exported[3]), str(image), "--out", str(tmp_path)]
    assert main(command) != 0
    error = capsys.readouterr().err
    assert "cvkit predict does not compute" in error and "predict with the .pt checkpoint" in error
    assert not (tmp_path / "predictions.json").exists()
