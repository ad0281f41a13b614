"""Triton's HTTP extensions as ``tritonclient.http`` calls them: model configuration,
statistics and the repository index.

References: the configuration is compared with the ``.onnx`` graph read by ``onnx`` in the test
process (types, fixed and free axes, the batch axis); the statistics with the requests the test
sent to a fresh server, counted by hand; the URLs, methods and bodies are the client's
(``get_model_config``, ``get_inference_statistics``, ``get_model_repository_index`` posts an
empty body, ``load_model``/``unload_model`` post JSON).
"""

from __future__ import annotations

import time

import cv2
import httpx
import numpy as np
import onnx
import pytest
from onnx import TensorProto
from serve_checks import expect_error

CONFIG_TYPES = {
    TensorProto.FLOAT: "TYPE_FP32",
    TensorProto.FLOAT16: "TYPE_FP16",
    TensorProto.INT64: "TYPE_INT64",
    TensorProto.INT32: "TYPE_INT32",
    TensorProto.UINT8: "TYPE_UINT8",
    TensorProto.BOOL: "TYPE_BOOL",
}
UNMEASURED = {"count": 0, "ns": 0}


def _graph_tensors(path) -> dict[str, list[tuple[str, str, list[int]]]]:
    """``input``/``output`` of the file as (name, Triton type, shape with -1 for free axes)."""
    graph = onnx.load(str(path)).graph
    weights = {tensor.name for tensor in graph.initializer}

    def described(values):
        return [
            (
                value.name,
                CONFIG_TYPES[value.type.tensor_type.elem_type],
                [
                    dim.dim_value if dim.HasField("dim_value") else -1
                    for dim in value.type.tensor_type.shape.dim
                ],
            )
            for value in values
            if value.name not in weights
        ]

    return {"input": described(graph.input), "output": described(graph.output)}


def test_server_metadata_lists_what_is_served(client):
    extensions = client.get("/v2").json()["extensions"]
    assert {"binary_tensor_data", "model_configuration", "statistics"} <= set(extensions)
    # index only: load and unload are not supported, so the extension is not claimed
    assert "model_repository" not in extensions


@pytest.mark.parametrize("name", ["ssd", "static", "seg"])
def test_model_config_follows_the_graph(client, model_folder, name):
    """The session server runs ``--max-batch 8 --max-delay-ms 30`` with one worker on the CPU."""
    graph = _graph_tensors(model_folder / f"{name}.onnx")
    batched = graph["input"][0][2][0] == -1
    assert batched == (name != "static")
    config = client.get(f"/v2/models/{name}/config").json()
    assert config["name"] == name
    assert config["platform"] == "onnxruntime_onnx"
    assert config["backend"] == "onnxruntime"
    assert config["max_batch_size"] == (8 if batched else 0)
    for kind in ("input", "output"):
        expected = []
        for tensor, dtype, shape in graph[kind]:
            # with a batch, Triton's dims leave the batch axis out; a lone batch axis is
            # written as dims [1] reshaped to []
            dims = shape[1:] if batched else shape
            entry = {"name": tensor, "data_type": dtype, "dims": dims or [1]}
            expected.append(entry if dims else {**entry, "reshape": {"shape": []}})
        assert config[kind] == expected
    assert config["instance_group"] == [{"name": name, "kind": "KIND_CPU", "count": 1}]
    assert config["default_model_filename"] == f"{name}.onnx"
    if batched:
        assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 30_000
    else:
        assert "dynamic_batching" not in config
    assert client.get(f"/v2/models/{name}/versions/1/config").json() == config


def test_model_config_of_what_is_not_served(client):
    unknown = client.get("/v2/models/nope/config")
    assert unknown.status_code == 404
    assert "'nope'" in unknown.json()["error"] and "ssd" in unknown.json()["error"]
    version = expect_error(client.get("/v2/models/ssd/versions/2/config"), 404)
    assert "'ssd'" in version and "version '2'" in version


def _seg_request(rows: int, datatype: str = "FP32", size: int = 16) -> dict:
    """A V2 body for the identity segmenter: ``rows`` images of ``size`` pixels."""
    values = np.random.default_rng(rows).random((rows, 3, size, size), dtype=np.float32)
    tensor = {"name": "images", "shape": list(values.shape), "datatype": datatype}
    return {"inputs": [{**tensor, "data": values.ravel().tolist()}]}


