"""fp32 vs fp16 vs int8 exports of the default SSD and FCN: size, CPU speed and accuracy.

Each model is trained briefly from its default config (``configs/ssd.yaml``,
``configs/fcn.yaml``, with fewer epochs and images: see ``BUDGETS``), then exported three ways
through the same code as ``cvkit export`` (fp32 with a dynamic batch; ``--half``; ``--int8``,
static QDQ calibrated on 200 train images). For each file: its size, the runtime predictor's
p50 latency at batch 1 and throughput at batch 8 on the CPU (2 threads, the val images at
their original size, pre- and post-processing included; the three take turns, each turn an
untimed call then 5 timed ones: :func:`bench_runtime.compare`), and its val-split accuracy
through the runtime (mAP@.5 for SSD, mIoU for FCN). Then onnxruntime's own profiler splits the
fp32 and int8 graphs' time at batch 8 (graph only) into the convolutions and the rest, which
shows the most int8 can gain on this CPU. Writes ``benchmarks/results/precision.md``.

    cd benchmarks && python bench_precision.py [--iterations 30]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from bench_runtime import THREADS, compare
from machine import cpu_model, uptime

from cvkit.config import load_config
from cvkit.config.export import ExportConfig
from cvkit.engine.commands import run_training
from cvkit.engine.tasks import get_task
from cvkit.export.commands import export_checkpoint
from cvkit.export.quantize import evaluate_weights, export_reduced, gate_metric
from cvkit.logs import setup_logging
from cvkit.runtime import load_predictor
from cvkit.runtime.preprocess import preprocess

ROOT = Path(__file__).resolve().parents[1]
# Short trainings that still give non-trivial accuracy on 2 shared CPU cores.
BUDGETS = {
    "ssd": ["train.epochs=4", "train.val_every=4"],
    "fcn": ["data.synthetic.num_train=600", "train.epochs=2", "train.val_every=2"],
}
COMMON = ["device=cpu", "export.after_train=false"]
TARGET_SPEEDUP, TARGET_DROP = 1.5, 0.01
CONV_OPS = frozenset({"Conv", "QLinearConv", "ConvTranspose", "ConvInteger", "FusedConv"})
PROFILED_RUNS = 30


def _simd() -> str:
    """Which of AVX2 / AVX-512 / VNNI the CPU flags list (int8 kernels depend on them)."""
    flags = (
        set(Path("/proc/cpuinfo").read_text().split()) if Path("/proc/cpuinfo").exists() else set()
    )
    found = [name for name in ("avx2", "avx512f", "avx512_vnni", "avx_vnni") if name in flags]
    return "flags: " + (", ".join(found) if found else "none of avx2/avx512/vnni")


def graph_profile(path: Path, batch: np.ndarray) -> dict[str, float]:
    """Milliseconds per ``session.run`` of ``batch`` spent in each op type (onnxruntime's
    profiler, kernel time of each node summed over :data:`PROFILED_RUNS` runs; thread spinning
    off, so waiting threads do not count)."""
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.enable_profiling = True
    options.profile_file_prefix = str(path.with_suffix(""))
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: batch}
    session.run(None, feed)
    for _ in range(PROFILED_RUNS):
        session.run(None, feed)
    trace = Path(session.end_profiling())
    events = json.loads(trace.read_text())
    trace.unlink()
    per_op: collections.Counter[str] = collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            per_op[event["args"]["op_name"]] += event["dur"]
    # the warm-up run is profiled too
    return {op: micros / 1e3 / (PROFILED_RUNS + 1) for op, micros in per_op.items()}


def split_profile(per_op: dict[str, float]) -> tuple[float, float]:
    """(milliseconds in convolutions, milliseconds in every other node)."""
    conv = sum(ms for op, ms in per_op.items() if op in CONV_OPS)
    return conv, sum(per_op.values()) - conv


def bench_model(name: str, folder: Path, iterations: int) -> dict:
    """Train ``name`` briefly, export fp32/fp16/int8, time and score each file."""
    config = load_config(ROOT / "configs" / f"{name}.yaml", [*BUDGETS[name], *COMMON])
    start = time.perf_counter()
    run = run_training(config, out=folder / name)
    setup_logging()  # detach the run folder's log file
    train_s = time.perf_counter() - start
    dynamic = ExportConfig(**{**config.export.model_dump(), "dynamic": True})
    paths = {"fp32": export_checkpoint(run.best, folder / f"{name}_fp32.onnx", dynamic).path}
    metric = gate_metric(config.task)
    task = get_task(config.task)(config)
    values = {"fp32": float(evaluate_weights(paths["fp32"], task)[0][metric])}
    reduced = {
        "fp16": export_reduced(
            run.best, folder / f"{name}_fp16.onnx", dynamic.model_copy(update={"half": True})
        ),
        "int8": export_reduced(run.best, folder / f"{name}_int8.onnx", dynamic, "static"),
    }
    for precision, result in reduced.items():
        paths[precision], values[precision] = result.path, result.value
    records = task.build_dataset("val").records
    images = [sample.load_image() for sample in records.samples[:8]]
    predictors = [load_predictor(paths[p], "cpu", threads=THREADS) for p in paths]
    rows = compare(list(paths), [p.predict for p in predictors], images, iterations)
    metadata = predictors[0].metadata
    batch, _ = preprocess(
        images, tuple(metadata.input_size), metadata.resize, metadata.mean, metadata.std
    )
    profiles = {p: split_profile(graph_profile(paths[p], batch)) for p in ("fp32", "int8")}
    for row in rows:
        row["size_mb"] = paths[row["name"]].stat().st_size / 1e6
        row["value"] = values[row["name"]]
    return {
        "name": name,
        "metric": metric,
        "rows": rows,
        "train_s": train_s,
        "epochs": config.train.epochs,
        "num_train": config.data.synthetic.num_train,
        "num_val": len(records),
        "image_size": config.data.image_size,
        "float_checkpoint": reduced["int8"].float_value,
        "image_shape": images[0].shape[:2],
        "profiles": profiles,
    }


def write_report(out: Path, results: list[dict], machine: dict[str, str], iterations: int) -> None:
    """The results file: machine, budgets, one table per model, targets met or not."""
    lines = [
        "# Reduced precision: fp32 vs fp16 vs int8 exports on the CPU",
        "",
        f"`cd benchmarks && python bench_precision.py --iterations {iterations}` — one run, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. CPU: {machine['cpu']} "
        f"({os.cpu_count()} cores visible; {machine['simd']}), onnxruntime "
        f"{onnxruntime.__version__} CPU EP with {THREADS} intra-op threads, torch "
        f"{torch.__version__}. Other jobs on the machine show in the load averages below; the "
        "three precisions take turns (an untimed call, then 5 timed ones: the previous session's "
        "threads spin on for a while after its call), which keeps their ratios fair under load.",
        "",
        f"- `uptime` before: `{machine['before']}`",
        f"- `uptime` after: `{machine['after']}`",
        "",
        "Latency: p50 over the calls at batch 1 (one val image at its original size, runtime "
        "pre- and post-processing included); throughput: 8 images per call. Accuracy: the "
        f"synthetic val split ({results[0]['num_val']} images) through the runtime "
        "(`cvkit eval --weights file.onnx`). int8: static QDQ, uint8 activations, per-channel "
        "int8 weights, 200 train images for calibration, the tail after the last weighted op "
        "kept float.",
    ]
    verdicts = []
    for result in results:
        rows = {row["name"]: row for row in result["rows"]}
        fp32 = rows["fp32"]
        lines += [
            "",
            f"## {result['name']} ({result['metric']})",
            "",
            f"Training budget: {result['epochs']} epochs on {result['num_train']} synthetic "
            f"train images, {result['image_size']} px input, took {result['train_s']:.0f} s "
            f"(float checkpoint {result['metric']} {result['float_checkpoint']:.4f} in torch).",
            "",
            f"| precision | file (MB) | p50 batch 1 (ms) | batch 8 (img/s) | x fp32 "
            f"throughput | val {result['metric']} | drop vs fp32 |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for row in result["rows"]:
            lines.append(
                f"| {row['name']} | {row['size_mb']:.2f} | {row['p50_ms']:.1f} | "
                f"{row['throughput']:.1f} | {row['throughput'] / fp32['throughput']:.2f} | "
                f"{row['value']:.4f} | {fp32['value'] - row['value']:+.4f} |"
            )
        (conv32, rest32), (conv8, rest8) = result["profiles"]["fp32"], result["profiles"]["int8"]
        lines += [
            "",
            "Graph only, batch 8, onnxruntime's profiler (node kernel time per run, ms):",
            "",
            "| precision | convolutions | every other node | total |",
            "|---|---:|---:|---:|",
            f"| fp32 | {conv32:.2f} | {rest32:.2f} | {conv32 + rest32:.2f} |",
            f"| int8 | {conv8:.2f} | {rest8:.2f} | {conv8 + rest8:.2f} |",
            f"| fp32 / int8 | {conv32 / conv8:.2f}x | {rest32 / rest8:.2f}x | "
            f"{(conv32 + rest32) / (conv8 + rest8):.2f}x |",
        ]
        int8 = rows["int8"]
        speedup = int8["throughput"] / fp32["throughput"]
        drop = fp32["value"] - int8["value"]
        met = speedup >= TARGET_SPEEDUP and drop <= TARGET_DROP
        verdicts.append(
            f"- {result['name']}: int8 {speedup:.2f}x fp32 throughput (target ≥ "
            f"{TARGET_SPEEDUP}x), {result['metric']} drop {100 * drop:.2f} points (target ≤ "
            f"{100 * TARGET_DROP:.0f}): **{'met' if met else 'not met'}**."
        )
    lines += ["", "## Targets (CPU: int8 ≥ 1.5x fp32 throughput, ≤ 1 point drop)", "", *verdicts]
    lines += [
        "- fp16 files are meant for GPUs; their CPU rows say nothing about GPU speed.",
        "- No GPU on this machine: no CUDA/TensorRT rows.",
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--models", nargs="+", default=["ssd", "fcn"], choices=sorted(BUDGETS))
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "precision.md"
    )
    args = parser.parse_args()
    setup_logging()
    cpu, before = cpu_model(), uptime()
    torch.set_num_threads(THREADS)
    with tempfile.TemporaryDirectory() as folder:
        results = [bench_model(name, Path(folder), args.iterations) for name in args.models]
    machine = {"cpu": cpu, "simd": _simd(), "before": before, "after": uptime()}
    write_report(args.out, results, machine, args.iterations)
    for result in results:
        for row in result["rows"]:
            print(result["name"], row)


if __name__ == "__main__":
    main()
