"""``cvkit predict``: detections in original pixels equal a hand-built letterbox + model call;
PNGs and JSON are written; bad sources fail with a message naming them."""

import json

import cv2
import numpy as np
import pytest
import torch

from cvkit.cli import main
from cvkit.config import config_to_dict, load_config
from cvkit.engine.checkpoint import save_checkpoint
from cvkit.engine.predict import CheckpointDetector, predict_images
from cvkit.errors import ImageError
from cvkit.models.build import build_model

torch.set_num_threads(2)
CLASSES = ["circle", "rectangle", "triangle"]
SIZE = 64


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    config = load_config(
        None,
        [
            "model.backbone=resnet18_tiny",
            "model.out_features=[layer3, layer4]",
            "model.ssd.extra_blocks=1",
            f"data.image_size={SIZE}",
            "data.resize=letterbox",
            "eval.max_det=20",
        ],
    )
    torch.manual_seed(0)
    model = build_model(config, len(CLASSES))
    path = tmp_path_factory.mktemp("weights") / "best.pt"
    save_checkpoint(
        {"model": model.state_dict(), "config": config_to_dict(config), "classes": CLASSES},
        path,
    )
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for name, (h, w) in {"wide": (40, 90), "tall": (100, 50)}.items():
        image = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        cv2.imwrite(str(folder / f"{name}.png"), image)
    (folder / "notes.txt").write_text("not an image")
    return folder


def reference_detections(weights, image_rgb):
    """Letterbox by hand (longer side → SIZE, pad bottom/right), normalize, run, scale back."""
    checkpoint = torch.load(weights, weights_only=True)
    config = load_config(None, [f"data.image_size={SIZE}", "eval.max_det=20"])
    config = config.model_validate(checkpoint["config"])
    model = build_model(config, len(CLASSES))
    model.load_state_dict(checkpoint["model"])
    model.eval()
    h, w = image_rgb.shape[:2]
    ratio = SIZE / max(h, w)
    resized = cv2.resize(image_rgb, (round(w * ratio), round(h * ratio)))
    canvas = np.zeros((SIZE, SIZE, 3), np.float32)
    canvas[: resized.shape[0], : resized.shape[1]] = resized
    mean = np.array([0.485, 0.456, 0.406], np.float32) * 255
    std = np.array([0.229, 0.224, 0.225], np.float32) * 255
    x = torch.from_numpy((canvas - mean) / std).permute(2, 0, 1)[None]
    with torch.no_grad():
        (output,) = model(x)
    boxes = output.boxes.numpy() / ratio
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
    return boxes, output.scores.numpy(), output.labels.numpy()


def test_detections_match_a_hand_built_pipeline(weights, images):
    detector = CheckpointDetector(weights, device="cpu")
    assert detector.classes == CLASSES
    for name in ("wide", "tall"):
        image = cv2.cvtColor(cv2.imread(str(images / f"{name}.png")), cv2.COLOR_BGR2RGB)
        (prediction,) = detector([image])
        boxes, scores, labels = reference_detections(weights, image)
        assert len(scores) > 0
        np.testing.assert_allclose(prediction.boxes, boxes, atol=1e-3)
        np.testing.assert_allclose(prediction.scores, scores, atol=1e-6)
        np.testing.assert_array_equal(prediction.labels, labels)


def test_cli_writes_drawings_and_json(weights, images, tmp_path):
    out = tmp_path / "out"
    args = ["predict", str(images), "--weights", str(weights), "--out", str(out)]
    assert main([*args, "--score-threshold", "0.0"]) == 0
    records = json.loads((out / "predictions.json").read_text())
    assert [r["image"] for r in records] == [str(images / "tall.png"), str(images / "wide.png")]
    detector = CheckpointDetector(weights, device="cpu")
    for record in records:
        original = cv2.imread(record["image"])
        drawn = cv2.imread(str(out / (record["image"].rsplit("/", 1)[1])))
        assert drawn.shape == original.shape and not np.array_equal(drawn, original)
        (prediction,) = detector([cv2.cvtColor(original, cv2.COLOR_BGR2RGB)])
        assert len(record["detections"]) == len(prediction.scores) > 0
        for det, box, label in zip(
            record["detections"], prediction.boxes, prediction.labels, strict=True
        ):
            assert det["box"] == pytest.approx(box.tolist(), abs=0.01)
            assert det["class"] == CLASSES[label]

    assert main([*args, "--score-threshold", "1.0"]) == 0
    records = json.loads((out / "predictions.json").read_text())
    assert all(record["detections"] == [] for record in records)


def test_bad_sources_name_the_path(weights, tmp_path, capsys):
    missing = tmp_path / "missing.jpg"
    assert main(["predict", str(missing), "--weights", str(weights)]) == 2
    assert str(missing) in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["predict", str(empty), "--weights", str(weights)]) == 2
    assert "no images found" in capsys.readouterr().err


def test_unreadable_files_in_a_folder_are_named_and_the_rest_predicted(weights, images, tmp_path):
    """A folder with a cut-off JPEG and a text file named .jpg among good images: the good
    ones get the same records and drawings as alone, each bad one an error entry naming it."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    for name in ("tall.png", "wide.png"):
        (folder / name).write_bytes((images / name).read_bytes())
    _, encoded = cv2.imencode(".jpg", np.full((60, 80, 3), 200, np.uint8))
    (folder / "cut.jpg").write_bytes(encoded.tobytes()[: len(encoded) // 2])
    (folder / "text.jpg").write_text("not an image")
    out, alone = tmp_path / "out", tmp_path / "alone"
    common = ["--weights", str(weights), "--score-threshold", "0.0"]
    assert main(["predict", str(folder), "--out", str(out), *common]) == 0
    good = [str(folder / "tall.png"), str(folder / "wide.png")]
    assert main(["predict", *good, "--out", str(alone), *common]) == 0

    records = {r["image"]: r for r in json.loads((out / "predictions.json").read_text())}
    assert sorted(records) == sorted([*good, str(folder / "cut.jpg"), str(folder / "text.jpg")])
    for bad in ("cut.jpg", "text.jpg"):
        record = records[str(folder / bad)]
        assert set(record) == {"image", "error"} and str(folder / bad) in record["error"]
    expected = {r["image"]: r for r in json.loads((alone / "predictions.json").read_text())}
    assert {path: records[path] for path in good} == expected
    assert sorted(p.name for p in out.glob("*.png")) == ["tall.png", "wide.png"]


def test_predict_images_raises_without_an_error_handler(weights, tmp_path):
    bad = tmp_path / "text.jpg"
    bad.write_text("not an image")
    detector = CheckpointDetector(weights, device="cpu")
    with pytest.raises(ImageError, match=r"text\.jpg"):
        list(predict_images([bad], detector, batch_size=2))
