"""cvkit box ops against torchvision.ops, measured in the same run, with identical outputs.

Cases (CPU, 2 threads; CUDA too when a GPU is present): ``box_iou`` 10000 × 1000,
``nms`` on 1k and 10k boxes, ``batched_nms`` on 10k boxes in 20 classes, and the numpy
runtime's ``nms`` on 1k / 10k boxes against torchvision's compiled ``nms``. Boxes have corners
uniform in [0, 1000]² and sides uniform in [1, 101] px; scores are distinct. Every case first
asserts that cvkit's output equals torchvision's, then times both, alternating the two so that
load from other processes hits both alike, and reports the median of the repeats. Writes
``benchmarks/results/ops.md``.

    python benchmarks/bench_ops.py [--repeats 15] [--min-seconds 2] [--scale 1.0] [--out PATH]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
import torchvision
from machine import cpu_model

import cvkit.ops as cvops
from cvkit.ops.matching import greedy_assign_batched
from cvkit.runtime import ops_np

ROOT = Path(__file__).resolve().parents[1]
THREADS = 2


@dataclass
class Case:
    """One comparison: what, its size, the target speed-up, and the two callables."""

    name: str
    size: str
    target: float
    ours: Callable[[], object]
    theirs: Callable[[], object]
    device: str = "cpu"


def random_boxes(n: int, seed: int, device: str = "cpu") -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=gen) * 1000
    wh = torch.rand(n, 2, generator=gen) * 100 + 1
    return torch.cat([xy, xy + wh], dim=1).to(device)


def distinct_scores(n: int, seed: int, device: str = "cpu") -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return ((torch.randperm(n, generator=gen).float() + 1) / n).to(device)


def _same(ours: object, theirs: object) -> bool:
    ours = torch.as_tensor(ours).cpu()
    theirs = torch.as_tensor(theirs).cpu()
    return ours.shape == theirs.shape and bool((ours == theirs).all())


def build_cases(scale: float, device: str) -> list[Case]:
    """The benchmark cases on ``device``; ``scale`` shrinks every size (for smoke tests)."""

    def n(count: int) -> int:
        return max(8, int(count * scale))

    cases = []
    a, b = random_boxes(n(10_000), 1, device), random_boxes(n(1_000), 2, device)
    cases.append(
        Case(
            "box_iou",
            f"{len(a)}×{len(b)}",
            2.0,
            lambda: cvops.box_iou(a, b),
            lambda: torchvision.ops.box_iou(a, b),
            device,
        )
    )
    for count in (1_000, 10_000):
        boxes, scores = (
            random_boxes(n(count), count, device),
            distinct_scores(n(count), count, device),
        )
        cases.append(
            Case(
                "nms",
                f"{len(boxes)} boxes",
                1.0,
                lambda boxes=boxes, scores=scores: cvops.nms(boxes, scores, 0.5),
                lambda boxes=boxes, scores=scores: torchvision.ops.nms(boxes, scores, 0.5),
                device,
            )
        )
    boxes, scores = random_boxes(n(10_000), 3, device), distinct_scores(n(10_000), 3, device)
    idxs = torch.randint(0, 20, (len(boxes),), generator=torch.Generator().manual_seed(3)).to(
        device
    )
    cases.append(
        Case(
            "batched_nms",
            f"{len(boxes)} boxes × 20 classes",
            1.0,
            lambda: cvops.batched_nms(boxes, scores, idxs, 0.5),
            lambda: torchvision.ops.batched_nms(boxes, scores, idxs, 0.5),
            device,
        )
    )
    if device == "cpu":
        for count in (1_000, 10_000):
            boxes, scores = random_boxes(n(count), count), distinct_scores(n(count), count)
            boxes_np, scores_np = boxes.numpy(), scores.numpy()
            cases.append(
                Case(
                    "numpy nms (runtime)",
                    f"{len(boxes)} boxes",
                    0.5,
                    lambda boxes_np=boxes_np, scores_np=scores_np: ops_np.nms(
                        boxes_np, scores_np, 0.5
                    ),
                    lambda boxes=boxes, scores=scores: torchvision.ops.nms(boxes, scores, 0.5),
                )
            )
    return cases


def padded_iou(batch: int, num_anchors: int, num_gt: int, seed: int) -> torch.Tensor:
    """``Tensor[batch, num_anchors, num_gt]``: IoU of SSD-like anchors (sides 4-64 px in a
    300-px image) with each image's boxes (sides 4-84 px), the last image's columns but one
    padded with -1 as a batch with fewer boxes in one image pads them."""
    gen = torch.Generator().manual_seed(seed)

    def boxes(count: int, largest: float) -> torch.Tensor:
        xy = torch.rand(count, 2, generator=gen) * 280
        return torch.cat([xy, xy + torch.rand(count, 2, generator=gen) * largest + 4], dim=1)

    iou = cvops.box_iou(boxes(num_anchors, 60), boxes(batch * num_gt, 80))
    iou = iou.view(num_anchors, batch, num_gt).transpose(0, 1).contiguous()
    iou[-1, :, 1:] = -1.0
    return iou


def matching_cases(scale: float) -> list[Case]:
    """SSD's greedy matching of a padded batch (``greedy_assign_batched``) against its
    definition run image by image (``greedy_assign``); torchvision has no equivalent (its SSD
    matches by thresholds)."""
    cases = []
    for batch, num_anchors, num_gt in ((16, 1364, 8), (32, 8732, 40)):
        batch, num_anchors = max(2, int(batch * scale)), max(8, int(num_anchors * scale))
        iou = padded_iou(batch, num_anchors, num_gt, seed=num_gt)
        real = [num_gt] * (batch - 1) + [1]
        cases.append(
            Case(
                "greedy matching",
                f"{batch} images × {num_anchors} anchors × {num_gt} boxes",
                1.0,
                lambda iou=iou: greedy_assign_batched(iou, 0.5),
                lambda iou=iou, real=real: torch.stack(
                    [cvops.greedy_assign(m[:, :g], 0.5) for m, g in zip(iou, real, strict=True)]
                ),
            )
        )
    return cases


def _time(fn: Callable[[], object], device: str) -> float:
    if device != "cpu":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device != "cpu":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def measure(case: Case, repeats: int, min_seconds: float) -> tuple[float, float, int]:
    """Median seconds of ``(ours, theirs)`` and the number of repeats.

    Checks first that both give the same output. Repeats at least ``repeats`` times and until
    ``min_seconds`` have passed, so fast cases are sampled over a long enough window for a
    burst of load from other processes not to decide the median.
    """
    if not _same(case.ours(), case.theirs()):
        raise AssertionError(f"{case.name} {case.size}: cvkit's and the peer's outputs differ")
    ours, theirs = [], []
    start = time.perf_counter()
    while len(ours) < repeats or time.perf_counter() - start < min_seconds:
        ours.append(_time(case.ours, case.device))
        theirs.append(_time(case.theirs, case.device))
    return statistics.median(ours), statistics.median(theirs), len(ours)


def _load() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def table(rows: list[tuple[Case, float, float, int]], peer: str) -> list[str]:
    """Markdown rows of measured cases against ``peer``'s times."""
    lines = [
        f"| op | device | size | {peer} ms | cvkit ms | speed-up | target | met | repeats |",
        "|---|---|---|---:|---:|---:|---:|---|---:|",
    ]
    for case, ours, theirs, repeats in rows:
        speedup = theirs / ours
        met = "yes" if speedup >= case.target else "no"
        lines.append(
            f"| {case.name} | {case.device} | {case.size} | {theirs * 1e3:.2f} | "
            f"{ours * 1e3:.2f} | {speedup:.2f}x | ≥ {case.target:g}x | {met} | {repeats} |"
        )
    return lines


