"""Reduced-precision exports (float16, int8) and the accuracy gate that decides whether they ship.

``cvkit export --int8`` exports the float graph first, then quantizes it with onnxruntime:
:func:`quant_pre_process` (shape inference and graph clean-up), then static QDQ quantization
(``uint8`` activations, per-channel ``int8`` weights) calibrated on images pre-processed exactly
as the runtime pre-processes them (:class:`ImageCalibrationReader`), or dynamic quantization
(``--int8-mode dynamic``: weights only, no calibration). The range-sensitive end of the graph
stays float: :func:`float_tail` finds it from the graph itself, so box decoding, concatenation,
score activations, top-k and NMS never see quantized inputs (quantizing YOLO/SSD tails is what
collapses mAP to zero, onnxruntime #10787, #14233).

Every reduced-precision file is then scored on the validation split through the runtime
(:func:`evaluate_weights`, the task's own metric code) next to the float checkpoint; both numbers go
into the file's metadata (``accuracy``) and the log, and :func:`export_reduced` refuses a file
whose drop exceeds ``max_drop`` (nothing is left at the output path).
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnxruntime.quantization import CalibrationDataReader
from torch import nn

from cvkit.config import Config
from cvkit.config.export import ExportConfig
from cvkit.engine.tasks import Task, get_task
from cvkit.errors import CheckpointError, ConfigError, ExportError
from cvkit.images import ImageSource, read_image
from cvkit.logs import get_logger
from cvkit.runtime.metadata import ModelMetadata
from cvkit.runtime.predictors import load_predictor
from cvkit.runtime.preprocess import Geometry, preprocess
from cvkit.structures import Instances

logger = get_logger("export")

# The metric each task's accuracy gate compares (any other task: its ``best_metric``).
GATE_METRICS = {"detect": "mAP50", "segment": "mIoU", "classify": "top1"}
# Ops whose inputs are ranges quantization would clip or whose outputs index other tensors.
RANGE_SENSITIVE_OPS = frozenset(
    {
        "Softmax",
        "LogSoftmax",
        "Sigmoid",
        "Exp",
        "Log",
        "TopK",
        "NonMaxSuppression",
        "Gather",
        "GatherElements",
        "GatherND",
        "ArgMax",
    }
)
# Ops that carry learned weights: everything downstream of the last of them is the "tail".
WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})


def float_tail(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes to keep in float32: every node that is not upstream of (or itself) a
    weighted op (``Conv``, ``ConvTranspose``, ``Gemm``, ``MatMul``) — a detector's reshapes,
    concatenations, box decoding, top-k and NMS after its head — plus every
    :data:`RANGE_SENSITIVE_OPS` node wherever it sits.

    Unnamed nodes get a unique name first (``nodes_to_exclude`` works by name), so ``model`` may
    be changed in place.
    """
    nodes = list(model.graph.node)
    taken = {node.name for node in nodes}
    for index, node in enumerate(nodes):
        if not node.name:
            name = f"{node.op_type}_{index}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)
    producer = {output: index for index, node in enumerate(nodes) for output in node.output}
    body: set[int] = set()
    stack = [index for index, node in enumerate(nodes) if node.op_type in WEIGHTED_OPS]
    while stack:
        index = stack.pop()
        if index in body:
            continue
        body.add(index)
        stack.extend(producer[name] for name in nodes[index].input if name in producer)
    return [
        node.name
        for index, node in enumerate(nodes)
        if index not in body or node.op_type in RANGE_SENSITIVE_OPS
    ]


class ImageCalibrationReader(CalibrationDataReader):
    """onnxruntime's calibration data reader: one pre-processed image per ``get_next``.

    Images are read and pre-processed as :class:`cvkit.runtime.Predictor` does it (the
    metadata's resize policy, size and normalization), so the ranges seen in calibration are
    the ranges met at inference.

    Args:
        images: RGB ``uint8 [H, W, 3]`` arrays or image files.
        metadata: the exported model's metadata.
        input_name: the graph's input.
    """

    def __init__(
        self, images: Sequence[ImageSource], metadata: ModelMetadata, input_name: str = "images"
    ) -> None:
        self.images = list(images)
        self.metadata = metadata
        self.input_name = input_name
        self._iterator = self._feeds()

    def _feeds(self) -> Iterator[dict[str, np.ndarray]]:
        meta = self.metadata
        for source in self.images:
            batch, _ = preprocess(
                [read_image(source)], meta.input_size, meta.resize, meta.mean, meta.std
            )
            yield {self.input_name: batch}

    def get_next(self) -> dict[str, np.ndarray] | None:
        """The next ``{input_name: float32 [1, 3, H, W]}``, or None when all were given."""
        return next(self._iterator, None)

    def rewind(self) -> None:
        """Start again from the first image."""
        self._iterator = self._feeds()


