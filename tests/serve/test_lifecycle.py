"""Server life: the request timeout, several workers, graceful shutdown, no torch.

Each test starts its own ``cvkit serve`` process with the settings it needs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

from cvkit.serve.settings import MAX_AUTO_SERVE_WORKERS, ServeError, ServeSettings, model_files


def _jpeg(seed: int = 0) -> bytes:
    image = np.random.default_rng(seed).integers(0, 256, (48, 64, 3), np.uint8)
    return cv2.imencode(".jpg", image)[1].tobytes()


def _slow_upload(url: str, seconds: float, answers: list[httpx.Response]) -> threading.Thread:
    """A started thread posting a JPEG whose second half is sent ``seconds`` after the first:
    while its body is being read the server counts it as on its way to the batch."""
    data = _jpeg(1)

    def body():
        yield data[: len(data) // 2]
        time.sleep(seconds)
        yield data[len(data) // 2 :]

    thread = threading.Thread(
        target=lambda: answers.append(
            httpx.post(f"{url}/v1/models/ssd/predict", content=body(), timeout=20)
        )
    )
    thread.start()
    time.sleep(0.2)  # its headers and first half have arrived
    return thread


def _total(text: str, endpoint: str, status: str) -> float:
    prefix = f'cvkit_requests_total{{endpoint="{endpoint}",model="ssd",status="{status}"}}'
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(prefix))


def test_timeout_answers_504(model_folder, launch):
    """A batch waits up to 3 s for a slow upload (V2: for company), but requests time out
    after 0.3 s."""
    server = launch([model_folder / "ssd.onnx"], "--max-delay-ms", "3000", "--timeout", "0.3")
    slow: list[httpx.Response] = []
    upload = _slow_upload(server.url, 1.5, slow)
    with httpx.Client(base_url=server.url, timeout=10) as client:
        started = time.perf_counter()
        response = client.post("/v1/models/ssd/predict", content=_jpeg())
        assert response.status_code == 504
        assert "0.3 s timeout" in response.json()["error"]
        assert time.perf_counter() - started < 1.2  # before the slow upload ends
        zeros = [0.0] * (3 * 64 * 64)
        infer = {
            "inputs": [
                {"name": "images", "shape": [1, 3, 64, 64], "datatype": "FP32", "data": zeros}
            ]
        }
        assert client.post("/v2/models/ssd/infer", json=infer).status_code == 504
        upload.join()
        # the slow upload's own wait started once its body was in: it made its batch
        assert slow[0].status_code == 200
        text = client.get("/metrics").text
    assert _total(text, "/v1/models/{name}/predict", "504") == 1
    assert _total(text, "/v1/models/{name}/predict", "200") == 1
    assert server.stop() in (0, -signal.SIGTERM)


def test_workers_share_metrics(model_folder, launch):
    server = launch([model_folder / "ssd.onnx"], "--workers", "2")
    with httpx.Client(base_url=server.url, timeout=10) as client:
        for _ in range(4):
            assert client.get("/v2/models/ssd").status_code == 200
        text = client.get("/metrics").text
    assert _total(text, "/v2/models/{name}", "200") == 4  # summed over both workers
    assert server.stop() in (0, -signal.SIGTERM)


def test_graceful_shutdown_finishes_requests_in_flight(model_folder, launch):
    server = launch([model_folder / "ssd.onnx"], "--max-delay-ms", "3000")
    answers: list[httpx.Response] = []
    upload = _slow_upload(server.url, 1.0, answers)  # its body is still being read
    request = threading.Thread(
        target=lambda: answers.append(
            httpx.post(f"{server.url}/v1/models/ssd/predict", content=_jpeg(), timeout=20)
        )
    )
    request.start()
    time.sleep(0.3)  # the request now waits in the batcher's queue for the slow upload
    # uvicorn re-raises the signal once its graceful shutdown is done
    assert server.stop() in (0, -signal.SIGTERM)
    request.join()
    upload.join()
    assert [answer.status_code for answer in answers] == [200, 200]
    assert all(answer.json()["task"] == "detect" for answer in answers)


def test_a_server_process_imports_no_torch(model_folder):
    code = (
        "import sys; from cvkit.serve import ServeSettings, create_app; "
        f"create_app(ServeSettings(models=({str(model_folder)!r},), providers='cpu')); "
        "print('torch' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


def test_model_paths_and_limits_are_checked(model_folder, tmp_path):
    assert sorted(model_files([model_folder])) == ["seg", "ssd", "static"]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "ssd.onnx").write_bytes(b"")
    cases = {
        "two models are named 'ssd'": [model_folder, tmp_path / "other" / "ssd.onnx"],
        "no such file": [tmp_path / "missing.onnx"],
        "holds no .onnx": [tmp_path],
    }
    for message, paths in cases.items():
        with pytest.raises(ServeError, match=message):
            model_files(paths)
    with pytest.raises(ServeError, match="--max-batch"):
        ServeSettings(models=("m.onnx",), max_batch=0)
    for workers in (0, "many"):
        with pytest.raises(ServeError, match="--workers"):
            ServeSettings(models=("m.onnx",), workers=workers)
    assert ServeSettings(models=("a.onnx",)).spin is False  # the server's threads do not spin
    settings = ServeSettings(models=("a.onnx",), max_delay_ms=2.5, threads=2, spin=True)
    assert ServeSettings.from_json(settings.to_json()) == settings


def test_auto_workers_share_the_cores_on_the_cpu_and_stay_one_on_a_gpu():
    auto = ServeSettings(models=("m.onnx",))
    assert auto.workers == "auto"
    two = auto.resolved(cores=2, cpu_only=True)
    assert (two.workers, two.threads) == (2, 1)
    many = auto.resolved(cores=16, cpu_only=True)
    assert (many.workers, many.threads) == (MAX_AUTO_SERVE_WORKERS, 16 // MAX_AUTO_SERVE_WORKERS)
    one_core = auto.resolved(cores=1, cpu_only=True)
    assert (one_core.workers, one_core.threads) == (1, None)  # onnxruntime's default
    gpu = auto.resolved(cores=16, cpu_only=False)
    assert (gpu.workers, gpu.threads) == (1, None)
    # what the user set is kept
    pinned = ServeSettings(models=("m.onnx",), workers=3, threads=2).resolved(16, True)
    assert (pinned.workers, pinned.threads) == (3, 2)
    assert ServeSettings.from_json(two.to_json()) == two


def test_cvkit_serve_starts_the_auto_workers(model_folder, launch):
    """Without --workers the server starts one process per core (up to the cap) and serves."""
    server = launch([model_folder / "ssd.onnx"], "--workers", "auto")
    expected = min(len(os.sched_getaffinity(0)), MAX_AUTO_SERVE_WORKERS)
    children = subprocess.run(
        ["pgrep", "-P", str(server.process.pid)], capture_output=True, text=True
    ).stdout.split()
    # uvicorn's supervisor spawns the workers with multiprocessing (beside a resource tracker)
    spawned = [
        pid for pid in children if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]
    assert len(spawned) == (expected if expected > 1 else 0)
    with httpx.Client(base_url=server.url, timeout=10) as client:
        assert client.post("/v1/models/ssd/predict", content=_jpeg()).status_code == 200
    assert server.stop() in (0, -signal.SIGTERM)
