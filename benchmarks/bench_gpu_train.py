"""Training throughput and model FLOP utilisation (MFU) on a GPU: cvkit's SSD and Faster R-CNN
against torchvision's classes on the same network, batches and GPU.

The pairs are :mod:`bench_train`'s (SSD) and :mod:`bench_rcnn`'s (Faster R-CNN): the same body,
anchors and initial weights. Each model trains on the same pre-loaded batches, copied to the
device every step as the Trainer copies them (pinned host memory, ``non_blocking``):

- ``cvkit``: as its Trainer trains on the device: on CUDA autocast at ``train.amp``'s dtype
  (``auto``: bf16 where the GPU supports it), on the CPU channels-last; fused AdamW;
- ``torchvision``: as its reference script trains by default: float32, ``torch.optim.AdamW``;
- ``torchvision + cvkit's precision, layout and optimizer``: the same model with cvkit's
  settings, which separates what the model code gains from what the settings gain.

The runs take turns round by round; the median round gives images/s. The FLOPs of one training
step (forward and backward, ``torch.utils.flop_counter``) times steps/s is the achieved rate;
MFU divides it by the GPU's dense bf16 peak (:data:`PEAK_BF16_TFLOPS`, by device name; none on
the CPU or an unknown GPU). Writes ``benchmarks/results/gpu_train.md``.

    python benchmarks/bench_gpu_train.py [--rounds 10] [--steps 10] [--batch 64] [--out PATH]

``--device cpu`` runs the same code on the CPU (no MFU): the tests smoke-run it that way.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import bench_rcnn
import bench_train
import torch
import torchvision
from machine import cpu_model
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from cvkit.config import Config, load_config
from cvkit.engine.optim import build_optimizer
from cvkit.engine.tasks import get_task
from cvkit.engine.trainer import resolve_amp, use_channels_last

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = "torchvision + cvkit's precision, layout and optimizer"
# dense (no sparsity) bf16 tensor-core peaks from the vendors' data sheets, TFLOP/s; the first
# name found in torch.cuda.get_device_name() wins
PEAK_BF16_TFLOPS = {
    "H200": 989.4,
    "H100 PCIe": 756.0,
    "H100": 989.4,
    "A100": 312.0,
    "L40S": 362.1,
    "L4": 121.0,
}
MODELS = {
    "ssd": (ROOT / "configs" / "ssd.yaml", bench_train.bench_config, bench_train.build_pair),
    "faster_rcnn": (
        ROOT / "configs" / "faster_rcnn.yaml",
        lambda overrides: load_config(ROOT / "configs" / "faster_rcnn.yaml", overrides),
        bench_rcnn.build_pair,
    ),
}


@dataclass
class Run:
    """One timed training set-up: a model, its optimizer and its autocast dtype (None: fp32)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    amp: torch.dtype | None


