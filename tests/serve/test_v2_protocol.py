"""The V2 endpoints as Triton's HTTP client (``tritonclient.http``) speaks to them, by hand.

Requests are built here the way that client builds them, from the KServe V2 REST specification
and Triton's binary tensor data extension: the infer body without a ``Content-Type`` header,
tensors as raw little-endian bytes after the JSON (its length in ``Inference-Header-Content-
Length``), outputs asked for as binary (``binary_data`` per output, ``binary_data_output`` for
all), gzip/deflate request bodies and the ``/versions/{version}`` URLs. The answers are
compared with the graph run in the test process; every bad request must get a 400 naming what
is wrong while the server keeps serving.
"""

from __future__ import annotations

import gzip
import json
import zlib
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
from serve_checks import expect_error

from cvkit.runtime import load_predictor
from cvkit.serve.v2 import InferenceRequest, V2Error, request_tensor

HEADER = "Inference-Header-Content-Length"
V2_DTYPES = {"FP32": np.dtype("<f4"), "INT64": np.dtype("<i8")}


@pytest.fixture(scope="module")
def detector(model_folder):
    return load_predictor(model_folder / "ssd.onnx", "cpu")


def _batch(rows: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((rows, 3, 64, 64), dtype=np.float32)


def _binary_body(request: dict, *tensors: np.ndarray) -> tuple[bytes, dict[str, str]]:
    """The JSON of ``request`` followed by the tensors' raw bytes, and the length header."""
    header = json.dumps(request).encode()
    raw = b"".join(tensor.astype(tensor.dtype.newbyteorder("<")).tobytes() for tensor in tensors)
    return header + raw, {HEADER: str(len(header))}


def _binary_input(batch: np.ndarray, name: str = "images") -> dict:
    return {
        "name": name,
        "shape": list(batch.shape),
        "datatype": "FP32",
        "parameters": {"binary_data_size": batch.nbytes},
    }


def _outputs(response: httpx.Response) -> tuple[dict, dict[str, np.ndarray]]:
    """The JSON part of an infer answer and its outputs as arrays (JSON or binary)."""
    assert response.status_code == 200, response.text
    length = response.headers.get(HEADER)
    split = len(response.content) if length is None else int(length)
    body = json.loads(response.content[:split])
    arrays = {}
    offset = split
    for output in body["outputs"]:
        dtype = V2_DTYPES[output["datatype"]]
        size = (output.get("parameters") or {}).get("binary_data_size")
        if size is None:
            arrays[output["name"]] = np.asarray(output["data"], dtype).reshape(output["shape"])
            continue
        assert "data" not in output
        raw = response.content[offset : offset + size]
        arrays[output["name"]] = np.frombuffer(raw, dtype).reshape(output["shape"])
        offset += size
    assert offset == len(response.content)
    return body, arrays


def _same_as_graph(arrays: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    for name, got in arrays.items():
        assert got.dtype == expected[name].dtype
        np.testing.assert_allclose(got, expected[name], atol=1e-4)


def test_server_metadata_names_the_binary_extension(client):
    assert "binary_tensor_data" in client.get("/v2").json()["extensions"]


def test_infer_body_without_content_type(client, detector):
    """tritonclient sends its JSON body with no Content-Type header."""
    batch = _batch(1)
    body = {
        "id": "no-type",
        "inputs": [
            {
                "name": "images",
                "shape": [1, 3, 64, 64],
                "datatype": "FP32",
                "data": batch.ravel().tolist(),
            }
        ],
    }
    request = client.build_request("POST", "/v2/models/ssd/infer", content=json.dumps(body))
    assert "content-type" not in request.headers
    answer, arrays = _outputs(client.send(request))
    assert answer["id"] == "no-type"
    _same_as_graph(arrays, detector.model.run(batch))


@pytest.mark.parametrize("rows", [1, 3])
def test_binary_tensors_in_and_out(client, detector, rows):
    batch = _batch(rows, seed=rows)
    expected = detector.model.run(batch)
    # all outputs binary, as tritonclient asks when no outputs are named
    request = {
        "id": f"b{rows}",
        "inputs": [_binary_input(batch)],
        "parameters": {"binary_data_output": True},
    }
    content, headers = _binary_body(request, batch)
    response = client.post("/v2/models/ssd/infer", content=content, headers=headers)
    answer, arrays = _outputs(response)
    assert response.headers["content-type"] == "application/octet-stream"
    assert answer["id"] == f"b{rows}" and answer["model_name"] == "ssd"
    assert [o["name"] for o in answer["outputs"]] == list(expected)
    for output in answer["outputs"]:
        assert output["parameters"] == {"binary_data_size": expected[output["name"]].nbytes}
    _same_as_graph(arrays, expected)
    # one output binary, one as JSON
    request = {
        "inputs": [_binary_input(batch)],
        "outputs": [
            {"name": "boxes", "parameters": {"binary_data": True}},
            {"name": "num_dets", "parameters": {"binary_data": False}},
        ],
    }
    content, headers = _binary_body(request, batch)
    answer, arrays = _outputs(client.post("/v2/models/ssd/infer", content=content, headers=headers))
    assert [o["name"] for o in answer["outputs"]] == ["boxes", "num_dets"]
    assert answer["outputs"][1]["data"] == expected["num_dets"].tolist()
    _same_as_graph(arrays, expected)
    # binary in, all JSON out: no length header, a JSON body
    content, headers = _binary_body({"inputs": [_binary_input(batch)]}, batch)
    response = client.post("/v2/models/ssd/infer", content=content, headers=headers)
    assert HEADER not in response.headers
    assert response.headers["content-type"] == "application/json"
    _same_as_graph(_outputs(response)[1], expected)


def test_versioned_urls(client, detector):
    batch = _batch(1)
    content, headers = _binary_body({"inputs": [_binary_input(batch)]}, batch)
    response = client.post("/v2/models/ssd/versions/1/infer", content=content, headers=headers)
    _same_as_graph(_outputs(response)[1], detector.model.run(batch))
    assert client.get("/v2/models/ssd/versions/1").json() == client.get("/v2/models/ssd").json()
    assert client.get("/v2/models/ssd/versions/1/ready").json() == {"ready": True}
    for answer in (
        client.get("/v2/models/ssd/versions/2"),
        client.get("/v2/models/ssd/versions/2/ready"),
        client.post("/v2/models/ssd/versions/2/infer", content=content, headers=headers),
    ):
        expect_error(answer, 404, "'ssd'", "version '2'")


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [("gzip", gzip.compress), ("deflate", zlib.compress)],
)
def test_compressed_request_bodies(client, detector, encoding, compress):
    batch = _batch(2, seed=7)
    content, headers = _binary_body({"inputs": [_binary_input(batch)]}, batch)
    response = client.post(
        "/v2/models/ssd/infer",
        content=compress(content),
        headers={**headers, "content-encoding": encoding},
    )
    outputs = _outputs(response)[1]
    assert set(outputs) == set(detector.model.output_names)
    _same_as_graph(outputs, detector.model.run(batch))
    broken = client.post(
        "/v2/models/ssd/infer", content=b"not compressed", headers={"content-encoding": encoding}
    )
    assert encoding in expect_error(broken, 400)
    # small on the wire, over the server's 1 MB once inflated
    bomb = compress(b" " * (2 * 2**20))
    assert len(bomb) < 2**20
    inflated = client.post(
        "/v2/models/ssd/infer", content=bomb, headers={"content-encoding": encoding}
    )
    assert "limit" in expect_error(inflated, 413)


def _post(client, request: dict, *tensors: np.ndarray, path: str = "/v2/models/ssd/infer"):
    content, headers = _binary_body(request, *tensors)
    return client.post(path, content=content, headers=headers)


def test_bad_binary_requests_name_what_is_wrong(client):
    infer = "/v2/models/ssd/infer"
    batch = _batch(1)
    images = _binary_input(batch)
    sized = {**images, "parameters": {"binary_data_size": 100}}
    expect_error(
        _post(client, {"inputs": [sized]}, np.zeros(25, np.float32)), 400, "'images'", "49152"
    )
    wrong = {**images, "datatype": "UINT8"}
    expect_error(_post(client, {"inputs": [wrong]}, batch), 400, "'images'", "FP32", "UINT8")
    named = {**images, "name": "pixels"}
    expect_error(_post(client, {"inputs": [named]}, batch), 400, "'pixels'", "'images'")
    text = {**images, "parameters": {"binary_data_size": "big"}}
    expect_error(_post(client, {"inputs": [text]}), 400, "'images'", "binary_data_size")
    classify = {"name": "labels", "parameters": {"classification": 2}}
    expect_error(
        _post(client, {"inputs": [images], "outputs": [classify]}, batch),
        400,
        "'labels'",
        "classification",
    )
    flag = {"inputs": [images], "parameters": {"binary_data_output": "yes"}}
    expect_error(_post(client, flag, batch), 400, "binary_data_output")
    content, headers = _binary_body({"inputs": [images]}, batch)
    expect_error(client.post(infer, content=content[:-4], headers=headers), 400, "binary_data_size")
    expect_error(client.post(infer, content=content, headers={HEADER: "x"}), 400, HEADER)
    too_long = {HEADER: str(len(content) + 1)}
    expect_error(client.post(infer, content=content, headers=too_long), 400, HEADER)
    expect_error(client.post(infer, content=content), 400, "not JSON")
    no_data = {"inputs": [{"name": "images", "shape": [1, 3, 64, 64], "datatype": "FP32"}]}
    expect_error(client.post(infer, json=no_data), 400, "'images'", "no data")
    expect_error(client.post(infer, content=b"[1, 2]"), 400, "body")
    expect_error(client.post(infer, content=b"{}", headers={"content-encoding": "br"}), 400, "'br'")
    assert client.post(infer, content=content, headers=headers).status_code == 200


def test_a_graph_with_more_inputs_than_the_images_is_refused_by_name():
    """Fast R-CNN's graph also takes ``proposals``: V2 infer answers a V2Error (a 400) naming
    the graph's inputs instead of failing inside the server."""
    inputs = [SimpleNamespace(name="images"), SimpleNamespace(name="proposals")]
    model = SimpleNamespace(session=SimpleNamespace(get_inputs=lambda: inputs))
    request = InferenceRequest.model_validate(
        {
            "inputs": [
                {"name": "images", "shape": [1, 3, 2, 2], "datatype": "FP32", "data": [0] * 12}
            ]
        }
    )
    with pytest.raises(V2Error, match=r"\['images', 'proposals'\].*one input"):
        request_tensor(request, model, max_batch=8)
