"""Where a training step's time goes on this machine: one table per phase.

For a config (default ``configs/ssd.yaml``, what ``make train`` trains) each phase is timed on
its own in the main process, with the thread count training would use:

- ``decode``: reading one image as the dataset does (from the cache when ``data.cache`` is on);
- ``augment``: the rest of one training sample (mosaic when ``data.mosaic`` is on,
  augmentation, fit to size, targets);
- ``collate``: stacking and normalizing a batch;
- ``forward``: the network (backbone, neck, head); ``loss``: anchor matching and the loss
  (for a model with ``predict`` and ``match``, as SSD; otherwise forward and loss are one row);
- ``backward``; ``optimizer``: the step and zeroing the gradients;
- ``validation``: one ``task.evaluate`` pass, spread over the ``train.val_every`` epochs of
  training images it follows.

Then three end-to-end rates: the training loader alone (its workers, one epoch, startup
included), the model step alone (pre-loaded batches) and the Trainer's epoch with both, which
shows what the loop loses on top of its parts.

    python benchmarks/bench_step.py [--cfg configs/ssd.yaml] [--label after] [--set KEY=VALUE ...]

Appends (or replaces) the section ``--label`` of ``benchmarks/results/step.md``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import torch
from machine import cpu_model, uptime, vector_isa

from cvkit.config import load_config
from cvkit.data.sampling import SampleKey, sample_seed
from cvkit.engine.environment import configure_threads, seed_everything
from cvkit.engine.optim import build_optimizer
from cvkit.engine.tasks import get_task
from cvkit.engine.trainer import Trainer
from cvkit.resources import keep_freed_memory

ROOT = Path(__file__).resolve().parents[1]


def timed(fn: Callable[[], object], repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def sample_phases(dataset, count: int) -> tuple[float, float]:
    """Median seconds per image of decoding and of a whole training sample (a mosaic when the
    config asks for one: the keys are those of an epoch with multi-sample transforms on)."""
    keys = list(range(min(count, len(dataset))))
    samples = dataset.records.samples
    cache = getattr(getattr(dataset, "dataset", dataset), "cache", None)  # under a mosaic

    def decode() -> None:
        for index in keys:
            if cache is not None:
                cache.image(index, samples[index])
            else:
                samples[index].load_image()

    def whole() -> None:
        for index in keys:
            dataset[SampleKey(index, sample_seed(0, 0, index), 0, True)]

    return timed(decode, 3) / len(keys), timed(whole, 3) / len(keys)


def model_phases(task, model, batches, config) -> dict[str, float]:
    """Median seconds per batch of forward, loss, backward and the optimizer step."""
    optimizer = build_optimizer(model, config.train)
    model.train()
    split = hasattr(model, "predict") and hasattr(model, "losses")
    rows: dict[str, list[float]] = {}

    def add(name: str, seconds: float) -> None:
        rows.setdefault(name, []).append(seconds)

    for round_index in range(2):
        for batch in batches:
            images, targets = task.to_device(batch, torch.device("cpu"))
            start = time.perf_counter()
            if split:
                logits, deltas, anchors = model.predict(images)
                forward_done = time.perf_counter()
                losses = model.losses(logits, deltas, anchors, targets)
            else:
                losses = task.loss(model, (images, targets))
                forward_done = start
            total = sum(losses.values())
            loss_done = time.perf_counter()
            total.backward()
            backward_done = time.perf_counter()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step_done = time.perf_counter()
            if round_index:  # round 0 warms up allocators and caches
                if split:
                    add("forward", forward_done - start)
                    add("loss (matching + loss)", loss_done - forward_done)
                else:
                    add("forward + loss", loss_done - start)
                add("backward", backward_done - loss_done)
                add("optimizer", step_done - backward_done)
    return {name: statistics.median(values) for name, values in rows.items()}


def loader_rate(loader, epochs: int = 2) -> float:
    """Images/s of iterating ``loader`` for ``epochs`` epochs (worker startup included)."""
    images = 0
    start = time.perf_counter()
    for epoch in range(epochs):
        sampler = getattr(loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        for batch, _ in loader:
            images += len(batch)
    return images / (time.perf_counter() - start)


def trainer_rate(config, task, train_set, epochs: int = 2) -> float:
    """Images/s of the Trainer's epochs (loader and model step together, no validation)."""
    seed_everything(config.seed)
    model = task.build_model(len(train_set.classes))
    run_config = config.model_copy(
        update={"train": config.train.model_copy(update={"epochs": epochs, "val_every": 10**6})}
    )
    trainer = Trainer(run_config, task, model, task.build_loader(train_set, train=True))
    images = 0
    start = time.perf_counter()
    for epoch in range(epochs):
        row = trainer.train_one_epoch(epoch)
        images += row["img_per_s"] * row["epoch_time_s"]
    return images / (time.perf_counter() - start)