def test_statistics_count_the_requests_served(model_folder, launch):
    """A fresh server, requests one at a time (each its own batch): 4 answered (V2 batches of
    2, 1 and 3 rows, one image), 2 refused; requests that are not inference do not count."""
    server = launch([model_folder / "seg.onnx", model_folder / "static.onnx"])
    started_ms = time.time() * 1000
    with httpx.Client(base_url=server.url, timeout=30) as client:
        infer = "/v2/models/seg/infer"
        for rows in (2, 1, 3):
            assert client.post(infer, json=_seg_request(rows)).status_code == 200
        png = cv2.imencode(".png", np.full((16, 16, 3), 200, np.uint8))[1].tobytes()
        assert client.post("/v1/models/seg/predict", content=png).status_code == 200
        assert client.post(infer, json=_seg_request(1, datatype="INT64")).status_code == 400
        assert client.post(infer, json=_seg_request(1, size=0)).status_code == 400
        assert client.get("/v2/models/seg").status_code == 200
        assert client.post("/v2/models/nope/infer", json={}).status_code == 404
        finished_ms = time.time() * 1000
        seg = client.get("/v2/models/seg/stats").json()
        everything = client.get("/v2/models/stats").json()
        versioned = client.get("/v2/models/seg/versions/1/stats").json()
        expect_error(client.get("/v2/models/nope/stats"), 404, "'nope'")
        expect_error(client.get("/v2/models/seg/versions/3/stats"), 404, "version '3'")
    (stat,) = seg["model_stats"]
    assert stat["name"] == "seg" and stat["version"] == "1"
    assert stat["inference_count"] == 2 + 1 + 3 + 1
    assert stat["execution_count"] == 4
    assert started_ms <= stat["last_inference"] <= finished_ms
    counts = {key: value["count"] for key, value in stat["inference_stats"].items()}
    assert counts == {
        "success": 4,
        "fail": 2,
        "queue": 4,
        "compute_input": 0,
        "compute_infer": 4,
        "compute_output": 0,
        "cache_hit": 0,
    }
    times = stat["inference_stats"]
    assert times["fail"]["ns"] > 0 and times["compute_infer"]["ns"] > 0
    # one request per batch: each answer's time holds its wait and its batch's run
    assert times["success"]["ns"] >= times["queue"]["ns"] + times["compute_infer"]["ns"]
    assert stat["batch_stats"] == []
    assert [entry["name"] for entry in everything["model_stats"]] == ["seg", "static"]
    idle = everything["model_stats"][1]
    assert idle["inference_count"] == idle["execution_count"] == idle["last_inference"] == 0
    assert all(value == UNMEASURED for value in idle["inference_stats"].values())
    # the second read saw the first stats request go by, which is not an inference
    assert everything["model_stats"][0]["inference_stats"] == stat["inference_stats"]
    assert versioned == seg


def test_statistics_cover_every_worker(model_folder, launch):
    """Two worker processes: whichever answers the stats request reports both workers' runs."""
    server = launch([model_folder / "seg.onnx"], "--workers", "2", "--max-delay-ms", "0")
    requests = 12
    # a new connection per request, so that the kernel spreads them over both processes
    for rows in range(1, requests + 1):
        answer = httpx.post(f"{server.url}/v2/models/seg/infer", json=_seg_request(rows))
        assert answer.status_code == 200
    for _ in range(4):
        stats = httpx.get(f"{server.url}/v2/models/seg/stats", timeout=30).json()
        (stat,) = stats["model_stats"]
        assert stat["inference_stats"]["success"]["count"] == requests
        assert stat["execution_count"] == requests
        assert stat["inference_count"] == requests * (requests + 1) // 2
    config = httpx.get(f"{server.url}/v2/models/seg/config", timeout=30).json()
    assert config["instance_group"][0]["count"] == 2


def test_repository_index_lists_the_served_models(client):
    expected = [
        {"name": name, "version": "1", "state": "READY", "reason": ""}
        for name in ("seg", "ssd", "static")
    ]
    # tritonclient posts an empty body without a content type
    request = client.build_request("POST", "/v2/repository/index", content=b"")
    assert "content-type" not in request.headers
    assert client.send(request).json() == expected
    assert client.post("/v2/repository/index", json={"ready": True}).json() == expected
    expect_error(client.post("/v2/repository/index", json={"ready": "yes"}), 400, "ready")
    expect_error(client.post("/v2/repository/index", content=b"{ready"), 400, "not JSON")


def test_load_and_unload_are_refused_by_name(client):
    expect_error(client.post("/v2/repository/models/other/load", json={}), 400, "load", "'other'")
    unload = {"parameters": {"unload_dependents": False}}
    expect_error(
        client.post("/v2/repository/models/ssd/unload", json=unload), 400, "unload", "'ssd'"
    )
    expect_error(client.post("/v2/repository/models/nope/unload", json=unload), 404, "'nope'")
    assert client.get("/v2/models/ssd/ready").json() == {"ready": True}
