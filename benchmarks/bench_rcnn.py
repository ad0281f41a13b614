"""cvkit's Faster R-CNN against torchvision's ``FasterRCNN`` class, and against cvkit's SSD.

Both Faster R-CNNs sit on the same network: the backbone and FPN that
``configs/faster_rcnn.yaml`` describes (built by cvkit, identical initial weights), the same
anchors, RPN head, RoIAlign levels, box head and predictor weights, the same input size,
batches and data. torchvision's model is wrapped only to speak the cvkit detector contract
(labels 1..C inside; its transform at identity normalization and the fixed input size).

1. Throughput: training steps (forward, losses, backward, AdamW step) on the same pre-loaded
   batches, the two models alternating round by round so other load hits both alike; the
   median round gives images/s.
2. Accuracy after the same budget: each trained by cvkit's Trainer for ``--epochs`` epochs
   (same seed, loader, optimizer, schedule), COCO mAP on the synthetic val split.
3. Inference latency of those trained models at batch 1 on 640x480 images: cvkit's export
   through the torch-free runtime (``cvkit.runtime.Detector``, NMS in the graph) against
   torchvision eager (same numpy pre-processing), in turns (an untimed call, then 5 timed ones).
4. Equal wall clock: ``configs/faster_rcnn.yaml`` and ``configs/ssd.yaml`` each trained by
   ``cvkit.train`` with ``train.time=--minutes`` (the epochs and LR schedule fitted into the
   budget), best val mAP of each.

Writes ``benchmarks/results/rcnn.md``.

    python benchmarks/bench_rcnn.py [--epochs 8] [--rounds 5] [--steps 3] [--minutes 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
import torchvision
import yaml
from bench_runtime import interleaved_timings
from bench_train import (
    TUNED,
    TorchvisionDetector,
    throughput,
    train_and_score,
    training_runs,
    training_table,
)
from machine import cpu_model
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN as TorchvisionFasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import MultiScaleRoIAlign

import cvkit
from cvkit.config import Config, load_config
from cvkit.config.export import ExportConfig
from cvkit.engine.tasks import get_task
from cvkit.export.onnx import export_model, metadata_from_config
from cvkit.models.build import build_model
from cvkit.models.detection.faster_rcnn import FasterRCNN
from cvkit.runtime import Detector

ROOT = Path(__file__).resolve().parents[1]
THREADS = 2


class SharedBody(nn.Module):
    """cvkit Faster R-CNN's backbone + FPN as a torchvision detection backbone."""

    def __init__(self, model: FasterRCNN) -> None:
        super().__init__()
        self.body = model.backbone
        self.neck = model.neck
        self.out_channels = model.options.fpn_channels

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        return self.neck(self.body(images))


def build_pair(config: Config, num_classes: int) -> tuple[FasterRCNN, TorchvisionDetector]:
    """cvkit's Faster R-CNN and torchvision's with the same weights everywhere."""
    torch.manual_seed(config.seed)
    ours = build_model(config, num_classes)
    torch.manual_seed(config.seed)
    body = SharedBody(build_model(config, num_classes))
    body.load_state_dict(SharedBody(ours).state_dict())
    options = ours.options
    rpn = options.rpn
    ratios = tuple(1.0 / r for r in rpn.anchor_ratios)  # torchvision: height / width
    anchors = AnchorGenerator(
        tuple(tuple(s) for s in rpn.anchor_sizes), (ratios,) * len(rpn.anchor_sizes)
    )
    rpn_head = RPNHead(options.fpn_channels, len(ratios))
    rpn_head.load_state_dict(ours.rpn.head.state_dict())
    size = options.roi_size
    box_head = TwoMLPHead(options.fpn_channels * size * size, options.representation_size)
    box_head.load_state_dict(ours.roi_heads.box_head.state_dict())
    predictor = FastRCNNPredictor(options.representation_size, num_classes + 1)
    predictor.load_state_dict(ours.roi_heads.box_predictor.state_dict())
    image_size = config.data.image_size
    theirs = TorchvisionFasterRCNN(
        body,
        min_size=image_size,
        max_size=image_size,
        image_mean=[0.0, 0.0, 0.0],
        image_std=[1.0, 1.0, 1.0],
        rpn_anchor_generator=anchors,
        rpn_head=rpn_head,
        rpn_pre_nms_top_n_train=rpn.pre_nms_top_n_train,
        rpn_pre_nms_top_n_test=rpn.pre_nms_top_n_test,
        rpn_post_nms_top_n_train=rpn.post_nms_top_n_train,
        rpn_post_nms_top_n_test=rpn.post_nms_top_n_test,
        rpn_nms_thresh=rpn.nms_threshold,
        rpn_fg_iou_thresh=rpn.fg_iou_threshold,
        rpn_bg_iou_thresh=rpn.bg_iou_threshold,
        rpn_batch_size_per_image=rpn.batch_size_per_image,
        rpn_positive_fraction=rpn.positive_fraction,
        box_roi_pool=MultiScaleRoIAlign(
            ours.roi_levels,
            size,
            options.sampling_ratio,
            canonical_scale=int(options.canonical_size),
            canonical_level=options.canonical_level,
        ),
        box_head=box_head,
        box_predictor=predictor,
        box_score_thresh=config.eval.score_threshold,
        box_nms_thresh=config.eval.iou_threshold,
        box_detections_per_img=config.eval.max_det,
        box_fg_iou_thresh=options.fg_iou_threshold,
        box_bg_iou_thresh=options.bg_iou_threshold,
        box_batch_size_per_image=options.batch_size_per_image,
        box_positive_fraction=options.positive_fraction,
        bbox_reg_weights=options.box_weights,
    )
    return ours, TorchvisionDetector(theirs)


