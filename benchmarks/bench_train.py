"""Training speed and accuracy of cvkit's SSD against torchvision's ``SSD`` class, same run.

Both detectors sit on the same network: the backbone and extra blocks that ``configs/ssd.yaml``
describes (built by cvkit, identical initial weights), the same anchors (torchvision's
``DefaultBoxGenerator`` with ratio 2 ↔ cvkit's ``n + m - 1`` priors with sizes
``[s_k, sqrt(s_k s_k+1)]`` and ratios 1, 2, 1/2), the same input size, batch and batches.
torchvision's model is wrapped only to speak the cvkit detector contract (labels 1..C inside,
its own transform set to identity normalization at the same fixed size).

1. Throughput: training steps (forward, loss, backward, AdamW step) on the same pre-loaded
   batches, the two models alternating round by round so load from other processes hits both
   alike; the median round gives images/s. Each step's convolutions are then replayed on their
   own (same inputs, gradients and layout, forward and backward) to time how much of the step
   they take: with the body shared, cvkit's convolutions bound how far its step can get ahead
   of torchvision's.
2. Accuracy after a fixed budget: each model is trained by cvkit's Trainer for ``--epochs``
   epochs with the same loader seed, optimizer and schedule, then scored with COCO mAP on the
   synthetic val split.

Writes ``benchmarks/results/train.md`` (keeping its recorded ``make train`` section).

    python benchmarks/bench_train.py [--epochs 6] [--rounds 8] [--steps 6] [--out PATH]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import torch
import torchvision
from machine import cpu_model, uptime, vector_isa
from torch import Tensor, nn
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.models.detection.ssd import SSD as TorchvisionSSD
from torchvision.models.detection.ssd import SSDHead as TorchvisionSSDHead

from cvkit.config import Config, load_config
from cvkit.engine.environment import seed_everything
from cvkit.engine.optim import build_optimizer
from cvkit.engine.tasks import get_task
from cvkit.engine.trainer import Trainer, use_channels_last
from cvkit.models.build import build_model
from cvkit.models.detection.ssd import SSD
from cvkit.resources import keep_freed_memory
from cvkit.structures import Instances, Target

ROOT = Path(__file__).resolve().parents[1]
THREADS = 2
TUNED = "torchvision + cvkit's layout and optimizer"
MAKE_TRAIN_HEADING = "## Default config: `make train`"


class SharedBody(nn.Module):
    """cvkit SSD's backbone + extra blocks as a torchvision SSD backbone (``OrderedDict``)."""

    def __init__(self, ssd: SSD) -> None:
        super().__init__()
        self.backbone = ssd.backbone
        self.extras = ssd.extras
        self.out_channels = [*ssd.backbone.channels.values()] + [ssd.options.extra_channels] * len(
            ssd.extras
        )

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        levels = list(self.backbone(images).values())
        for block in self.extras:
            levels.append(block(levels[-1]))
        return {str(i): level for i, level in enumerate(levels)}