def peak_tflops(device: torch.device) -> float | None:
    """The device's dense bf16 peak in TFLOP/s, or None (CPU, or a GPU not in the table)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_TFLOPS.items() if key in name), None)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def training_step(run: Run, task, batch, device: torch.device) -> None:
    """Copy ``batch`` to ``device`` as the Trainer does, then forward, backward and step."""
    images, targets = task.to_device(batch, device)
    autocast = torch.autocast(device.type, dtype=run.amp, enabled=run.amp is not None)
    with autocast:
        losses = run.model(images, targets)
    run.optimizer.zero_grad(set_to_none=True)
    sum(losses.values()).backward()
    run.optimizer.step()


def step_flops(run: Run, task, batch, device: torch.device) -> int:
    """FLOPs of one training step's convolutions and matrix products, forward and backward (what
    ``FlopCounterMode`` counts; element-wise ops, RoIAlign and the optimizer are not)."""
    counter = FlopCounterMode(display=False)
    with counter:
        training_step(run, task, batch, device)
    return counter.get_total_flops()


def images_per_second(
    runs: dict[str, Run], task, batches: list, device: torch.device, rounds: int
) -> dict[str, float]:
    """Median images/s of each run over ``rounds`` alternating rounds (after one warm-up)."""
    images = sum(len(batch[0]) for batch in batches)

    def rate(run: Run) -> float:
        run.model.train()
        synchronize(device)
        start = time.perf_counter()
        for batch in batches:
            training_step(run, task, batch, device)
        synchronize(device)
        return images / (time.perf_counter() - start)

    return bench_train.median_of_rounds(runs, rounds, rate, warmup=True)


def set_up(config: Config, build: Callable, num_classes: int, device: torch.device):
    """The three runs of one model pair on ``device``; cvkit's settings (autocast dtype,
    memory format, optimizer) as its Trainer picks them for ``device``."""
    amp = resolve_amp(config.train.amp, device)
    ours, theirs = (model.to(device) for model in build(config, num_classes))
    tuned = build(config, num_classes)[1].to(device)
    for model in (ours, tuned):
        if use_channels_last(config.train.channels_last, device, model):
            model.to(memory_format=torch.channels_last)
    reference = torch.optim.AdamW(theirs.parameters(), lr=config.train.lr)
    return {
        "cvkit": Run(ours, build_optimizer(ours, config.train), amp),
        "torchvision": Run(theirs, reference, None),
        SETTINGS: Run(tuned, build_optimizer(tuned, config.train), amp),
    }


def measure(name: str, args, device: torch.device) -> list[str]:
    """Markdown rows of one model pair: images/s, FLOPs per image, TFLOP/s and MFU."""
    path, load, build = MODELS[name]
    overrides = ["train.plots=false", f"data.batch_size={args.batch}", *args.overrides]
    config = load(overrides)
    task = get_task(config.task)(config)
    train_set = task.build_dataset("train")
    loader = task.build_loader(train_set, train=True)
    batches = [batch for batch, _ in zip(loader, range(args.steps), strict=False)]
    runs = set_up(config, build, len(train_set.classes), device)
    rates = images_per_second(runs, task, batches, device, args.rounds)
    peak = peak_tflops(device)
    rows = []
    for run_name, run in runs.items():
        flops = step_flops(run, task, batches[0], device) / len(batches[0][0])
        achieved = flops * rates[run_name] / 1e12
        mfu = f"{achieved / peak:.1%}" if peak else "—"
        rows.append(
            f"| {path.name} | {run_name} | {str(run.amp or torch.float32).removeprefix('torch.')} "
            f"| {rates[run_name]:.1f} "
            f"| {flops / 1e9:.2f} | {achieved:.2f} | {mfu} |"
        )
    ratio = rates["cvkit"] / rates["torchvision"]
    rows.append(
        f"| {path.name} | cvkit / torchvision | | **{ratio:.2f}x** "
        f"({rates['cvkit'] / rates[SETTINGS]:.2f}x at equal settings) | | | |"
    )
    return rows


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (smoke runs)")
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--rounds", type=int, default=10, help="timed rounds per run")
    parser.add_argument("--steps", type=int, default=10, help="training steps per round")
    parser.add_argument("--batch", type=int, default=64, help="images per training step")
    parser.add_argument("--set", dest="overrides", nargs="*", default=[], help="config overrides")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "gpu_train.md"
    )
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        # `make bench` runs every script; without a GPU this one has nothing to measure
        print("bench_gpu_train: no CUDA device here, nothing written (--device cpu smoke-runs)")
        return ""
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    started = datetime.now(UTC)
    rows = []
    for name in args.models:
        rows += measure(name, args, device)
        print("\n".join(rows[-4:]), flush=True)
    peak = peak_tflops(device)
    lines = [
        "# Training on a GPU: images/s and MFU, cvkit vs torchvision",
        "",
        f"Written by `benchmarks/bench_gpu_train.py`, {started:%Y-%m-%d %H:%M}–"
        f"{datetime.now(UTC):%H:%M} UTC on {where} ({device.type}), torch {torch.__version__}, "
        f"torchvision {torchvision.__version__}. Batch {args.batch}, median of {args.rounds} "
        f"alternating rounds of {args.steps} steps, host-to-device copies included; PyTorch's "
        f"TF32 defaults (float32 matmuls: {torch.backends.cuda.matmul.allow_tf32}, cuDNN "
        f"convolutions: {torch.backends.cudnn.allow_tf32}).",
        "",
        "MFU: FLOPs of a training step's convolutions and matrix products (forward + backward, "
        "`torch.utils.flop_counter`) × steps/s"
        + (
            f" over the dense bf16 peak of this GPU, {peak:g} TFLOP/s (for the float32 rows too)."
            if peak
            else "; no MFU: no bf16 peak known for this device."
        ),
        "",
        "| config | run | precision | images/s | GFLOPs per image | achieved TFLOP/s | MFU |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
    ]
    report = "\n".join(lines)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report, encoding="utf-8")
    return report


if __name__ == "__main__":
    main()
