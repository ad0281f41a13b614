"""cvkit's Mask R-CNN against torchvision's ``MaskRCNN`` on the same network, and
``configs/mask_rcnn.yaml`` after a recorded training budget.

1. Throughput: the Faster R-CNN pair of :mod:`bench_rcnn` (same backbone + FPN, anchors, RPN,
   RoIAlign levels, box head and predictor, same initial weights) with torchvision's mask
   pool, head and predictor attached, as its ``MaskRCNN`` constructor attaches them, loaded
   with cvkit's mask-branch weights (:func:`attach_mask_branch`). Training steps on the same
   pre-loaded batches of ``configs/mask_rcnn.yaml`` (instance masks in the targets), the
   models alternating round by round: cvkit's as its Trainer trains it, torchvision's as its
   reference recipe does, and torchvision's with cvkit's layout and optimizer
   (:func:`bench_train.training_runs`).
2. Accuracy: ``cvkit.train(configs/mask_rcnn.yaml, train.time=--minutes)``, the best
   checkpoint's val box and mask (segm) COCO mAP.

Writes the section ``## Training speed and a recorded budget`` of
``benchmarks/results/mask_rcnn.md`` (the file's other sections are kept).

    python benchmarks/bench_mask_rcnn.py [--rounds 5] [--steps 3] [--minutes 5]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
from bench_rcnn import build_pair
from bench_step import write_section
from bench_train import TUNED, TorchvisionDetector, throughput, training_runs
from machine import cpu_model, uptime, vector_isa
from torch import Tensor, nn
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import MultiScaleRoIAlign

import cvkit
from cvkit.config import Config, load_config
from cvkit.engine.tasks import get_task
from cvkit.models.detection.mask_rcnn import MaskRCNN
from cvkit.structures import CroppedMasks, Target

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "mask_rcnn.yaml"
RESULTS = ROOT / "benchmarks" / "results" / "mask_rcnn.md"
SECTION = "Training speed and a recorded budget"


def attach_mask_branch(ours: MaskRCNN, model: nn.Module) -> None:
    """Give torchvision's Faster R-CNN ``model`` the mask pool, head and predictor its
    ``MaskRCNN`` constructor would, with the weights of ``ours``' mask branch."""
    options = ours.options
    heads = model.roi_heads
    heads.mask_roi_pool = MultiScaleRoIAlign(
        ours.roi_levels,
        options.mask_roi_size,
        options.sampling_ratio,
        canonical_scale=int(options.canonical_size),
        canonical_level=options.canonical_level,
    )
    heads.mask_head = MaskRCNNHeads(options.fpn_channels, options.mask_layers, 1)
    heads.mask_head.load_state_dict(ours.mask_head.state_dict())
    heads.mask_predictor = MaskRCNNPredictor(
        options.mask_layers[-1], options.mask_dim_reduced, ours.num_classes + 1
    )
    heads.mask_predictor.load_state_dict(ours.mask_predictor.state_dict())


class TorchvisionMaskDetector(TorchvisionDetector):
    """torchvision's Mask R-CNN behind the cvkit detector contract: training targets carry
    their instance masks as dense ``uint8 [N, H, W]`` (what torchvision's loss reads)."""

    def forward(self, images: Tensor, targets: list[Target] | None = None):
        if not self.training:
            return super().forward(images)
        shifted = [
            {
                "boxes": t.boxes,
                "labels": t.labels + 1,
                "masks": t.masks.to_dense() if isinstance(t.masks, CroppedMasks) else t.masks,
            }
            for t in targets
        ]
        return self.model(list(images), shifted)


def build_mask_pair(config: Config, num_classes: int) -> tuple[MaskRCNN, nn.Module]:
    """cvkit's Mask R-CNN and torchvision's on the same network and initial weights."""
    ours, theirs = build_pair(config, num_classes)
    attach_mask_branch(ours, theirs.model)
    return ours, TorchvisionMaskDetector(theirs.model)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per model")
    parser.add_argument("--steps", type=int, default=3, help="training steps per round")
    parser.add_argument("--minutes", type=float, default=5.0, help="training budget")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(2)
    load_before = uptime()
    started = datetime.now(UTC)
    config = load_config(CONFIG, ["train.plots=false"])
    task = get_task(config.task)(config)
    train_set = task.build_dataset("train")
    loader = task.build_loader(train_set, train=True)
    batches = [batch for batch, _ in zip(loader, range(args.steps), strict=False)]
    runs = training_runs(config, build_mask_pair, len(train_set.classes))
    rates = throughput(runs, batches, args.rounds, args.steps)
    print("images/s", rates, flush=True)
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        run = cvkit.train(
            CONFIG,
            out=Path(folder) / "mask_rcnn",
            train__time=args.minutes,
            train__plots=False,
            export__after_train=False,
        )
        seconds = time.perf_counter() - start
    metrics = run.metrics
    print(metrics, flush=True)
    ratio = rates["cvkit"] / rates["torchvision"]
    lines = [
        f"`python benchmarks/bench_mask_rcnn.py`, {started:%Y-%m-%d %H:%M}–"
        f"{datetime.now(UTC):%H:%M} UTC on {cpu_model()} ({vector_isa()}), 2 torch threads, "
        f"torch {torch.__version__}. Load before: `{load_before}`; after: `{uptime()}`.",
        "",
        f"Throughput: median of {args.rounds} alternating rounds of {args.steps} training "
        f"steps on the same batches of `configs/mask_rcnn.yaml` ({config.data.image_size} px, "
        f"batch {config.data.batch_size}, instance masks in the targets).",
        "",
        "| model | train images/s |",
        "|---|---|",
        *[f"| {name} | {rate:.1f} |" for name, rate in rates.items()],
        "",
        f"cvkit / torchvision `MaskRCNN`: **{ratio:.2f}x** (target ≥ 1.0x): "
        f"{'met' if ratio >= 1.0 else 'NOT met'}; {rates['cvkit'] / rates[TUNED]:.2f}x against "
        "torchvision's model with cvkit's layout and optimizer.",
        "",
        f"Recorded budget: `cvkit.train(configs/mask_rcnn.yaml, train.time={args.minutes:g})` "
        f"on the synthetic set: {run.epochs} epochs in {seconds / 60:.1f} min, best.pt "
        f"(epoch {run.best_epoch}) val box mAP@[.5:.95] {metrics['mAP']:.4f}, mAP@.5 "
        f"{metrics['mAP50']:.4f}; mask (segm) mAP@[.5:.95] {metrics['segm_mAP']:.4f}, mAP@.5 "
        f"{metrics['segm_mAP50']:.4f}.",
    ]
    write_section(args.out, SECTION, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
