"""Fast R-CNN through ``cvkit export``: the proposals are the graph's second input.

References: the eager model on each image alone with the same proposals (for the exported
graph at batch 1 and 3, one image of the batch left without a detection), and the eager model
on the checkpoint's own pre-processing (for the torch-free runtime ``Detector``, whose
proposals are given in original pixels).
"""

import asyncio
import json
import subprocess
import sys
import textwrap

import cv2
import httpx
import numpy as np
import onnx
import pytest
import torch

from cvkit.cli import main
from cvkit.config import config_to_dict, load_config
from cvkit.config.model import ProposalConfig
from cvkit.data.synthetic import synthetic_records
from cvkit.engine.checkpoint import save_checkpoint
from cvkit.engine.predict import CheckpointDetector
from cvkit.errors import ConfigError
from cvkit.export.quantize import OnnxEvalModel
from cvkit.geometry import fit, normalize
from cvkit.models.build import build_model
from cvkit.models.detection.fast_rcnn import FastRCNN
from cvkit.runtime import Detector, InputError, OnnxModel
from cvkit.runtime.preprocess import search_proposals
from cvkit.selective_search import INSTALL_HINT, SearchSettings

from .conftest import BLOCK_TORCH

CLASSES = ["circle", "square", "triangle"]
SIZE = 64
TOPK = 90  # 90 // 3 + 1 = 31 proposal rows at least