def profile(config, steps: int) -> tuple[list[str], dict[str, float]]:
    """The per-phase table and the end-to-end rates of ``config``."""
    task = get_task(config.task)(config)
    train_set = task.build_dataset("train")
    val_set = task.build_dataset("val")
    batch = config.data.batch_size
    decode_s, sample_s = sample_phases(train_set, 4 * batch)
    loader = task.build_loader(train_set, train=True)
    collate = loader.collate_fn
    raw = [train_set[i] for i in range(batch)]
    collate_s = timed(lambda: collate(raw), 10)
    batches = []
    for images, targets in loader:
        batches.append((images, targets))
        if len(batches) == steps:
            break
    seed_everything(config.seed)
    model = task.build_model(len(train_set.classes))
    step = model_phases(task, model, batches, config)
    val_loader = task.build_loader(val_set, train=False)
    model.eval()
    start = time.perf_counter()
    with torch.no_grad():
        task.evaluate(model, val_loader, torch.device("cpu"))
    val_s = time.perf_counter() - start
    val_per_batch = val_s / (config.train.val_every * len(train_set)) * batch
    phases = {
        "decode": decode_s * batch,
        "augment": (sample_s - decode_s) * batch,
        "collate": collate_s,
        **step,
        "validation (amortized)": val_per_batch,
    }
    total = sum(phases.values())
    lines = [
        f"| phase | ms per batch of {batch} | ms per image | share |",
        "|---|---|---|---|",
    ]
    for name, seconds in phases.items():
        lines.append(
            f"| {name} | {seconds * 1e3:.2f} | {seconds * 1e3 / batch:.3f} | "
            f"{seconds / total:.0%} |"
        )
    lines.append(f"| **sum** | {total * 1e3:.2f} | {total * 1e3 / batch:.3f} | 100% |")
    model_step = sum(step.values())
    rates = {
        "serial sum of the phases": batch / total,
        "model step alone (pre-loaded batches)": batch / model_step,
        f"training loader alone ({loader_workers(config)} workers)": loader_rate(loader),
        "Trainer epochs (loader + step)": trainer_rate(config, task, train_set),
    }
    return lines, rates


def write_section(path: Path, label: str, lines: list[str]) -> None:
    """Replace the ``## label`` section of ``path`` (or append it)."""
    heading = f"## {label}"
    text = path.read_text() if path.exists() else "# Training step profile\n"
    sections = text.split("\n## ")
    head, rest = sections[0], [f"## {s}" for s in sections[1:]]
    rest = [s for s in rest if s.splitlines()[0].strip() != heading]
    rest.append("\n".join([heading, "", *lines, ""]))
    path.write_text("\n".join([head.rstrip() + "\n", *[s.rstrip() + "\n" for s in rest]]))


def loader_workers(config) -> str:
    """``data.workers`` as the loader resolves it (``auto`` names the count it chose)."""
    workers = config.data.workers
    if workers != "auto":
        return str(workers)
    from cvkit.resources import resolve_workers

    return f"{resolve_workers(workers)} (auto)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cfg", type=Path, default=ROOT / "configs" / "ssd.yaml")
    parser.add_argument("--label", default="now", help="section name in the results file")
    parser.add_argument("--steps", type=int, default=12, help="training batches timed")
    parser.add_argument("--set", dest="overrides", nargs="*", default=[], help="config overrides")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "step.md")
    args = parser.parse_args()
    config = load_config(args.cfg, args.overrides)
    threads = configure_threads()
    keep_freed_memory()  # as `cvkit train` does on the CPU
    load_before = uptime()
    lines, rates = profile(config, args.steps)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    body = [
        f"`{args.cfg.relative_to(ROOT) if args.cfg.is_relative_to(ROOT) else args.cfg}` "
        f"{' '.join(args.overrides)}, measured {stamp} on {cpu_model()} ({vector_isa()}), "
        f"{threads} torch threads, {loader_workers(config)} loader workers, "
        f"torch {torch.__version__}.",
        f"Load before: `{load_before}`; after: `{uptime()}`.",
        "",
        *lines,
        "",
        "| end to end | images/s |",
        "|---|---|",
        *[f"| {name} | {rate:.1f} |" for name, rate in rates.items()],
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_section(args.out, args.label, body)
    print("\n".join(body))


if __name__ == "__main__":
    main()