def latency(
    ours: FasterRCNN, theirs: TorchvisionDetector, config: Config, classes: list[str], calls: int
) -> dict[str, float]:
    """Median ms per 640x480 image at batch 1: cvkit's runtime vs torchvision eager."""
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)]
    theirs = theirs.eval()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "faster_rcnn.onnx"
        export_model(
            ours.eval(), path, metadata_from_config(config, classes), ExportConfig(dynamic=True)
        )
        detector = Detector(path, providers="cpu", threads=THREADS)

        def eager(model: nn.Module):
            def predict(batch_images: list[np.ndarray]) -> list[np.ndarray]:
                batch, geometries = detector.preprocess(batch_images)
                with torch.inference_mode():
                    outputs = model(torch.from_numpy(batch))
                return [
                    g.boxes_to_original(o.boxes.numpy())
                    for o, g in zip(outputs, geometries, strict=True)
                ]

            return predict

        names = ["cvkit runtime (onnxruntime CPU)", "torchvision eager", "cvkit eager"]
        seconds = interleaved_timings([detector.predict, eager(theirs), eager(ours)], images, calls)
    return {name: 1000 * statistics.median(s) for name, s in zip(names, seconds, strict=True)}


def equal_wall_clock(minutes: float, folder: Path, overrides: list[str]) -> dict[str, dict]:
    """Best val metrics of faster_rcnn.yaml and ssd.yaml, each trained ``minutes`` long
    (``overrides``: ``KEY=VALUE`` config settings for both)."""
    settings = dict(item.split("=", 1) for item in overrides)
    results = {}
    for name in ("faster_rcnn", "ssd"):
        start = time.perf_counter()
        run = cvkit.train(
            ROOT / "configs" / f"{name}.yaml",
            out=folder / name,
            train__time=minutes,
            train__plots=False,
            export__after_train=False,
            **{key: yaml.safe_load(value) for key, value in settings.items()},
        )
        results[name] = {
            "mAP": run.metrics["mAP"],
            "mAP50": run.metrics["mAP50"],
            "epochs": run.epochs,
            "best_epoch": run.best_epoch,
            "time_s": time.perf_counter() - start,
        }
        print(name, results[name], flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=8, help="training budget for the mAP")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per model")
    parser.add_argument("--steps", type=int, default=3, help="training steps per round")
    parser.add_argument("--calls", type=int, default=20, help="timed inference calls")
    parser.add_argument("--minutes", type=float, default=5.0, help="wall clock per config")
    parser.add_argument("--set", dest="overrides", nargs="*", default=[], help="config overrides")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "rcnn.md")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    load_before = os.getloadavg()
    started = datetime.now(UTC)

    config = load_config(
        ROOT / "configs" / "faster_rcnn.yaml",
        [
            f"train.epochs={args.epochs}",
            "train.plots=false",
            f"train.val_every={args.epochs}",
            *args.overrides,
        ],
    )
    task = get_task(config.task)(config)
    train_set, val_set = task.build_dataset("train"), task.build_dataset("val")
    classes = list(train_set.classes)
    loader = task.build_loader(train_set, train=True)
    batches = [batch for batch, _ in zip(loader, range(args.steps), strict=False)]
    runs = training_runs(config, build_pair, len(classes))
    rates = throughput(runs, batches, args.rounds, args.steps)
    print("images/s", rates, flush=True)

    scores, trained = {}, {}
    for name in ("cvkit", "torchvision"):
        fresh = build_pair(config, len(classes))[0 if name == "cvkit" else 1]
        scores[name] = train_and_score(config, fresh, task, train_set, val_set)
        trained[name] = fresh
        print(name, scores[name], flush=True)
    milliseconds = latency(trained["cvkit"], trained["torchvision"], config, classes, args.calls)
    print("latency ms", milliseconds, flush=True)
    with tempfile.TemporaryDirectory() as folder:
        budget = equal_wall_clock(args.minutes, Path(folder), args.overrides)
    load_after = os.getloadavg()

    ratio = rates["cvkit"] / rates["torchvision"]
    speed = milliseconds["torchvision eager"] / milliseconds["cvkit runtime (onnxruntime CPU)"]
    map_met = scores["cvkit"]["mAP"] >= scores["torchvision"]["mAP"]
    beats_ssd = budget["faster_rcnn"]["mAP"] > budget["ssd"]["mAP"]
    cfg = config.model
    lines = [
        "# Faster R-CNN: cvkit vs torchvision, and vs cvkit's SSD at equal wall clock",
        "",
        f"Written by `benchmarks/bench_rcnn.py`, {started:%Y-%m-%d %H:%M}–"
        f"{datetime.now(UTC):%H:%M} UTC on {cpu_model()} ({os.cpu_count()} CPUs visible, "
        f"{THREADS} torch threads), torch {torch.__version__}, torchvision "
        f"{torchvision.__version__}. No GPU. Load average (1/5/15 min) before: "
        f"{' / '.join(f'{v:.2f}' for v in load_before)}; after: "
        f"{' / '.join(f'{v:.2f}' for v in load_after)}.",
        "",
        f"Model: `configs/faster_rcnn.yaml` ({cfg.backbone}, stages {cfg.out_features}, FPN "
        f"{cfg.faster_rcnn.fpn_channels} + pool level, box head "
        f"{cfg.faster_rcnn.representation_size}), input {config.data.image_size}² px, batch "
        f"{config.data.batch_size}, synthetic shapes ({config.data.synthetic.num_train} train / "
        f"{config.data.synthetic.num_val} val). torchvision's `FasterRCNN` class gets the same "
        "backbone + FPN, anchors, RPN head, RoIAlign levels, box head and predictor (same "
        "initial weights), the same batches and data.",
        "",
        "## Training: same network, same batches",
        "",
        f"Throughput: median of {args.rounds} alternating rounds of {args.steps} training steps: "
        "cvkit's model as its Trainer trains it on the CPU (channels-last convolutions, fused "
        "AdamW), torchvision's as its reference recipe does (contiguous, `torch.optim.AdamW` "
        "defaults), and torchvision's again with cvkit's layout and optimizer. "
        f"Accuracy: each trained by cvkit's Trainer for {args.epochs} epochs (same seed, loader, "
        f"AdamW lr {config.train.lr}, {config.train.scheduler} schedule), COCO mAP on val.",
        "",
        *training_table(rates, scores),
    ]
    lines += [
        "",
        f"cvkit / torchvision training throughput: **{ratio:.2f}x** (target ≥ 1.0x): "
        f"{'met' if ratio >= 1.0 else 'NOT met'}; mAP after the same budget "
        f"{'equal or better' if map_met else 'LOWER'} (target: equal or better); "
        f"{rates['cvkit'] / rates[TUNED]:.2f}x against torchvision's model with cvkit's layout "
        "and optimizer (the model code alone).",
        "",
        "## Inference: batch 1, a 640x480 image, the trained models above",
        "",
        "| pipeline | median ms / image |",
        "|---|---|",
        *[f"| {name} | {ms:.1f} |" for name, ms in milliseconds.items()],
        "",
        f"torchvision eager / cvkit runtime: **{speed:.2f}x** (the runtime needs no torch; its "
        "graph holds the RPN, RoIAlign, the box head and NMS, with a dynamic batch).",
        "",
        f"## Equal wall clock: {args.minutes:g} minutes each, `cvkit.train` with `train.time`",
        "",
        "| config | epochs fitted | best epoch | best val mAP@[.5:.95] | mAP@.5 | wall time |",
        "|---|---|---|---|---|---|",
    ]
    for name, b in budget.items():
        lines.append(
            f"| `configs/{name}.yaml` | {b['epochs']} | {b['best_epoch']} | {b['mAP']:.4f} | "
            f"{b['mAP50']:.4f} | {b['time_s'] / 60:.1f} min |"
        )
    lines += [
        "",
        f"Faster R-CNN's mAP@[.5:.95] {'above' if beats_ssd else 'NOT above'} SSD's at the same "
        "wall clock (target: above). The two runs are sequential, so other load on the machine "
        "would affect them unequally; the load averages above say how quiet it was.",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