def render(
    rows: list[tuple[Case, float, float, int]],
    matching: list[tuple[Case, float, float, int]],
    load_before: float,
) -> str:
    lines = [
        "# cvkit.ops vs torchvision.ops",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by `benchmarks/bench_ops.py`: "
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, numpy "
        f"{np.__version__}, {cpu_model()} ({platform.machine()}) with "
        f"{os.cpu_count()} cores, {torch.get_num_threads()} torch threads; 1-minute load "
        f"average {load_before:.1f} before and {_load():.1f} after (other processes share "
        "the CPU).",
        "Medians of alternating repeats (cvkit, torchvision, cvkit, ...); each case first "
        "asserts identical outputs. Boxes: corners uniform in [0, 1000]², sides uniform in "
        "[1, 101] px; distinct scores; NMS IoU threshold 0.5. "
        "Speed-up = torchvision time / cvkit time.",
        "",
        *table(rows, "torchvision"),
    ]
    lines += [
        "",
        "The numpy rows time `cvkit.runtime.ops_np.nms` (numpy only, single-threaded) against "
        "torchvision's compiled `nms`. On CUDA cvkit calls torchvision's NMS kernels, so those "
        "rows measure only cvkit's input checks.",
        "",
        "## SSD's greedy matching",
        "",
        "`cvkit.ops.matching.greedy_assign_batched` on a padded batch against its definition, "
        "`greedy_assign`, run image by image (same outputs asserted); torchvision has no "
        "equivalent (its SSD matches by thresholds). IoU of random SSD-like anchors (sides "
        "4-64 px in 300 px) with random boxes (4-84 px), one image padded to a single box. "
        "The first size is the default SSD's (`configs/ssd.yaml`, batch 16), the second an "
        "SSD300 on COCO-like images (40 boxes per image, batch 32).",
        "",
        *table(matching, "per-image `greedy_assign`"),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15, help="at least this many per case")
    parser.add_argument("--min-seconds", type=float, default=2.0, help="and at least this long")
    parser.add_argument("--scale", type=float, default=1.0, help="shrink sizes (smoke tests)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "ops.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(THREADS)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    load_before = _load()
    rows = []
    for device in devices:
        for case in build_cases(args.scale, device):
            ours, theirs, repeats = measure(case, args.repeats, args.min_seconds)
            rows.append((case, ours, theirs, repeats))
            print(f"{case.name:22s} {device:4s} {case.size:26s} x{theirs / ours:5.2f}", flush=True)
    matching = []
    for case in matching_cases(args.scale):
        ours, theirs, repeats = measure(case, args.repeats, args.min_seconds)
        matching.append((case, ours, theirs, repeats))
        print(f"{case.name:22s} cpu  {case.size:26s} x{theirs / ours:5.2f}", flush=True)
    report = render(rows, matching, load_before)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report, encoding="utf-8")
    return report


if __name__ == "__main__":
    main()