def calibration_images(config: Config, source: str, count: int) -> list[ImageSource]:
    """Up to ``count`` calibration images (evenly spread over the source).

    Args:
        config: the checkpoint's config (its ``data:`` section names the splits).
        source: ``train`` or ``val`` (that split of the config's dataset), else image files or
            folders separated by commas.
        count: how many images at most.

    Raises:
        ConfigError: the split's dataset has no image records (pass a folder instead).
        DatasetError: a named file or folder does not exist or holds no images.
    """
    if source in ("train", "val"):
        dataset = get_task(config.task)(config).build_dataset(source)
        records = getattr(dataset, "records", None)
        if records is None:
            raise ConfigError(
                f"--calib {source}: the {config.task} dataset gives no raw images; pass an "
                "image folder instead"
            )
        items: list[Any] = list(records.samples)
    else:
        from cvkit.engine.predict import list_images

        items = list_images([part for part in source.split(",") if part])
    if count < 1:
        raise ConfigError(f"--calib-images: expected a positive count, got {count}")
    chosen = np.linspace(0, len(items) - 1, min(count, len(items))).round().astype(int)
    picked = [items[index] for index in dict.fromkeys(chosen.tolist())]
    return [item if isinstance(item, Path) else item.load_image() for item in picked]


def quantize_int8(
    float_path: str | Path,
    out: str | Path,
    calibration: Sequence[ImageSource] | None,
    mode: str = "static",
) -> list[str]:
    """Quantize the float ONNX export ``float_path`` into ``out`` (metadata kept).

    Args:
        float_path: a float32 ``cvkit export`` file.
        out: the int8 file to write.
        calibration: calibration images (``static`` only).
        mode: ``static`` (QDQ, calibrated activations, per-channel weights) or ``dynamic``
            (weights only; activations quantized on the fly).

    Returns:
        The names of the nodes kept in float (:func:`float_tail`).

    Raises:
        ConfigError: an unknown mode, or ``static`` without calibration images.
        ExportError: onnxruntime failed to quantize the graph.
    """
    from onnxruntime.quantization import (
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if mode not in ("static", "dynamic"):
        raise ConfigError(f"--int8-mode: expected 'static' or 'dynamic', got {mode!r}")
    if mode == "static" and not calibration:
        raise ConfigError("--int8 (static): no calibration images")
    source = onnx.load(str(float_path))
    metadata = ModelMetadata.from_props(
        {prop.key: prop.value for prop in source.metadata_props}, str(float_path)
    )
    with tempfile.TemporaryDirectory() as folder:
        prepared = Path(folder) / "prepared.onnx"
        try:
            # onnx's shape inference suffices for these graphs; the symbolic one (for dynamic
            # transformer shapes) stops on the exported Resize/NMS ops.
            quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)
            model = onnx.load(str(prepared))
            excluded = float_tail(model)
            onnx.save(model, str(prepared))
            if mode == "static":
                reader = ImageCalibrationReader(calibration, metadata, source.graph.input[0].name)
                # Calibration records the range of every tensor; some in the float tail have
                # non-finite ranges (numpy warns while their unused zero points are computed).
                # The parameters of the tensors actually quantized are checked below.
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    quantize_static(
                        str(prepared),
                        str(out),
                        reader,
                        quant_format=QuantFormat.QDQ,
                        per_channel=True,
                        activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8,
                        nodes_to_exclude=excluded,
                    )
            else:
                # onnxruntime's CPU ConvInteger takes uint8 weights only.
                quantize_dynamic(
                    str(prepared),
                    str(out),
                    per_channel=True,
                    weight_type=QuantType.QUInt8,
                    nodes_to_exclude=excluded,
                )
        except (ConfigError, ExportError):
            raise
        except Exception as exc:
            raise ExportError(f"{float_path}: int8 quantization ({mode}) failed: {exc}") from exc
    quantized = onnx.load(str(out))
    _check_quantization_parameters(quantized, float_path)
    del quantized.metadata_props[:]
    onnx.helper.set_model_props(quantized, metadata.to_props())
    onnx.save(quantized, str(out))
    logger.info("int8 (%s): %d nodes kept in float", mode, len(excluded))
    return excluded


