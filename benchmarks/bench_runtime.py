"""Eager PyTorch vs the onnxruntime runtime, end to end, on the same detector and images.

Both pipelines take RGB ``uint8`` images of their original size and return detections in
original pixels: pre-processing (the config's letterbox/resize + normalize, the same numpy
code for both, so the comparison is about the model and its post-processing), the model (eager
``SSD`` in eval mode with torch NMS, or the exported graph with NMS inside), and mapping boxes
back. Measured in one run on the CPU with 2 threads (torch intra-op threads and onnxruntime
intra-op threads; eager PyTorch with 1 thread as context), plus the CUDA provider against torch
on CUDA when a GPU is present. Writes ``benchmarks/results/runtime.md``.

    python benchmarks/bench_runtime.py [--cfg configs/ssd.yaml] [--iterations 50]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from machine import cpu_model

from cvkit.config import Config, load_config
from cvkit.config.export import ExportConfig
from cvkit.export.onnx import export_model, metadata_from_config
from cvkit.models.build import build_model
from cvkit.runtime import Detector

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["circle", "rectangle", "triangle"]
THREADS = 2


def torch_pipeline(model: torch.nn.Module, detector: Detector, device: str) -> Callable:
    """Eager PyTorch end to end, sharing the runtime's numpy pre-processing."""
    model = model.to(device).eval()

    def predict(images: list[np.ndarray]) -> list[np.ndarray]:
        batch, geometries = detector.preprocess(images)
        with torch.inference_mode():
            outputs = model(torch.from_numpy(batch).to(device))
        return [
            geometry.boxes_to_original(output.boxes.cpu().numpy())
            for output, geometry in zip(outputs, geometries, strict=True)
        ]

    return predict


def one_thread(predict: Callable) -> Callable:
    """``predict`` run with one torch intra-op thread (the previous count is restored)."""

    def wrapped(images: list[np.ndarray]) -> list[np.ndarray]:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return predict(images)
        finally:
            torch.set_num_threads(threads)

    return wrapped


def interleaved_timings(
    pipelines: list[Callable],
    images: list[np.ndarray],
    iterations: int,
    warmup: int = 2,
    block: int = 5,
) -> list[list[float]]:
    """Seconds per call of each pipeline (``iterations`` calls each), after ``warmup`` calls.

    The pipelines take turns, so a busy machine slows them alike and the ratio stays fair. A
    turn is an untimed call, then up to ``block`` timed ones: the thread pools of the pipeline
    before (an onnxruntime session's or torch's) keep spinning for a while after its call
    returns, and calls timed right after another pipeline's, call by call, measured them up to
    3x slower (and at random) than in a process of their own.
    """
    for predict in pipelines:
        for _ in range(warmup):
            predict(images)
    seconds: list[list[float]] = [[] for _ in pipelines]
    while len(seconds[0]) < iterations:
        calls = min(block, iterations - len(seconds[0]))
        for predict, record in zip(pipelines, seconds, strict=True):
            predict(images)
            for _ in range(calls):
                start = time.perf_counter()
                predict(images)
                record.append(time.perf_counter() - start)
    return seconds


