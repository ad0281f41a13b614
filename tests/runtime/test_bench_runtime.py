"""Smoke test of benchmarks/bench_runtime.py at a tiny size (speed is measured by `make bench`)."""

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_runtime.py"


def test_bench_runtime_writes_its_table(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH.parent))  # the benchmarks import their machine.py
    spec = importlib.util.spec_from_file_location("bench_runtime", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "runtime.md"
    overrides = [
        "model.backbone=resnet18_tiny",
        "data.image_size=64",
        "model.ssd.extra_channels=16",
    ]
    rows = bench.run(None, 1, out, overrides, image_shape=(48, 64))
    assert [row["name"] for row in rows[:2]] == ["PyTorch eager (CPU)", "onnxruntime (CPU EP)"]
    assert all(row["p95_ms"] >= row["p50_ms"] > 0 and row["throughput"] > 0 for row in rows)
    text = out.read_text()
    assert "| onnxruntime (CPU EP) |" in text and "lower p50 latency" in text
