"""Transfer learning on synthetic shape crops: fine-tuning a pretrained backbone vs training
from scratch, with the same budget and seeds.

- Task A (pretraining): circle vs rectangle crops from ``--pretrain-images`` synthetic images
  (triangles left out), ``--pretrain-epochs`` epochs.
- Task B (target): circle / rectangle / triangle with few labels: crops of only
  ``--target-images`` images; validated on crops of ``--val-images`` images.

Arms on B, each for ``--epochs`` epochs and the same optimizer, schedule and seeds:
``scratch`` (random init), ``finetune`` (A's backbone and the circle/rectangle output rows via
``model.reuse_classes``; the triangle row is new) and ``finetune_frozen`` (the same with
``model.freeze_at=2``: stem and layer1 frozen). Val top-1 is recorded after every epoch; the
table reports the mean and spread over the seeds. Writes ``benchmarks/results/transfer.md``.

    python benchmarks/bench_transfer.py [--seeds 0 1 2] [--epochs 20] [--target-images 40]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from cvkit.config import load_config
from cvkit.config.data import DataConfig
from cvkit.data.classification import ObjectCropDataset
from cvkit.data.records import Records
from cvkit.data.synthetic import synthetic_records
from cvkit.engine.rundir import RunDir
from cvkit.engine.tasks.classify import ClassifyTask, shape_crops
from cvkit.engine.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "classify_resnet.yaml"
ARMS = {
    "scratch": [],
    "finetune": ["model.reuse_classes=true"],
    "finetune_frozen": ["model.reuse_classes=true", "model.freeze_at=2"],
}


def only_classes(records: Records, keep: list[str]) -> Records:
    """The split restricted to objects of ``keep`` (labels re-indexed to ``keep``'s order)."""
    index = {records.classes.index(name): new for new, name in enumerate(keep)}
    samples = []
    for sample in records.samples:
        part = sample.subset(np.isin(sample.labels, list(index)))
        part.labels = np.array([index[int(label)] for label in part.labels], np.int64)
        samples.append(part)
    return Records(samples, list(keep), None, f"{records.source} {keep}")


def crops(records: Records, data: DataConfig, train: bool) -> ObjectCropDataset:
    """Crops of ``records`` at ``data.image_size``, normalized with ``data.mean``/``data.std``."""
    return shape_crops(records, data, train)


def train(overrides: list[str], train_set, val_set, out: Path, seed: int) -> list[float]:
    """Train one arm; returns val top-1 after every epoch (from the run's metrics.jsonl)."""
    config = load_config(CONFIG, [*overrides, f"seed={seed}", "train.plots=false"])
    task = ClassifyTask(config)
    task.classes = list(train_set.classes)  # target names for model.reuse_classes
    torch.manual_seed(seed)
    model = task.build_model(len(train_set.classes))
    run = RunDir(out)
    run.weights.mkdir(parents=True, exist_ok=True)
    loaders = task.build_loader(train_set, True), task.build_loader(val_set, False)
    Trainer(config, task, model, *loaders, run=run).fit()
    rows = [json.loads(line) for line in run.metrics_jsonl.read_text().splitlines()]
    return [row["val/top1"] for row in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--pretrain-images", type=int, default=800)
    parser.add_argument("--pretrain-epochs", type=int, default=15)
    parser.add_argument("--target-images", type=int, default=40)
    parser.add_argument("--val-images", type=int, default=200)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "transfer.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    data = load_config(CONFIG).data
    pretrain_classes = ["circle", "rectangle"]
    source, _ = synthetic_records(args.pretrain_images, 160, seed=100, split="train")
    source_val, _ = synthetic_records(args.val_images, 160, seed=100, split="val")
    target, _ = synthetic_records(args.target_images, 160, seed=0, split="train")
    target_val, _ = synthetic_records(args.val_images, 160, seed=0, split="val")
    a_train = crops(only_classes(source, pretrain_classes), data, True)
    a_val = crops(only_classes(source_val, pretrain_classes), data, False)
    b_train, b_val = crops(target, data, True), crops(target_val, data, False)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        a_curve = train(
            [f"train.epochs={args.pretrain_epochs}"], a_train, a_val, tmp_path / "A", seed=0
        )
        checkpoint = tmp_path / "A" / "weights" / "last.pt"
        curves: dict[str, list[list[float]]] = {arm: [] for arm in ARMS}
        for seed in args.seeds:
            for arm, extra in ARMS.items():
                init = [f"model.pretrained={checkpoint}"] if arm != "scratch" else []
                overrides = [f"train.epochs={args.epochs}", *init, *extra]
                out = tmp_path / f"B-{arm}-{seed}"
                curves[arm].append(train(overrides, b_train, b_val, out, seed))
                print(f"seed {seed} {arm}: final top-1 {curves[arm][-1][-1]:.4f}", flush=True)
    elapsed = time.perf_counter() - start
    write_report(
        args, curves, a_curve, len(a_train), len(b_train), len(b_val), data.image_size, elapsed
    )


def write_report(args, curves, a_curve, n_a, n_b, n_val, size, elapsed) -> None:
    def mean_std(values: list[float]) -> str:
        spread = statistics.pstdev(values) if len(values) > 1 else 0.0
        return f"{100 * statistics.mean(values):.1f} ± {100 * spread:.1f}"

    epochs = len(next(iter(curves.values()))[0])
    shown = sorted(e for e in {1, 2, 3, 5, *range(5, epochs + 1, 5), epochs} if e <= epochs)
    lines = [
        "# Transfer learning: fine-tuned vs from scratch (synthetic shape crops)",
        "",
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC · {platform.machine()}, torch "
        f"{torch.__version__}, 1 thread, load average at the end "
        f"{', '.join(f'{v:.1f}' for v in os.getloadavg())} · {elapsed / 60:.1f} min in all",
        "",
        f"Backbone `resnet18_tiny`, linear head, {CONFIG.relative_to(ROOT)} optimizer and "
        f"schedule (AdamW, lr 0.01, cosine), {size}-pixel crops.",
        f"- **Task A** (pretraining): circle vs rectangle, {n_a} crops of "
        f"{args.pretrain_images} images, {args.pretrain_epochs} epochs → val top-1 "
        f"{100 * a_curve[-1]:.1f}%.",
        f"- **Task B** (target): circle / rectangle / triangle from only {n_b} crops of "
        f"{args.target_images} images; val: {n_val} crops of {args.val_images} other images.",
        f"- Same budget on B for every arm: {epochs} epochs, seeds {args.seeds}; `finetune` "
        "loads A's weights and reuses A's circle/rectangle output rows (`model.reuse_classes`), "
        "the triangle row starts fresh; `finetune_frozen` also sets `model.freeze_at=2`.",
        "",
        "Val top-1 (%) on task B after each epoch, mean ± std over seeds:",
        "",
        "| epoch | " + " | ".join(curves) + " |",
        "|---:|" + "---:|" * len(curves),
    ]
    for epoch in shown:
        cells = [mean_std([run[epoch - 1] for run in runs]) for runs in curves.values()]
        lines.append(f"| {epoch} | " + " | ".join(cells) + " |")
    lines += ["", "Final top-1 per seed:", ""]
    for arm, runs in curves.items():
        lines.append(f"- {arm}: " + ", ".join(f"{100 * run[-1]:.1f}" for run in runs))
    gain = statistics.mean(r[-1] for r in curves["finetune"]) - statistics.mean(
        r[-1] for r in curves["scratch"]
    )
    lines += ["", f"Fine-tuning minus scratch, final top-1: **{100 * gain:+.1f} points**.", ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