def compare(
    names: list[str], pipelines: list[Callable], images: list[np.ndarray], iterations: int
) -> list[dict]:
    """Latency p50/p95 at batch 1 and throughput at batch 8 of each pipeline."""
    single = interleaved_timings(pipelines, images[:1], iterations, min(2, iterations))
    batched = interleaved_timings(pipelines, images[:8], max(1, iterations // 5), 1)
    return [
        {
            "name": name,
            "p50_ms": 1000 * statistics.median(one),
            "p95_ms": 1000 * float(np.percentile(one, 95)),
            "throughput": 8 / statistics.median(eight),
        }
        for name, one, eight in zip(names, single, batched, strict=True)
    ]


def run(
    cfg: Path | None,
    iterations: int,
    out: Path | None,
    overrides: Sequence[str] = (),
    image_shape: tuple[int, int] = (480, 640),
) -> list[dict]:
    """Build the config's model with seeded random weights, export it, time both pipelines."""
    torch.manual_seed(0)
    torch.set_num_threads(THREADS)
    config = load_config(cfg, overrides)
    model = build_model(config, len(CLASSES)).eval()
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (*image_shape, 3), dtype=np.uint8) for _ in range(8)]
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.onnx"
        export_model(model, path, metadata_from_config(config, CLASSES), ExportConfig(dynamic=True))
        detector = Detector(path, providers="cpu", threads=THREADS)
        torch_cpu = torch_pipeline(model, detector, "cpu")
        rows += compare(
            ["PyTorch eager (CPU)", "onnxruntime (CPU EP)", "PyTorch eager (CPU, 1 thread)"],
            [torch_cpu, detector.predict, one_thread(torch_cpu)],
            images,
            iterations,
        )
        if torch.cuda.is_available():
            gpu = Detector(path, providers="cuda")
            rows += compare(
                ["PyTorch eager (CUDA)", "onnxruntime (CUDA EP)"],
                [torch_pipeline(model, gpu, "cuda"), gpu.predict],
                images,
                iterations,
            )
    if out is not None:
        write_report(out, rows, config, iterations, image_shape)
    return rows


def write_report(
    out: Path, rows: list[dict], config: Config, iterations: int, image_shape: tuple[int, int]
) -> None:
    """Markdown table with the speed-up of onnxruntime over eager PyTorch per device."""
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    lines = [
        "# Runtime: eager PyTorch vs onnxruntime, end to end",
        "",
        f"`python benchmarks/bench_runtime.py` — {config.model.name} ({config.model.backbone}), "
        f"input {config.data.image_size}x{config.data.image_size}, seeded random weights, "
        f"{image_shape[1]}x{image_shape[0]} RGB images; pre-processing ({config.data.resize} + "
        f"normalize, the same numpy code for both), model (with NMS) and mapping boxes back to "
        f"original pixels are all timed. CPU rows: {THREADS} threads unless marked "
        f"({cpu_model()}, {os.cpu_count()} cores); latency over "
        f"{iterations} calls at batch 1 after warm-up, throughput at batch 8; the pipelines "
        "take turns (an untimed call, then 5 timed ones). Load average (1, 5, 15 min) at "
        f"the end: {load}. "
        f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}.",
        "",
        "| pipeline | latency p50 (ms) | latency p95 (ms) | throughput batch 8 (img/s) |",
        "|---|---:|---:|---:|",
    ]
    lines += [
        f"| {r['name']} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['throughput']:.1f} |"
        for r in rows
    ]
    lines.append("")
    for ort_row in (row for row in rows if row["name"].startswith("onnxruntime")):
        device = ort_row["name"].split("(")[1].split()[0]
        for torch_row in (r for r in rows if r["name"].startswith(f"PyTorch eager ({device}")):
            latency = torch_row["p50_ms"] / ort_row["p50_ms"]
            throughput = ort_row["throughput"] / torch_row["throughput"]
            lines.append(
                f"- {ort_row['name']}: {latency:.2f}x lower p50 latency and {throughput:.2f}x "
                f"the throughput of {torch_row['name']}."
            )
    lines.append(
        "- Target on CPU: onnxruntime >= 2x eager PyTorch, both with 2 threads. The 1-thread "
        "PyTorch row is context: on a busy machine (see the load average) PyTorch's 2 OpenMP "
        "threads wait on each other and slow down far more than one thread does."
    )
    if not any("CUDA" in row["name"] for row in rows):
        lines.append("- No GPU on this machine: no CUDA rows.")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cfg", type=Path, default=ROOT / "configs" / "ssd.yaml")
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "runtime.md")
    args = parser.parse_args()
    for row in run(args.cfg, args.iterations, args.out):
        print(row)


if __name__ == "__main__":
    main()
