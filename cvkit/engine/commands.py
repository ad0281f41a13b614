"""Handlers of ``cvkit train`` and ``cvkit eval`` (see :mod:`cvkit.cli`).

``cvkit train --cfg CFG [--set K=V ...] [--out DIR] [--resume last.pt] [--json PATH]``:
config → seed, threads, device → run folder → datasets (checked by :mod:`cvkit.data`) →
model → :class:`~cvkit.engine.trainer.Trainer` → summary. Under ``torchrun`` every process
runs this and rank 0 alone writes the run folder.

With ``export.after_train``, ``best.pt`` is then exported to ``weights/best.onnx`` (checked
against torch by :mod:`cvkit.export`); a failed export is reported after the training results
are safely written and makes the command exit with status 1.

``cvkit eval --cfg CFG --weights CKPT [--json PATH] [--detections PATH]`` rebuilds the model
from the checkpoint and scores it on the config's val split; an exported ``.onnx`` is scored the
same way through onnxruntime (:class:`cvkit.export.quantize.OnnxEvalModel`). ``--detections``
(detection tasks) writes the scored detections as a COCO results file.

``--json`` writes the metrics as JSON: the flat keys (``mAP``, ``mAP50``, ``mAP75`` ...) plus
one ``per_class_<metric>`` mapping for each ``<metric>/<class>`` key (e.g. ``per_class_AP``);
NaN (no ground truth) becomes null.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from cvkit.config import Config, load_config
from cvkit.engine import distributed
from cvkit.engine.callbacks import Callback
from cvkit.engine.callbacks.builtin import AdaptThreads
from cvkit.engine.environment import (
    available_cpus,
    configure_threads,
    seed_everything,
    select_device,
)
from cvkit.engine.rundir import RunDir, create_run_dir
from cvkit.engine.tasks import Task, get_task
from cvkit.engine.trainer import Trainer
from cvkit.errors import ConfigError, CvkitError, DatasetError
from cvkit.logs import get_logger, setup_logging
from cvkit.resources import keep_freed_memory

if TYPE_CHECKING:
    from cvkit.data.records import ClassMap

logger = get_logger("commands")


@dataclass
class TrainRun:
    """What one training run produced (see :func:`run_training`).

    Attributes:
        metrics: validation metrics of ``best.pt`` (the last epoch's training losses when
            there is no validation).
        folder: the run folder (``config.yaml``, ``train.log``, ``metrics.csv``, ``plots/``).
        best: ``weights/best.pt``; last: ``weights/last.pt``.
        best_epoch: the epoch ``best.pt`` was saved at (0: never).
        epochs: epochs trained in total.
        onnx: ``weights/best.onnx`` when ``export.after_train`` exported it, else None.
        export_error: why that export failed, else None.
    """

    metrics: dict[str, float]
    folder: Path
    best: Path
    last: Path
    best_epoch: int
    epochs: int
    onnx: Path | None = None
    export_error: str | None = None


def train(args: argparse.Namespace) -> int:
    """``cvkit train``: train a model from a config; returns the exit code (1 when the
    ``export.after_train`` export failed, after the training results were written)."""
    config = load_config(args.cfg, args.overrides)
    run = run_training(config, resume=args.resume, out=args.out, json_path=args.json)
    return 1 if run.export_error else 0


def run_training(
    config: Config,
    resume: str | Path | None = None,
    out: str | Path | None = None,
    json_path: str | Path | None = None,
    callbacks: Sequence[Callback] = (),
) -> TrainRun:
    """Train ``config`` as ``cvkit train`` does (also under ``torchrun``): seed, threads,
    device, run folder, datasets, model, :class:`~cvkit.engine.trainer.Trainer` with
    ``callbacks``, summary, and the ``export.after_train`` export.

    Args:
        config: the validated config.
        resume: a ``last.pt`` to continue from.
        out: the run folder (default: the resumed run's, else a new one under ``runs/``).
        json_path: also write the metrics there as JSON.
        callbacks: extra :class:`~cvkit.engine.callbacks.Callback` objects.

    Raises:
        CvkitError: a bad dataset, config or checkpoint (the export's failure is reported in
            :attr:`TrainRun.export_error` instead).
    """
    info = distributed.init_distributed()
    try:
        return _train(config, resume, out, json_path, list(callbacks), info)
    finally:
        distributed.cleanup_distributed()


def _train(
    config: Config,
    resume: str | Path | None,
    out: str | Path | None,
    json_path: str | Path | None,
    callbacks: list[Callback],
    info: distributed.DistInfo,
) -> TrainRun:
    threads = config.train.threads
    if threads is None and info.enabled:
        threads = max(1, available_cpus() // info.local_world_size)
    configure_threads(threads)
    if threads is None and not os.environ.get("OMP_NUM_THREADS"):
        callbacks = [AdaptThreads(), *callbacks]
    device = select_device(config.device)
    if info.enabled and device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
    if device.type == "cpu":
        keep_freed_memory()
    seed_everything(config.seed)
    run = _run_dir(config, out, resume) if info.rank == 0 else None
    if info.rank != 0:
        setup_logging("WARNING")
    run_root = distributed.broadcast_object(str(run.root) if run else None)
    run = RunDir(Path(run_root))

    task = get_task(config.task)(config)
    train_set = task.build_dataset("train")
    classes = list(train_set.classes)
    val_set = task.build_val_dataset(_train_class_map(train_set))
    _check_same_classes(classes, list(val_set.classes))
    model = task.build_model(_num_classes(config, classes))
    trainer = Trainer(
        config,
        task,
        model,
        task.build_loader(train_set, train=True, distributed=info.enabled),
        task.build_loader(val_set, train=False),
        run=run,
        device=device,
        classes=classes,
        callbacks=callbacks,
    )
    if resume:
        trainer.resume(resume)
    start = time.perf_counter()
    metrics = trainer.fit()
    result = TrainRun(metrics, run.root, run.best, run.last, trainer.best_epoch, trainer.epoch)
    if info.rank == 0:
        elapsed = time.perf_counter() - start
        best = f" (best.pt: epoch {trainer.best_epoch})" if trainer.best_epoch else ""
        print(f"cvkit train: {trainer.epoch} epochs in {_duration(elapsed)}{best}")
        print(format_metrics(task, metrics))
        print(f"run folder: {run.root} (weights/, metrics.csv, plots/, train.log)")
        if json_path:
            extra = {"epoch": trainer.best_epoch, "run": str(run.root), "time_s": elapsed}
            write_metrics_json(json_path, metrics, extra)
        if config.export.after_train:
            _export_best(run, result)
    return result


def _export_best(run: RunDir, result: TrainRun) -> None:
    """Export ``best.pt`` to ONNX next to it, recording the file or the error in ``result``."""
    from cvkit.export.commands import export_checkpoint

    try:
        exported = export_checkpoint(run.best)
    except CvkitError as exc:
        logger.error("training finished, but exporting %s failed: %s", run.best, exc)
        result.export_error = str(exc)
        return
    result.onnx = exported.path
    print(f"exported: {exported.path} (ONNX, checked against torch)")


def evaluate(args: argparse.Namespace) -> int:
    """``cvkit eval``: score a checkpoint or an exported ``.onnx`` on the config's val split with
    the task's ``evaluate``; returns the exit code.

    Raises:
        ConfigError: ``--detections`` for a task that writes no COCO detections.
        CheckpointError: the weights' classes differ from the val split's.
    """
    config = load_config(args.cfg, args.overrides)
    configure_threads(config.train.threads)
    task = get_task(config.task)(config)
    options = {**_eval_plots(task, args), **_eval_detections(task, args)}
    exported = str(args.weights).lower().endswith(".onnx")
    device = None if exported else select_device(config.device)
    label = f"{args.weights} (onnxruntime)" if exported else str(args.weights)
    from cvkit.export.quantize import evaluate_weights

    start = time.perf_counter()
    metrics, images = evaluate_weights(args.weights, task, device, **options)
    print(f"cvkit eval: {label} on {images} images in {_duration(time.perf_counter() - start)}")
    print(format_metrics(task, metrics))
    if "plots" in options:
        print(f"plots: {options['plots']}")
    if "detections" in options:
        print(f"detections (COCO results): {options['detections']}")
    if args.json:
        write_metrics_json(args.json, metrics, {"weights": str(args.weights)})
    return 0


def _eval_plots(task: Task, args: argparse.Namespace) -> dict[str, Path]:
    """``{"plots": folder}`` for a task whose ``evaluate`` takes ``plots`` (detection: PR
    curves, confusion matrix, worst images), unless ``--no-plots``; the folder is ``--plots``,
    else the ``plots/`` of the run the weights belong to (``<run>/weights/W.pt``)."""
    takes_plots = "plots" in inspect.signature(task.evaluate).parameters
    if getattr(args, "no_plots", False) or not takes_plots:
        return {}
    if getattr(args, "plots", None):
        return {"plots": Path(args.plots)}
    weights = Path(args.weights)
    run = weights.parent.parent if weights.parent.name == "weights" else weights.parent
    return {"plots": run / "plots" / f"eval_{weights.stem}"}


def _eval_detections(task: Task, args: argparse.Namespace) -> dict[str, Path]:
    """``{"detections": path}`` for ``--detections PATH``, refused up front (before any work)
    for a task whose ``evaluate`` writes no COCO results file (only detection does).

    Raises:
        ConfigError: ``--detections`` for such a task.
    """
    path = getattr(args, "detections", None)
    if path is None:
        return {}
    if "detections" not in inspect.signature(task.evaluate).parameters:
        raise ConfigError(
            f"--detections {path}: task {task.name!r} has no COCO detections to write "
            "(only detection tasks do; use --json for its metrics)"
        )
    return {"detections": Path(path)}


def format_metrics(task: Task, metrics: dict[str, float]) -> str:
    """The task's one-line summary, then one ``<metric>/<class>`` value per line."""
    lines = [task.describe(metrics)]
    per_class = {k: v for k, v in metrics.items() if "/" in k}
    if per_class:
        width = max(len(key) for key in per_class)
        lines += [f"  {key:<{width}}  {value:.4f}" for key, value in per_class.items()]
    return "\n".join(lines)


def metrics_json(metrics: dict[str, float]) -> dict[str, Any]:
    """Metrics for JSON: ``<metric>/<class>`` keys grouped as ``per_class_<metric>``; NaN → None."""
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        clean = None if isinstance(value, float) and not math.isfinite(value) else value
        metric, sep, name = key.partition("/")
        if sep:
            out.setdefault(f"per_class_{metric}", {})[name] = clean
        else:
            out[key] = clean
    return out


def write_metrics_json(path: str | Path, metrics: dict[str, float], extra: dict[str, Any]) -> Path:
    """Write :func:`metrics_json` plus ``extra`` keys to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**metrics_json(metrics), **extra}, indent=2), encoding="utf-8")
    return path


def _run_dir(config: Config, out: str | Path | None, resume: str | Path | None) -> RunDir:
    """``out``, else the run folder of ``resume``'s checkpoint, else a new one in ``runs/``."""
    if out is None and resume:
        resumed = Path(resume)
        if resumed.parent.name == "weights":
            out = resumed.parent.parent
    return create_run_dir(config, out=out)


def _train_class_map(train_set: Any) -> ClassMap:
    """The train split's numbering, which the val split is read with: its classes and, for
    COCO, category ids."""
    from cvkit.data.records import ClassMap

    category_ids = getattr(train_set, "category_ids", None)
    return ClassMap(
        list(train_set.classes),
        None if category_ids is None else list(category_ids),
        "the train split",
    )


def _check_same_classes(train: list[str], val: list[str]) -> None:
    """Refuse splits whose class lists still differ once the val split was built with the
    train split's numbering: the model numbers classes as the train split does, and
    validation would score its labels against other names. A COCO val split already has
    train's classes (or was refused naming the category train lacks); this catches the
    formats and custom datasets whose class lists come from elsewhere.

    Raises:
        DatasetError: naming both lists.
    """
    if train != val:
        raise DatasetError(
            f"the train split has the classes {train} but the val split {val}: both must "
            "list the same classes in the same order (a COCO val file may list only some of "
            "the train file's categories, with the same ids and names)"
        )


def _num_classes(config: Config, classes: list[str]) -> int:
    if config.model.num_classes is not None and config.model.num_classes != len(classes):
        raise ConfigError(
            f"model.num_classes: {config.model.num_classes}, but the dataset has "
            f"{len(classes)} classes {classes}; leave it unset to use the dataset's"
        )
    return len(classes)


def _duration(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m{rest:02d}s" if minutes else f"{seconds:.1f}s"