class TorchvisionDetector(nn.Module):
    """A torchvision detector (SSD, Faster R-CNN) behind the cvkit detector contract (labels
    0..C-1 outside, 1..C inside; a batched tensor input)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor, targets: list[Target] | None = None):
        if self.training:
            shifted = [{"boxes": t.boxes, "labels": t.labels + 1} for t in targets]
            return self.model(list(images), shifted)
        size = (int(images.shape[-2]), int(images.shape[-1]))
        return [
            Instances(d["boxes"], d["scores"], d["labels"] - 1, size)
            for d in self.model(list(images))
        ]


def bench_config(overrides: list[str]) -> Config:
    """configs/ssd.yaml with anchor sizes on the SSD rule both implementations share."""
    config = load_config(ROOT / "configs" / "ssd.yaml", overrides)
    sizes = config.model.ssd.anchor_sizes
    if sizes is None:
        return config
    scales = [level[0] for level in sizes] + [1.0]
    shared = [[scales[k], math.sqrt(scales[k] * scales[k + 1])] for k in range(len(sizes))]
    return config.model_copy(
        update={
            "model": config.model.model_copy(
                update={"ssd": config.model.ssd.model_copy(update={"anchor_sizes": shared})}
            )
        }
    )


def build_pair(config: Config, num_classes: int) -> tuple[nn.Module, nn.Module]:
    """cvkit's SSD and torchvision's SSD with the same body weights and the same anchors."""
    torch.manual_seed(config.seed)
    ours = build_model(config, num_classes)
    torch.manual_seed(config.seed)
    body = SharedBody(build_model(config, num_classes))
    body.load_state_dict(SharedBody(ours).state_dict())
    scales = [sizes[0] for sizes in ours.anchor_sizes] + [
        ours.anchor_sizes[-1][1] ** 2 / ours.anchor_sizes[-1][0]
    ]
    anchors = DefaultBoxGenerator([[2]] * len(ours.anchor_sizes), scales=scales)
    size = config.data.image_size
    head = TorchvisionSSDHead(
        body.out_channels, anchors.num_anchors_per_location(), num_classes + 1
    )
    theirs = TorchvisionSSD(
        body,
        anchors,
        (size, size),
        num_classes + 1,
        image_mean=[0.0, 0.0, 0.0],
        image_std=[1.0, 1.0, 1.0],
        head=head,
        score_thresh=config.eval.score_threshold,
        nms_thresh=config.eval.iou_threshold,
        detections_per_img=config.eval.max_det,
        iou_thresh=config.model.ssd.iou_threshold,
        topk_candidates=config.model.ssd.topk_candidates,
        positive_fraction=1 / (1 + config.model.ssd.neg_pos_ratio),
    )
    return ours, TorchvisionDetector(theirs)


def training_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, images: Tensor, targets: list[Target]
) -> None:
    """One timed training step: forward with losses, backward, optimizer step."""
    losses = model(images, targets)
    optimizer.zero_grad(set_to_none=True)
    sum(losses.values()).backward()
    optimizer.step()


Runs = dict[str, tuple[nn.Module, torch.optim.Optimizer]]
Run = TypeVar("Run")


def median_of_rounds(
    runs: Mapping[str, Run],
    rounds: int,
    measure: Callable[[Run], float],
    warmup: bool = False,
) -> dict[str, float]:
    """The median of ``measure(run)`` over ``rounds`` rounds in which the runs take turns, so
    load from other processes hits them alike; ``warmup`` adds an unrecorded first round
    (allocators and caches)."""
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for index in range(rounds + int(warmup)):
        for name, run in runs.items():
            value = measure(run)
            if index >= int(warmup):
                samples[name].append(value)
    return {name: statistics.median(values) for name, values in samples.items()}


ConvCall = tuple[nn.Conv2d, Tensor, Tensor | None]


def convolution_calls(model: nn.Module, images: Tensor, targets: list[Target]) -> list[ConvCall]:
    """Every ``nn.Conv2d`` call of one training forward + backward of ``model``: the module, its
    input and the gradient its output received, both with the strides they had in the step
    (the layout decides which kernels run). The input is a detached leaf that requires grad
    where the step's did; the gradient is None for an output nothing flowed back to. The step's
    parameter gradients are dropped afterwards."""
    calls: list[list] = []

    def record(module: nn.Module, args: tuple, output: Tensor) -> None:
        call = [module, args[0].detach().requires_grad_(args[0].requires_grad), None]
        calls.append(call)
        if output.requires_grad:
            output.register_hook(lambda grad: call.__setitem__(2, grad))

    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    handles = [m.register_forward_hook(record) for m in convs]
    try:
        model.train()
        losses = model(images, targets)
        sum(losses.values()).backward()
    finally:
        for handle in handles:
            handle.remove()
    model.zero_grad(set_to_none=True)
    return [(module, inputs, grad) for module, inputs, grad in calls]


def replay(calls: list[ConvCall]) -> None:
    """Run ``calls``' convolutions forward and backward (input, weight and bias gradients where
    the step computed them) as the step ran them, without accumulating into ``.grad``."""
    for module, inputs, grad in calls:
        output = module(inputs)
        if grad is not None:
            wanted = [inputs] if inputs.requires_grad else []
            wanted += [p for p in module.parameters() if p.requires_grad]
            torch.autograd.grad(output, wanted, grad)


def convolution_time(runs: Runs, batch: tuple, rounds: int, steps: int) -> dict[str, float]:
    """Milliseconds per training step each run spends in its convolutions, forward and backward:
    the step's ``nn.Conv2d`` calls (:func:`convolution_calls` on ``batch``) replayed ``steps``
    times on their own, median of ``rounds`` alternating rounds after a warm-up round.

    Timed outside ``torch.profiler`` on purpose: on a 2-core AMD EPYC a profiled step of the
    default SSD took ~2,400 minor page faults (``getrusage``) against none unprofiled, and ran
    at 83-85 ms against 58-70 ms, so profiled kernel times held the first touch of memory that
    an unprofiled step reuses. The replay's own autograd calls are counted in, so the time is a
    slight overestimate."""
    images, targets = batch
    calls = {name: convolution_calls(model, images, targets) for name, (model, _) in runs.items()}

    def milliseconds(step_calls: list[ConvCall]) -> float:
        start = time.perf_counter()
        for _ in range(steps):
            replay(step_calls)
        return (time.perf_counter() - start) * 1000 / steps

    return median_of_rounds(calls, rounds, milliseconds, warmup=True)


def throughput(runs: Runs, batches: list, rounds: int, steps: int) -> dict[str, float]:
    """Median training images/s of each ``(model, optimizer)`` over ``rounds`` rounds of
    ``steps`` steps, after a warm-up round."""

    def rate(run: tuple[nn.Module, torch.optim.Optimizer]) -> float:
        model, optimizer = run
        model.train()
        start = time.perf_counter()
        for images, targets in batches[:steps]:
            training_step(model, optimizer, images, targets)
        return sum(len(images) for images, _ in batches[:steps]) / (time.perf_counter() - start)

    return median_of_rounds(runs, rounds, rate, warmup=True)


def as_trained_by_cvkit(
    config: Config, model: nn.Module
) -> tuple[nn.Module, torch.optim.Optimizer]:
    """``model`` and its optimizer as cvkit's Trainer sets them up on the CPU: the
    ``train.channels_last`` memory format and :func:`cvkit.engine.optim.build_optimizer`."""
    if use_channels_last(config.train.channels_last, torch.device("cpu"), model):
        model.to(memory_format=torch.channels_last)
    return model, build_optimizer(model, config.train)


def as_trained_by_reference(
    config: Config, model: nn.Module
) -> tuple[nn.Module, torch.optim.Optimizer]:
    """``model`` as torchvision's reference recipe trains it: contiguous, ``torch.optim.AdamW``
    with its defaults at the config's learning rate."""
    return model, torch.optim.AdamW(model.parameters(), lr=config.train.lr)


