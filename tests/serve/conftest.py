"""Served models and real uvicorn servers on loopback, started once per session.

The models: ``ssd`` (a seeded tiny SSD exported with a dynamic batch and NMS in the graph),
``static`` (the runtime tests' mean-colour classifier, fixed batch 1) and ``seg`` (an identity
"segmenter": the class of a pixel is its largest normalized channel). The test process builds
them (with torch for the SSD); each server is a ``python -m cvkit serve`` child process.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import onnx
import pytest
from onnx import TensorProto, helper

from cvkit.runtime.metadata import ModelMetadata

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).parent))
SSD_CLASSES = ["circle", "rectangle", "triangle"]
SEG_CLASSES = ("background", "green", "blue")


def _runtime_conftest():
    spec = importlib.util.spec_from_file_location(
        "runtime_conftest", ROOT / "tests" / "runtime" / "conftest.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def export_tiny_ssd(path: Path, dynamic: bool = True) -> Path:
    """A seeded, untrained 64-px SSD (quarter-width ResNet-18) exported with NMS in the graph."""
    import torch

    from cvkit.config import load_config
    from cvkit.config.export import ExportConfig
    from cvkit.export.onnx import export_model, metadata_from_config
    from cvkit.models.build import build_model

    config = load_config(
        None,
        [
            "model.backbone=resnet18_tiny",
            "data.image_size=64",
            "model.ssd.extra_channels=16",
            "eval.score_threshold=0.2",
            "eval.max_det=20",
        ],
    )
    torch.manual_seed(0)
    model = build_model(config, len(SSD_CLASSES)).eval()
    metadata = metadata_from_config(config, SSD_CLASSES)
    export_model(model, path, metadata, ExportConfig(dynamic=dynamic))
    return path


def write_identity_segmenter(path: Path, size: int = 16) -> Path:
    """``logits [B, 3, H, W]`` = the normalized input itself, dynamic batch, height and width."""
    images = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["b", 3, "h", "w"])
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", 3, "h", "w"])
    node = helper.make_node("Identity", ["images"], ["logits"])
    graph = helper.make_graph([node], "identity", [images], [logits])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    metadata = ModelMetadata(task="segment", classes=SEG_CLASSES, input_size=(size, size))
    helper.set_model_props(model, metadata.to_props())
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="session")
def model_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("models")
    export_tiny_ssd(folder / "ssd.onnx")
    _runtime_conftest().write_mean_colour_model(folder / "static.onnx", batch=1)
    write_identity_segmenter(folder / "seg.onnx")
    return folder


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    """A ``cvkit serve`` child process and its base URL."""

    process: subprocess.Popen
    url: str

    def stop(self) -> int:
        """SIGTERM, then the exit code (killed after 20 s)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def start_server(models: list[Path], *options: str, timeout: float = 60) -> Server:
    """Start ``python -m cvkit serve MODELS OPTIONS`` on a free loopback port; wait for ready.

    One worker process unless ``OPTIONS`` say otherwise, so that what a test sends reaches one
    set of batchers (``auto`` would start one per core).
    """
    port = free_port()
    command = [sys.executable, "-m", "cvkit", "serve", *map(str, models), "--port", str(port)]
    environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [*command, "--providers", "cpu", "--workers", "1", *options], env=environment
    )
    server = Server(process, f"http://127.0.0.1:{port}")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"cvkit serve exited with {process.returncode}")
        try:
            if httpx.get(f"{server.url}/v2/health/ready", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"cvkit serve did not become ready within {timeout} s")


@pytest.fixture(scope="session")
def server(model_folder):
    """The main server: every test model, batches of up to 8 gathered for 30 ms, 1 MB uploads."""
    running = start_server(
        [model_folder], "--max-batch", "8", "--max-delay-ms", "30", "--max-upload-mb", "1"
    )
    yield running
    running.stop()


@pytest.fixture(scope="session")
def client(server):
    with httpx.Client(base_url=server.url, timeout=30) as session:
        yield session


@pytest.fixture
def launch():
    """``launch(models, *options)`` starts a server for one test; it is stopped afterwards."""
    started: list[Server] = []

    def start(models: list[Path], *options: str) -> Server:
        started.append(start_server(models, *options))
        return started[-1]

    yield start
    for running in started:
        running.stop()
