"""Seconds per image: Gatys optimisation (L-BFGS) vs the fast feed-forward stylizer (ONNX).

Both run on synthetic images (a smooth content picture with shapes, a striped style picture)
at ``--sizes`` (square, default 256 and 512 px), in one process, with ``--threads`` CPU threads
(torch and onnxruntime alike):

- ``gatys``: :func:`cvkit.style.gatys.stylize` with a full-width VGG-19 loss network (random
  weights: no file is downloaded, and speed does not depend on the weights), content
  ``relu4_2``, style ``relu1_1 … relu5_1``, ``--steps`` L-BFGS steps per size (one loss
  evaluation each); a usual run's 300 steps are projected from the measured time per step.
- ``fast``: Johnson et al.'s transformer network at the paper's width (32 channels, 5 residual
  blocks) exported by :func:`cvkit.export.onnx.export_model` with dynamic batch/H/W and run
  by :class:`cvkit.runtime.Stylizer` (onnxruntime, batch 1): one warm-up call, then the median
  of ``--repeats`` calls. Untrained weights: the speed is the same as a trained network's.

Writes ``benchmarks/results/style.md`` and ``style_loss.png`` (Gatys losses per step).

    python benchmarks/bench_style.py [--sizes 256 512] [--steps 100 100] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np
import torch
from machine import cpu_model, uptime

from cvkit.config import Config
from cvkit.config.export import ExportConfig
from cvkit.engine.tasks import get_task
from cvkit.export.onnx import export_model
from cvkit.models.style import TransformerNet
from cvkit.runtime import Stylizer
from cvkit.style.gatys import GatysOptions, stylize, to_tensor
from cvkit.style.losses import PerceptualLoss, build_loss_network

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
HEADER = (
    "| size | N | Gatys N steps (s) | s / step | fast (s / image) | speed-up, N steps "
    "| 300 steps (projected) | loss first → last |\n|---|---|---|---|---|---|---|---|"
)


def content_image(size: int) -> np.ndarray:
    """A smooth colour field with a disc and a bar, RGB ``uint8 [size, size, 3]``."""
    rng = np.random.default_rng(0)
    coarse = rng.uniform(40, 215, (4, 4, 3)).astype(np.float32)
    image = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC).clip(0, 255)
    image = image.astype(np.uint8)
    cv2.circle(image, (size // 3, size // 2), size // 5, (230, 200, 40), -1)
    cv2.rectangle(image, (size // 2, size // 6), (size - size // 8, size // 3), (30, 60, 160), -1)
    return image


def style_image(size: int) -> np.ndarray:
    """Diagonal colour stripes, RGB ``uint8 [size, size, 3]``."""
    y, x = np.mgrid[:size, :size]
    phase = ((x + y) // max(4, size // 32)) % 3
    palette = np.array([[200, 40, 30], [250, 210, 60], [20, 40, 120]], np.uint8)
    return palette[phase]


def run_gatys(network, size: int, steps: int) -> tuple[float, list[dict[str, float]]]:
    """Seconds for ``steps`` L-BFGS steps at ``size`` px (loss targets built outside the
    timing) and the loss history."""
    content = to_tensor(content_image(size))
    loss = PerceptualLoss(network, [to_tensor(style_image(size))], style_weight=1e4, tv_weight=1)
    options = GatysOptions(steps=steps, optimizer="lbfgs", progress=False)
    start = time.perf_counter()
    result = stylize(content, loss, options)
    return time.perf_counter() - start, result.history


def run_fast(path: Path, size: int, threads: int, repeats: int) -> float:
    """Median seconds per image of the exported stylizer at ``size`` px (batch 1)."""
    runtime = Stylizer(path, "cpu", threads=threads)
    image = content_image(size)
    assert runtime.predict(image).image.shape == image.shape
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        runtime.predict(image)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def plot(histories: dict[int, list[dict[str, float]]], path: Path) -> None:
    """One panel per size: content, style, TV and total loss per L-BFGS step (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(histories), figsize=(5 * len(histories), 3.6))
    for axis, (size, history) in zip(np.atleast_1d(axes), histories.items(), strict=True):
        for key in ("total", "content", "style", "tv"):
            axis.plot([row[key] for row in history], label=key)
        axis.set_yscale("log")
        axis.set_title(f"Gatys L-BFGS, {size}x{size} px (random-weight VGG-19)")
        axis.set_xlabel("step")
        axis.set_ylabel("weighted loss")
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--steps", type=int, nargs="+", default=[100, 100], help="per size")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS / "style.md")
    args = parser.parse_args()
    if len(args.steps) != len(args.sizes):
        parser.error(f"--steps: one count per size {args.sizes}, got {args.steps}")
    steps = dict(zip(args.sizes, args.steps, strict=True))
    torch.set_num_threads(args.threads)
    cpu, load_before = cpu_model(), uptime()
    started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")

    torch.manual_seed(0)
    network = build_loss_network(None, depth=19)
    gatys = {size: run_gatys(network, size, steps[size]) for size in args.sizes}

    with tempfile.TemporaryDirectory() as folder:
        model = TransformerNet().eval()
        config = Config.model_validate({"task": "style", "data": {"image_size": 64}})
        metadata = get_task("style").export_metadata(config, ["stylized"])
        path = Path(folder) / "style.onnx"
        export_model(model, path, metadata, ExportConfig(dynamic=True))
        fast = {size: run_fast(path, size, args.threads, args.repeats) for size in args.sizes}
    load_after = uptime()

    args.out.parent.mkdir(parents=True, exist_ok=True)
    png = args.out.with_name(args.out.stem + "_loss.png")
    histories = {size: history for size, (_, history) in gatys.items()}
    plot(histories, png)
    rows = []
    for size in args.sizes:
        seconds, history = gatys[size]
        per_step = seconds / steps[size]
        rows.append(
            f"| {size}x{size} | {steps[size]} | {seconds:.1f} | {per_step:.2f} | "
            f"{fast[size]:.2f} | "
            f"{seconds / fast[size]:.0f}x | {300 * per_step / fast[size]:.0f}x | "
            f"{history[0]['total']:.3g} → {history[-1]['total']:.3g} |"
        )
    sizes, counts = " ".join(map(str, args.sizes)), " ".join(map(str, args.steps))
    text = f"""# Style transfer: Gatys optimisation vs the fast feed-forward network

`python benchmarks/bench_style.py --sizes {sizes} --steps {counts} --threads {args.threads}`,
one run, {started}. Other jobs on the same cores show in the load averages below.

- CPU: {cpu}; torch and onnxruntime limited to {args.threads} threads; torch {torch.__version__}.
- Load before: `{load_before}`
- Load after: `{load_after}`

Gatys: `cvkit.style.gatys.stylize`, full VGG-19 loss network (random weights; the speed does
not depend on them), content `relu4_2`, style `relu1_1 … relu5_1`, N L-BFGS steps
(one forward + backward each). Fast: Johnson et al.'s transformer net (32 channels, 5
residual blocks, instance norm) exported to ONNX with dynamic batch/H/W and run by
`cvkit.runtime.Stylizer` (onnxruntime, batch 1, median of {args.repeats} after a warm-up).

{HEADER}
{chr(10).join(rows)}

The "300 steps" column multiplies the measured time per step by 300 (a usual Gatys run);
it was not run. Loss curves (weighted terms per step): [{png.name}]({png.name}).
"""
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