def training_runs(
    config: Config, build: Callable[[Config, int], tuple[nn.Module, nn.Module]], num_classes: int
) -> Runs:
    """The models and optimizers timed, from ``build(config, num_classes) -> (cvkit's,
    torchvision's)``: cvkit's model as its Trainer trains it, torchvision's as its reference
    recipe does, and torchvision's again with cvkit's memory format and optimizer, which
    separates what the model code gains from what the settings gain."""
    ours, theirs = build(config, num_classes)
    _, tuned = build(config, num_classes)
    return {
        "cvkit": as_trained_by_cvkit(config, ours),
        "torchvision": as_trained_by_reference(config, theirs),
        TUNED: as_trained_by_cvkit(config, tuned),
    }


def train_and_score(config: Config, model: nn.Module, task, train_set, val_set) -> dict:
    seed_everything(config.seed)
    trainer = Trainer(
        config,
        task,
        model,
        task.build_loader(train_set, train=True),
        task.build_loader(val_set, train=False),
        run=None,
        classes=list(train_set.classes),
    )
    start = time.perf_counter()
    trainer.fit()
    elapsed = time.perf_counter() - start
    metrics = task.evaluate(trainer.eval_model, trainer.val_loader, torch.device("cpu"))
    return {"mAP": metrics["mAP"], "mAP50": metrics["mAP50"], "time_s": elapsed}