def _config(score_threshold: float, *overrides: str):
    return load_config(
        None,
        [
            *overrides,
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
    with pytest.raises(InputError, match=r"expected \[P, 4\]"):
        detector.predict(pictures[0], proposals=np.zeros((3, 5), np.float32))


@pytest.fixture(scope="module")
def one_proposal(exported, tmp_path_factory):
    """The same weights exported (with their ``.pt``) at score threshold 0 and at most one
    proposal per image: RoI max pooling gives proposals over the same feature cells equal
    scores, and which of such tied boxes the final selection keeps is up to torch's and
    onnxruntime's sorting; with one proposal there is no tie, so detections compare one to
    one. The non-default setting also has to travel through the export to the runtime."""
    folder = tmp_path_factory.mktemp("fast_rcnn_one_proposal")
    config = _config(0.0, "model.fast_rcnn.proposals.max_proposals=1")
    checkpoint = {"model": exported[0].state_dict(), "config": config_to_dict(config)}
    weights = save_checkpoint({**checkpoint, "ema": None, "classes": CLASSES}, folder / "best.pt")
    assert main(["export", "--weights", str(weights), "--dynamic"]) == 0
    return folder / "best.onnx"


@pytest.fixture(scope="module")
def shapes():
    """Synthetic shapes pictures of three sizes: selective search has objects to find."""
    records, _ = synthetic_records(3, image_size=96, seed=5)
    crops = [(slice(None), slice(None)), (slice(0, 80), slice(0, 48)), (slice(8, 48), slice(None))]
    return [
        sample.image[rows, columns]
        for sample, (rows, columns) in zip(records.samples, crops, strict=True)
    ]


def _both_runs(path, pictures, monkeypatch):
    """``pictures`` predicted by the ``.pt`` beside ``path`` (as ``cvkit predict`` does) and by
    the runtime on ``path``, each with the proposals it computed on the way (input pixels)."""
    checkpoint = CheckpointDetector(path.with_suffix(".pt"), device="cpu")
    proposer = checkpoint.model.proposer
    torch_proposals, runtime_proposals = [], []

    def torch_recording(batch):
        boxes = proposer(batch)
        torch_proposals.extend(b.numpy() for b in boxes)
        return boxes

    def runtime_recording(*args):
        boxes = search_proposals(*args)
        runtime_proposals.extend(boxes)
        return boxes

    checkpoint.model.proposer = torch_recording
    monkeypatch.setattr("cvkit.runtime.predictors.search_proposals", runtime_recording)
    runtime = Detector(path, providers="cpu", batch_size=2).predict(pictures)
    return checkpoint(pictures), torch_proposals, runtime, runtime_proposals


def _assert_same_detections(got, expected):
    """Each image detects something, with the same count, labels, boxes within 1e-3 px and
    scores within 1e-5 (the export parity tolerances) on both sides."""
    assert all(len(want.scores) > 0 for want in expected)
    for found, want in zip(got, expected, strict=True):
        assert len(found.scores) == len(want.scores)
        np.testing.assert_allclose(found.boxes, want.boxes, atol=1e-3)
        np.testing.assert_allclose(found.scores, want.scores, atol=1e-5)
        np.testing.assert_array_equal(found.labels, want.labels)


def test_the_runtime_computes_the_checkpoints_proposals(exported, shapes, monkeypatch):
    """``Detector.predict(images)`` on an export that records the selective-search settings
    searches the pixels the ``.pt`` searches at predict time: equal proposals, bit for bit."""
    path = exported[3]
    assert OnnxModel(path, "cpu").metadata.proposals == SearchSettings.of(ProposalConfig())
    _, torch_proposals, _, runtime_proposals = _both_runs(path, shapes, monkeypatch)
    assert len(runtime_proposals) == len(torch_proposals) == len(shapes)
    for runtime_boxes, torch_boxes in zip(runtime_proposals, torch_proposals, strict=True):
        assert len(runtime_boxes) > 1
        np.testing.assert_array_equal(runtime_boxes, torch_boxes)


def test_the_runtime_detections_equal_the_checkpoints(one_proposal, shapes, monkeypatch):
    assert OnnxModel(one_proposal, "cpu").metadata.proposals.max_proposals == 1
    expected, torch_proposals, got, runtime_proposals = _both_runs(
        one_proposal, shapes, monkeypatch
    )
    for runtime_boxes, torch_boxes in zip(runtime_proposals, torch_proposals, strict=True):
        assert len(runtime_boxes) == 1
        np.testing.assert_array_equal(runtime_boxes, torch_boxes)
    _assert_same_detections(got, expected)


def test_the_runtime_computes_proposals_where_importing_torch_fails(one_proposal, shapes, tmp_path):
    np.save(tmp_path / "image.npy", shapes[1])
    code = BLOCK_TORCH + textwrap.dedent(
        f"""
        import json, numpy as np
        from cvkit.runtime import Detector
        found = Detector({str(one_proposal)!r}, providers="cpu").predict(
            np.load({str(tmp_path / "image.npy")!r})
        )
        print(json.dumps(found.to_dict()), "torch" in sys.modules)
        """
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    line, torch_loaded = run.stdout.strip().splitlines()[-1].rsplit(" ", 1)
    assert torch_loaded == "False"
    got = json.loads(line)
    expected = Detector(one_proposal, providers="cpu").predict(shapes[1])
    assert got["labels"] == expected.labels.tolist() and len(got["labels"]) > 0
    np.testing.assert_allclose(got["boxes"], expected.boxes, atol=1e-4)


def test_cvkit_eval_on_the_export_detects_as_the_checkpoint_validates(one_proposal, shapes):
    """``cvkit eval --weights best.onnx`` runs the file through ``OnnxEvalModel`` on the val
    loader's batch: it computes the proposals from that batch as the torch model does."""
    config = _config(0.0)
    canvases = [fit(picture, (SIZE, SIZE), "resize")[0] for picture in shapes]
    batch = torch.from_numpy(normalize(np.stack(canvases), config.data.mean, config.data.std))
    checkpoint = CheckpointDetector(one_proposal.with_suffix(".pt"), device="cpu")
    with torch.no_grad():
        expected = checkpoint.model(batch)
    got = OnnxEvalModel(one_proposal)(batch)
    _assert_same_detections(got, expected)


def test_cvkit_predict_on_the_export_equals_the_checkpoints(one_proposal, shapes, tmp_path):
    """``cvkit predict --weights best.onnx photos/`` computes the proposals itself and writes
    the ``.pt`` run's predictions (JSON rounds boxes to 0.01 px and scores to 1e-5)."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for index, picture in enumerate(shapes):
        cv2.imwrite(str(photos / f"{index}.png"), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
    runs = {}
    for weights in (one_proposal, one_proposal.with_suffix(".pt")):
        out = tmp_path / weights.suffix[1:]
        command = ["predict", "--weights", str(weights), str(photos), "--out", str(out)]
        assert main([*command, "--score-threshold", "0"]) == 0
        runs[weights.suffix] = json.loads((out / "predictions.json").read_text())
    assert len(runs[".pt"]) == len(shapes)
    assert all(len(record["detections"]) > 0 for record in runs[".pt"])
    for onnx_record, pt_record in zip(runs[".onnx"], runs[".pt"], strict=True):
        assert onnx_record["image"] == pt_record["image"]
        assert len(onnx_record["detections"]) == len(pt_record["detections"])
        for got, want in zip(onnx_record["detections"], pt_record["detections"], strict=True):
            assert got["label"] == want["label"] and got["class"] == want["class"]
            np.testing.assert_allclose(got["box"], want["box"], atol=0.01 + 1e-3)
            np.testing.assert_allclose(got["score"], want["score"], atol=1e-5 + 1e-5)


async def _upload(app, path: str, data: bytes):
    """POST ``data`` to ``path`` of the ASGI ``app``, its lifespan (the batchers) running."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://cvkit") as client:
            return await client.post(path, content=data)


def test_cvkit_serve_predicts_uploads_with_the_export(one_proposal, shapes):
    from cvkit.serve import ServeSettings, create_app

    app = create_app(ServeSettings(models=(str(one_proposal),), providers="cpu"))
    _, png = cv2.imencode(".png", cv2.cvtColor(shapes[2], cv2.COLOR_RGB2BGR))
    route = f"/v1/models/{one_proposal.stem}/predict"
    response = asyncio.run(_upload(app, route, png.tobytes()))
    assert response.status_code == 200, response.text
    body = response.json()
    expected = Detector(one_proposal, providers="cpu").predict(shapes[2])
    assert body["labels"] == expected.labels.tolist() and len(body["labels"]) > 0
    np.testing.assert_allclose(body["boxes"], expected.boxes, atol=1e-4)
    np.testing.assert_allclose(body["scores"], expected.scores, atol=1e-6)


def test_an_export_without_the_settings_still_asks_for_proposals(exported, shapes, tmp_path):
    """A file exported before the settings were recorded loads, takes given proposals, and
    without them says to pass them."""
    proto = onnx.load(str(exported[3]))
    kept = [(p.key, p.value) for p in proto.metadata_props if p.key != "proposals"]
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, dict(kept))
    older = tmp_path / "older.onnx"
    onnx.save(proto, str(older))
    detector = Detector(older, providers="cpu")
    assert detector.metadata.proposals is None
    with pytest.raises(InputError, match=r"records no selective-search settings.*pass proposals="):
        detector.predict(shapes)
    boxes = np.array([[4, 4, 40, 40], [10, 20, 30, 60]], np.float32)
    given = detector.predict(shapes[1], proposals=boxes)
    current = Detector(exported[3], providers="cpu").predict(shapes[1], proposals=boxes)
    np.testing.assert_array_equal(given.boxes, current.boxes)
    np.testing.assert_array_equal(given.scores, current.scores)


def test_the_runtime_says_how_to_install_selective_search(exported, shapes, monkeypatch):
    monkeypatch.delattr(cv2, "ximgproc")
    detector = Detector(exported[3], providers="cpu")
    with pytest.raises(ConfigError, match=r"cvkit\[rcnn\].*opencv-contrib-python-headless"):
        detector.predict(shapes[0])


@pytest.mark.parametrize("workers", ["1", "2"])
def test_cvkit_serve_refuses_a_fast_rcnn_without_selective_search(
    exported, workers, monkeypatch, capsys
):
    """Without OpenCV's contrib build every image request would fail: the server does not
    start (one worker builds the app, the parent of several checks the files), and says why."""
    monkeypatch.delattr(cv2, "ximgproc")
    monkeypatch.setattr("uvicorn.run", lambda *args, **kwargs: pytest.fail("the server started"))
    path = exported[3]
    assert main(["serve", str(path), "--workers", workers, "--providers", "cpu"]) != 0
    message = capsys.readouterr().err
    assert str(path) in message and INSTALL_HINT in message


def test_the_app_refuses_a_fast_rcnn_without_selective_search(exported, monkeypatch):
    from cvkit.serve import ServeSettings, create_app

    monkeypatch.delattr(cv2, "ximgproc")
    with pytest.raises(ConfigError, match=rf"{exported[3].name}: cannot be served.*cvkit\[rcnn\]"):
        create_app(ServeSettings(models=(str(exported[3]),), providers="cpu"))
