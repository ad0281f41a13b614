"""Every endpoint over real HTTP against the session's ``cvkit serve`` process.

References: :class:`cvkit.runtime.Detector` (and its Classifier/Segmenter twins) run in the
test process on the same files; the V2 bodies are checked against JSON schemas written from the
KServe V2 / Open Inference Protocol REST specification.
"""

from __future__ import annotations

import base64
import threading
from concurrent.futures import ThreadPoolExecutor

import cv2
import httpx
import jsonschema
import numpy as np
import pytest
from serve_checks import expect_error

from cvkit.runtime import load_predictor
from cvkit.serve.app import INLINE_DECODE_BYTES

TENSOR = {
    "type": "object",
    "required": ["name", "datatype", "shape"],
    "properties": {
        "name": {"type": "string"},
        "datatype": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer"}},
    },
}
SERVER_METADATA = {
    "type": "object",
    "required": ["name", "version", "extensions"],
    "properties": {
        "name": {"type": "string"},
        "version": {"type": "string"},
        "extensions": {"type": "array", "items": {"type": "string"}},
    },
}
MODEL_METADATA = {
    "type": "object",
    "required": ["name", "platform", "inputs", "outputs"],
    "properties": {
        "name": {"type": "string"},
        "versions": {"type": "array", "items": {"type": "string"}},
        "platform": {"type": "string"},
        "inputs": {"type": "array", "items": TENSOR},
        "outputs": {"type": "array", "items": TENSOR},
    },
}
INFERENCE_RESPONSE = {
    "type": "object",
    "required": ["model_name", "outputs"],
    "properties": {
        "model_name": {"type": "string"},
        "model_version": {"type": "string"},
        "id": {"type": "string"},
        "parameters": {"type": "object"},
        "outputs": {
            "type": "array",
            "items": {
                **TENSOR,
                "required": ["name", "datatype", "shape", "data"],
                "properties": {**TENSOR["properties"], "data": {"type": "array"}},
            },
        },
    },
}
V2_DTYPES = {"FP32": np.float32, "INT64": np.int64}


def _noise(seed: int, shape=(90, 120, 3)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, np.uint8)


def _write(path, image: np.ndarray):
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return path


@pytest.fixture(scope="module")
def references(model_folder):
    return {
        name: load_predictor(model_folder / f"{name}.onnx", "cpu")
        for name in ("ssd", "seg", "static")
    }


def _same_detections(body: dict, expected) -> None:
    assert body["task"] == "detect"
    assert len(body["boxes"]) == len(expected) > 0
    np.testing.assert_allclose(body["boxes"], expected.boxes, atol=1e-3)
    np.testing.assert_allclose(body["scores"], expected.scores, atol=1e-5)
    assert body["labels"] == expected.labels.tolist()
    assert body["names"] == list(expected.names)


def test_health_and_server_metadata(client):
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    body = client.get("/v2").json()
    jsonschema.validate(body, SERVER_METADATA)
    assert body["name"] == "cvkit"


def test_model_metadata_describes_the_graph(client, references):
    for name, predictor in references.items():
        body = client.get(f"/v2/models/{name}").json()
        jsonschema.validate(body, MODEL_METADATA)
        graph_inputs = predictor.model.session.get_inputs()
        assert [t["name"] for t in body["inputs"]] == [node.name for node in graph_inputs]
        assert [t["name"] for t in body["outputs"]] == predictor.model.output_names
        assert client.get(f"/v2/models/{name}/ready").json() == {"ready": True}
    ssd = client.get("/v2/models/ssd").json()
    assert ssd["inputs"][0] == {"name": "images", "datatype": "FP32", "shape": [-1, 3, 64, 64]}
    assert client.get("/v2/models/static").json()["inputs"][0]["shape"] == [1, 3, 16, 16]
    listed = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
    assert listed["ssd"]["classes"] == ["circle", "rectangle", "triangle"]
    assert listed["ssd"]["dynamic_batch"] and not listed["static"]["dynamic_batch"]
    assert client.get("/v1/models/ssd").json() == listed["ssd"]