def training_table(
    rates: dict[str, float],
    scores: dict[str, dict],
    conv_share: dict[str, float] | None = None,
    batch: int = 0,
) -> list[str]:
    """Markdown rows: images/s of each timed model (with ``conv_share``: its step time for
    ``batch`` images and the share of it spent in convolutions), and mAP@[.5:.95], mAP@.5 and
    wall time of those trained."""
    step_columns = conv_share is not None
    extra = " ms per step | in convolutions |" if step_columns else ""
    lines = [
        f"| model | train images/s |{extra} mAP@[.5:.95] | mAP@.5 | budget wall time |",
        "|---|---|---|---|---|" + ("---|---|" if step_columns else ""),
    ]
    for name, rate in rates.items():
        s = scores.get(name)
        trained = f"{s['mAP']:.4f} | {s['mAP50']:.4f} | {s['time_s']:.0f} s" if s else "— | — | —"
        step = f" {1000 * batch / rate:.1f} | {conv_share[name]:.0%} |" if step_columns else ""
        lines.append(f"| {name} | {rate:.1f} |{step} {trained} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=6, help="training budget for the mAP")
    parser.add_argument("--rounds", type=int, default=8, help="timed rounds per model")
    parser.add_argument("--steps", type=int, default=6, help="training steps per round")
    parser.add_argument("--set", dest="overrides", nargs="*", default=[], help="config overrides")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "train.md")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    # as `cvkit train` does on the CPU; process-wide, so torchvision's runs get it too
    keep_freed_memory()
    load_before = uptime()

    config = bench_config([f"train.epochs={args.epochs}", "train.plots=false", *args.overrides])
    task = get_task(config.task)(config)
    train_set, val_set = task.build_dataset("train"), task.build_dataset("val")
    num_classes = len(train_set.classes)
    loader = task.build_loader(train_set, train=True)
    batches = [batch for batch, _ in zip(loader, range(args.steps), strict=False)]

    runs = training_runs(config, build_pair, num_classes)
    rates = throughput(runs, batches, args.rounds, args.steps)
    conv_ms = convolution_time(runs, batches[0], args.rounds, args.steps)
    batch = config.data.batch_size
    conv_share = {name: conv_ms[name] * rates[name] / (1000 * batch) for name in runs}
    scores = {}
    for name in ("cvkit", "torchvision"):
        fresh_ours, fresh_theirs = build_pair(config, num_classes)
        model = fresh_ours if name == "cvkit" else fresh_theirs
        scores[name] = train_and_score(config, model, task, train_set, val_set)
        print(name, f"{rates[name]:.1f} img/s", scores[name], flush=True)

    ratio = rates["cvkit"] / rates["torchvision"]
    same_settings = rates["cvkit"] / rates[TUNED]
    # a cvkit step can take no less than its convolutions: the highest ratio this body allows
    ceiling = ratio / conv_share["cvkit"]
    meets = ratio >= 2.0 and scores["cvkit"]["mAP50"] >= scores["torchvision"]["mAP50"]
    cfg = config
    lines = [
        "# Training: cvkit SSD vs torchvision SSD",
        "",
        f"Written by `benchmarks/bench_train.py` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; "
        f"{cpu_model()} ({vector_isa()}), {os.cpu_count()} CPUs visible, "
        f"{THREADS} torch threads, torch {torch.__version__}, torchvision "
        f"{torchvision.__version__}. No GPU in this run (no AMP / CUDA numbers).",
        "",
        f"Model: `configs/ssd.yaml` ({cfg.model.backbone}, stages {cfg.model.out_features} + "
        f"{cfg.model.ssd.extra_blocks} extra blocks), input {cfg.data.image_size}² px, batch "
        f"{cfg.data.batch_size}, synthetic shapes ({cfg.data.synthetic.num_train} train / "
        f"{cfg.data.synthetic.num_val} val images), anchor sizes on the shared SSD rule. "
        "torchvision's `SSD` class gets the same body (same initial weights), the same anchors "
        "and the same batches.",
        "",
        f"Throughput: median of {args.rounds} alternating rounds of {args.steps} training steps "
        "(forward + loss + backward + AdamW) on the same pre-loaded batches, freed memory kept "
        "for reuse as `cvkit train` keeps it on the CPU (the whole process: all three runs): "
        "cvkit's SSD as "
        "its Trainer trains it here (channels-last convolutions on the CPU, fused AdamW), "
        "torchvision's as its reference recipe does (contiguous, `torch.optim.AdamW` "
        "defaults), and torchvision's again with cvkit's layout and optimizer.",
        f"Accuracy: each trained by cvkit's Trainer for {args.epochs} epochs (same seed, "
        f"loader, AdamW lr {cfg.train.lr}, {cfg.train.scheduler} schedule), COCO mAP on val.",
        "",
        *training_table(rates, scores, conv_share, batch),
    ]
    lines += [
        "",
        f"cvkit / torchvision throughput: **{ratio:.2f}x** (target ≥ 2x at equal or better "
        f"mAP): {'met' if meets else 'NOT met'} in this run; {same_settings:.2f}x against "
        "torchvision's model trained with cvkit's layout and optimizer (the model code alone).",
        "",
        f"Ceiling: cvkit's convolutions (each `nn.Conv2d` call of a step replayed on its own "
        "with the step's inputs, output gradients and memory layout, forward and backward; "
        f"median of {args.rounds} alternating rounds of {args.steps} replays, outside "
        f"`torch.profiler`) take {conv_ms['cvkit']:.1f} ms, {conv_share['cvkit']:.0%} of its "
        f"{1000 * batch / rates['cvkit']:.1f} ms step (torchvision's: "
        f"{conv_ms['torchvision']:.1f} ms of {1000 * batch / rates['torchvision']:.1f} ms). "
        "A step that spent nothing else would run "
        f"{1000 * batch / conv_ms['cvkit']:.0f} images/s, **{ceiling:.2f}x** "
        "torchvision's: the most any code around these shared convolutions can reach on this "
        "CPU in fp32.",
        "",
        f"Load before: `{load_before}`; after: `{uptime()}` ({os.cpu_count()} CPUs); "
        "the throughput ratio comes from alternating rounds under the "
        "same load, so it is fairer than the absolute numbers when other jobs run.",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # The recorded `make train` section is measured separately; keep it.
    previous = args.out.read_text(encoding="utf-8") if args.out.exists() else ""
    parts = previous.split(MAKE_TRAIN_HEADING)
    kept = MAKE_TRAIN_HEADING + parts[1] if len(parts) > 1 else ""
    args.out.write_text("\n".join(lines) + "\n" + ("\n" + kept if kept else ""), encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