def _check_quantization_parameters(model: onnx.ModelProto, source: str | Path) -> None:
    """Raise :class:`ExportError` when a Q/DQ node got a non-finite scale or zero point."""
    from onnx import numpy_helper

    constants = {tensor.name: tensor for tensor in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        for name in node.input[1:]:
            if name in constants:
                value = numpy_helper.to_array(constants[name]).astype(np.float64)
                if not np.all(np.isfinite(value)):
                    raise ExportError(
                        f"{source}: int8 quantization gave {node.name} a non-finite {name}; "
                        "check the calibration images"
                    )


class OnnxEvalModel(nn.Module):
    """An exported file behind the interface a task's ``evaluate`` expects of a torch model.

    ``forward(images float32 [B, 3, H, W])`` (the val loader's batch, pre-processed as the
    runtime does) runs the file in onnxruntime on the CPU and returns what the task's model
    would: for detecting tasks one :class:`~cvkit.structures.Instances` per image in input
    pixels, selected by the runtime predictor's own post-processing (the graph's NMS, or its
    numpy selection for raw candidates; instance masks, when the graph has them, pasted as 0/1
    ``[N, H, W]``); for the others the logits as a tensor. A file with a
    fixed batch runs in chunks of that size (the last one padded). The graph's inputs after
    the images come from the predictor too (an exported Fast R-CNN's selective-search
    proposals, computed on the batch as the torch model computes them in validation).
    """

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        super().__init__()
        self.predictor = load_predictor(path, "cpu", threads=threads)
        self.metadata = self.predictor.metadata
        self.detects = get_task(self.metadata.task).exports_nms

    def forward(self, images: torch.Tensor) -> list[Instances] | torch.Tensor:
        """See the class docstring."""
        session = self.predictor.model
        batch = images.detach().cpu().numpy().astype(session.input_dtype)
        static = session.input_shape[0]
        step = static if isinstance(static, int) else len(batch)
        size = (int(images.shape[-2]), int(images.shape[-1]))
        # the identity placement: the predictor's results stay in input pixels
        identity = [Geometry(size, (1.0, 1.0))] * len(batch)
        outputs: list[dict[str, np.ndarray]] = []
        for start in range(0, len(batch), step):
            chunk = batch[start : start + step]
            padding = step - len(chunk)
            if padding:
                chunk = np.concatenate([chunk, np.zeros_like(chunk[:1]).repeat(padding, 0)])
            extra = self.predictor._graph_inputs(chunk, None, identity[: step - padding])
            ran = session.run(chunk, extra)
            outputs.append({name: value[: step - padding] for name, value in ran.items()})
        merged = {name: np.concatenate([o[name] for o in outputs]) for name in outputs[0]}
        if not self.detects:
            return torch.from_numpy(merged[session.output_names[0]].astype(np.float32))
        return [
            Instances(
                torch.from_numpy(found.boxes),
                torch.from_numpy(found.scores),
                torch.from_numpy(found.labels.astype(np.int64)),
                size,
                None if found.masks is None else torch.from_numpy(found.masks.astype(np.float32)),
            )
            for found in self.predictor._postprocess(merged, identity)
        ]


def evaluate_weights(
    weights: str | Path, task: Task, device: torch.device | None = None, **options: Any
) -> tuple[dict[str, float], int]:
    """Score a checkpoint or an exported file on the task config's val split with the task's
    ``evaluate``: one metric code for both, so their numbers compare.

    The val split is read with the weights' numbering (:meth:`Task.build_val_dataset`): a COCO
    val file may list only some of their categories (the checkpoint's or the export
    metadata's ``category_ids``, with the same ids and names).

    Args:
        weights: a ``.pt`` checkpoint (run by torch on ``device``, default the CPU) or an
            exported ``.onnx`` (run by onnxruntime on the CPU).
        task: the task (with its config) whose val split and metrics score it.
        device: where a checkpoint runs.
        options: passed on to the task's ``evaluate`` (e.g. ``plots``, ``detections``).

    Returns:
        The metrics and the number of val images scored.

    Raises:
        CheckpointError: the weights' classes differ from the val split's.
        DatasetError: the val split has a category the weights lack.
    """
    from cvkit.data.records import ClassMap
    from cvkit.engine.checkpoint import load_checkpoint
    from cvkit.models.loading import load_model

    if str(weights).lower().endswith(".onnx"):
        model: Any = OnnxEvalModel(weights, task.config.train.threads)
        classes, device, origin = list(model.metadata.classes), torch.device("cpu"), "exported"
        category_ids = model.metadata.category_ids
        source = f"the export {weights}"
    else:
        device = device or torch.device("cpu")
        checkpoint = load_checkpoint(weights, device)
        model = load_model(checkpoint, device, weights).eval()
        classes, origin = list(checkpoint["classes"]), "trained"
        category_ids = checkpoint.get("category_ids")
        source = f"the checkpoint {weights}"
    ids = None if category_ids is None else [int(i) for i in category_ids]
    val_set = task.build_val_dataset(ClassMap(classes, ids, source))
    if list(val_set.classes) != classes:
        raise CheckpointError(
            f"{weights}: {origin} for classes {classes}, but the val split has "
            f"{list(val_set.classes)}"
        )
    with torch.no_grad():
        metrics = task.evaluate(model, task.build_loader(val_set, train=False), device, **options)
    return metrics, len(val_set)


def gate_metric(task_name: str) -> str:
    """The metric the accuracy gate compares for ``task_name`` (:data:`GATE_METRICS`)."""
    return GATE_METRICS.get(task_name) or get_task(task_name).best_metric


@dataclass
class PrecisionResult:
    """A reduced-precision export that passed the accuracy gate.

    Attributes:
        path: the written file.
        precision: ``fp16`` or ``int8`` (``int8-dynamic`` for dynamic quantization).
        metric: the compared metric (``mAP50``, ``mIoU``, ``top1``).
        float_value: the float checkpoint's value on the val split.
        value: the exported file's value on the val split (through the runtime).
    """

    path: Path
    precision: str
    metric: str
    float_value: float
    value: float


def export_reduced(
    weights: str | Path,
    out: str | Path | None,
    options: ExportConfig,
    int8_mode: str | None = None,
    calib: str = "train",
    calib_images: int = 200,
    max_drop: float | None = None,
) -> PrecisionResult:
    """``cvkit export --half`` / ``--int8``: export, quantize, score, gate, then move into place.

    Everything is written to a temporary folder next to ``out`` first; the file appears at
    ``out`` only when its drop on the val split (float checkpoint value minus exported value, in
    the metric's units: 0.01 = one point) is at most ``max_drop`` (None: always accepted).

    Args:
        weights: the ``.pt`` checkpoint.
        out: output ``.onnx`` (default: ``weights`` with the suffix ``.onnx``).
        options: export options (``half`` for float16).
        int8_mode: ``static`` or ``dynamic`` for int8, None for ``options.half`` only.
        calib, calib_images: calibration source and count (see :func:`calibration_images`).
        max_drop: the largest accepted drop.

    Raises:
        ExportError: export or quantization failed, or the drop exceeds ``max_drop``.
    """
    from cvkit.engine.checkpoint import load_checkpoint
    from cvkit.export.commands import export_checkpoint

    if int8_mode is not None and options.half:
        raise ConfigError("--half and --int8: choose one precision")
    if int8_mode is None and not options.half:
        raise ConfigError("export_reduced needs --half or --int8")
    out = Path(out) if out else Path(weights).with_suffix(".onnx")
    out.parent.mkdir(parents=True, exist_ok=True)
    config = Config.model_validate(load_checkpoint(weights)["config"])
    precisions = {None: "fp16", "static": "int8", "dynamic": "int8-dynamic"}
    if int8_mode not in precisions:
        raise ConfigError(f"--int8-mode: expected 'static' or 'dynamic', got {int8_mode!r}")
    precision = precisions[int8_mode]
    static = int8_mode == "static"
    images = calibration_images(config, calib, calib_images) if static else None
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.stem}.") as folder:
        candidate = export_checkpoint(weights, Path(folder) / "exported.onnx", options).path
        if int8_mode is not None:
            quantized = Path(folder) / "int8.onnx"
            quantize_int8(candidate, quantized, images, int8_mode)
            candidate = quantized
        metric = gate_metric(config.task)
        task = get_task(config.task)(config)
        float_value = float(evaluate_weights(weights, task)[0][metric])
        value = float(evaluate_weights(candidate, task)[0][metric])
        drop = float_value - value
        logger.info(
            "%s export: val %s %.4f (float checkpoint) vs %.4f (%s), drop %.4f",
            precision,
            metric,
            float_value,
            value,
            precision,
            drop,
        )
        if max_drop is not None and drop > max_drop:
            raise ExportError(
                f"{out}: {precision} export refused: val {metric} {value:.4f} ({precision}) vs "
                f"{float_value:.4f} (float), a drop of {drop:.4f} > --max-drop {max_drop}; "
                "no file written"
            )
        _stamp_accuracy(candidate, precision, metric, float_value, value)
        os.replace(candidate, out)
    return PrecisionResult(out, precision, metric, float_value, value)


def _stamp_accuracy(
    path: Path, precision: str, metric: str, float_value: float, value: float
) -> None:
    """Add ``precision`` and ``accuracy`` (JSON: metric, split, float, exported) to the file's
    metadata; the runtime's :class:`ModelMetadata` ignores keys it does not know."""
    model = onnx.load(str(path))
    props = {prop.key: prop.value for prop in model.metadata_props}
    accuracy = {"metric": metric, "split": "val", "float": float_value, precision: value}
    props.update(precision=json.dumps(precision), accuracy=json.dumps(accuracy))
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, props)
    onnx.save(model, str(path))