def test_v2_infer_equals_the_graph_run(client, references):
    detector = references["ssd"]
    batch, _ = detector.preprocess([_noise(1), _noise(2)])
    body = {
        "id": "two-images",
        "inputs": [
            {
                "name": "images",
                "shape": list(batch.shape),
                "datatype": "FP32",
                "data": batch.ravel().tolist(),
            }
        ],
    }
    response = client.post("/v2/models/ssd/infer", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    jsonschema.validate(answer, INFERENCE_RESPONSE)
    assert answer["model_name"] == "ssd" and answer["id"] == "two-images"
    expected = detector.model.run(batch)
    assert [o["name"] for o in answer["outputs"]] == list(expected)
    for output in answer["outputs"]:
        want = expected[output["name"]]
        assert output["shape"] == list(want.shape)
        got = np.asarray(output["data"], V2_DTYPES[output["datatype"]]).reshape(output["shape"])
        assert got.dtype == want.dtype
        np.testing.assert_allclose(got, want, atol=1e-4)
    only = client.post("/v2/models/ssd/infer", json={**body, "outputs": [{"name": "num_dets"}]})
    assert [o["name"] for o in only.json()["outputs"]] == ["num_dets"]


@pytest.mark.parametrize(
    ("encoding", "shape"),
    [("raw", (90, 120, 3)), ("multipart", (90, 120, 3)), ("raw", (160, 200, 3))],
    ids=["raw", "multipart", "raw-decoded-in-a-thread"],
)
def test_predict_equals_the_runtime_detector(client, references, tmp_path, encoding, shape):
    path = _write(tmp_path / "noise.png", _noise(3, shape))
    expected = references["ssd"].predict(path)
    data = path.read_bytes()
    # small bodies are decoded on the event loop, larger ones in a thread: both paths run
    assert (len(data) > INLINE_DECODE_BYTES) == (shape[0] == 160)
    if encoding == "raw":
        response = client.post(
            "/v1/models/ssd/predict", content=data, headers={"content-type": "image/png"}
        )
    else:
        response = client.post(
            "/v1/models/ssd/predict", files={"file": ("noise.png", data, "image/png")}
        )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["image"] == {"height": shape[0], "width": shape[1]}
    _same_detections(body, expected)
    threshold = float(np.median(expected.scores))
    above = client.post(f"/v1/models/ssd/predict?score_threshold={threshold}", content=data).json()
    _same_detections(above, expected.above(threshold))


def test_jpeg_upload_decodes_like_the_runtime(client, references, tmp_path):
    path = tmp_path / "noise.jpg"
    _write(path, _noise(4))
    response = client.post("/v1/models/ssd/predict", content=path.read_bytes())
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["image"] == {"height": 90, "width": 120}
    _same_detections(body, references["ssd"].predict(path))


def test_segmentation_mask_as_png_and_rle(client, references, tmp_path):
    path = _write(tmp_path / "seg.png", _noise(5, (20, 30, 3)))
    expected = references["seg"].predict(path)
    body = client.post("/v1/models/seg/predict", content=path.read_bytes()).json()
    assert body["classes"] == expected.to_dict()["classes"]
    png = base64.b64decode(body["mask"]["data"])
    mask = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(mask, expected.mask)
    rle = client.post("/v1/models/seg/predict?mask_format=rle", content=path.read_bytes()).json()
    for name, encoded in rle["mask"]["classes"].items():
        label = expected.names.index(name)
        assert sum(encoded["counts"][1::2]) == int((expected.mask == label).sum())


def test_classification_probabilities(client, references, tmp_path):
    path = _write(tmp_path / "c.png", _noise(6, (16, 16, 3)))
    body = client.post("/v1/models/static/predict", content=path.read_bytes()).json()
    expected = references["static"].predict(path).to_dict()
    assert body["class"] == expected["class"]
    assert body["probabilities"] == pytest.approx(expected["probabilities"], abs=1e-6)


def _batch_histogram(client, model: str) -> tuple[float, float]:
    """(sum of rows, number of session.run calls) of ``cvkit_batch_size{model}``."""
    values = {}
    for line in client.get("/metrics").text.splitlines():
        for key in ("cvkit_batch_size_sum", "cvkit_batch_size_count"):
            if line.startswith(f'{key}{{model="{model}"}}'):
                values[key] = float(line.split()[-1])
    return values.get("cvkit_batch_size_sum", 0.0), values.get("cvkit_batch_size_count", 0.0)


def _concurrently(client, model: str, images: list[bytes]) -> list[httpx.Response]:
    barrier = threading.Barrier(len(images))

    def send(data: bytes) -> httpx.Response:
        barrier.wait()
        return client.post(f"/v1/models/{model}/predict", content=data)

    with ThreadPoolExecutor(len(images)) as pool:
        return list(pool.map(send, images))


def test_concurrent_requests_share_a_run_and_keep_their_own_results(client, references, tmp_path):
    paths = [_write(tmp_path / f"{seed}.png", _noise(seed)) for seed in range(10, 18)]
    rows_before, runs_before = _batch_histogram(client, "ssd")
    responses = _concurrently(client, "ssd", [path.read_bytes() for path in paths])
    for response, path in zip(responses, paths, strict=True):
        assert response.status_code == 200
        _same_detections(response.json(), references["ssd"].predict(path))
    rows, runs = _batch_histogram(client, "ssd")
    assert rows - rows_before == len(paths)
    assert runs - runs_before < len(paths)  # at least one session.run held two images


def test_static_batch_model_runs_requests_one_by_one(client, references, tmp_path):
    paths = [_write(tmp_path / f"{seed}.png", _noise(seed, (16, 16, 3))) for seed in range(4)]
    rows_before, runs_before = _batch_histogram(client, "static")
    responses = _concurrently(client, "static", [path.read_bytes() for path in paths])
    for response, path in zip(responses, paths, strict=True):
        assert response.json()["class"] == references["static"].predict(path).name
    rows, runs = _batch_histogram(client, "static")
    assert rows - rows_before == runs - runs_before == len(paths)


def test_bad_uploads_get_their_status_and_reason(client, tmp_path):
    jpeg = cv2.imencode(".jpg", _noise(7))[1].tobytes()
    png = cv2.imencode(".png", _noise(7))[1].tobytes()
    predict = "/v1/models/ssd/predict"
    expect_error(
        client.post(predict, content=jpeg[: len(jpeg) // 3]), 400, "corrupt JPEG", "truncated"
    )
    expect_error(client.post(predict, content=png[: len(png) // 2]), 400, "corrupt PNG")
    expect_error(client.post(predict, content=b"GIF89a not supported"), 400, "not an image")
    expect_error(client.post(predict, content=b""), 400, "empty body")
    expect_error(client.post(predict, files={"other": ("x", b"1")}), 400, "'file'")
    expect_error(client.post("/v1/models/nope/predict", content=jpeg), 404, "'nope'", "ssd")
    expect_error(client.get("/v2/models/nope"), 404, "'nope'")
    expect_error(client.post(predict, content=b"\xff" * (2**20 + 1)), 413, "limit")

    def chunks():
        for _ in range(20):
            yield b"\xff" * 2**17

    expect_error(client.post(predict, content=chunks()), 413, "limit")
    for bad in ("2", "-0.1", "nan", "abc"):
        expect_error(
            client.post(f"{predict}?score_threshold={bad}", content=jpeg),
            400,
            "score_threshold",
            repr(bad),
        )
    expect_error(
        client.post(f"{predict}?mask_format=bmp", content=jpeg), 400, "mask_format", "'bmp'"
    )
    assert client.post(predict, content=jpeg).status_code == 200


def _v2(shape, datatype="FP32", name="images", data=None):
    """A V2 request body with one input (zeros of ``shape`` unless ``data`` is given)."""
    values = [0.0] * int(np.prod(shape)) if data is None else data
    return {"inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": values}]}


def test_bad_v2_requests_name_the_input(client):
    infer = "/v2/models/ssd/infer"
    expect_error(client.post(infer, json=_v2([1, 3, 32, 32])), 400, "'images'", "[-1, 3, 64, 64]")
    expect_error(
        client.post(infer, json=_v2([1, 3, 64, 64], "INT64")), 400, "'images'", "FP32", "INT64"
    )
    expect_error(
        client.post(infer, json=_v2([1, 3, 64, 64], name="pixels")), 400, "'pixels'", "'images'"
    )
    expect_error(
        client.post(infer, json=_v2([1, 3, 64, 64], data=[0.0] * 5)), 400, "'images'", "5 elements"
    )
    expect_error(
        client.post(infer, json=_v2([1, 3, 64, 64], data=["a"] * (3 * 64 * 64))), 400, "'images'"
    )
    expect_error(client.post(infer, json=_v2([9, 3, 64, 64])), 400, "--max-batch 8")
    expect_error(
        client.post(infer, json={**_v2([1, 3, 64, 64]), "outputs": [{"name": "x"}]}), 400, "'x'"
    )
    expect_error(client.post(infer, json={"inputs": "images"}), 400, "inputs")
    expect_error(
        client.post(infer, content=b"{not json", headers={"content-type": "application/json"}), 400
    )
    assert client.post(infer, json=_v2([1, 3, 64, 64])).status_code == 200


def test_metrics_count_requests_by_status(client):
    before = client.get("/metrics").text
    client.get("/v2/models/nope")
    text = client.get("/metrics").text

    def count(body: str) -> float:
        key = 'cvkit_requests_total{endpoint="/v2/models/{name}",model="",status="404"}'
        return next(
            (float(line.split()[-1]) for line in body.splitlines() if line.startswith(key)), 0
        )

    assert count(text) == count(before) + 1
    families = ("request_duration_seconds", "queue_duration_seconds", "batch_size")
    for family in (*families, "inference_duration_seconds"):
        assert f"# TYPE cvkit_{family} histogram" in text
