"""Export a cvkit model to ONNX, stamp its metadata and check it against torch.

The exported graph takes ``images float32 [B, 3, H, W]`` (normalized as the metadata says) and
returns, by task:

- detect, NMS in the graph: ``boxes [B, K, 4]`` (x1, y1, x2, y2 input pixels), ``scores [B, K]``,
  ``labels [B, K]`` int64, ``num_dets [B]`` int64 — ``model.candidates`` followed by
  :func:`cvkit.ops.nms.batched_nms_padded` (ONNX ``NonMaxSuppression``), ``K = max_det``;
- detect, ``nms=False``: the raw candidates ``boxes [B, N, 4]`` and ``scores [B, N, C]``; the
  runtime applies the score threshold, NMS and ``max_det`` in numpy;
- classify: ``logits [B, C]``; segment: ``logits [B, C, H, W]``.

After writing the file, :func:`check_parity` runs the same inputs through torch and onnxruntime
and raises :class:`~cvkit.errors.ExportError` with the largest difference when they disagree.
"""

from __future__ import annotations

import copy
import dataclasses
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import Tensor, nn

from cvkit import __version__
from cvkit.config import Config
from cvkit.config.export import ExportConfig
from cvkit.errors import ExportError
from cvkit.logs import get_logger
from cvkit.ops.nms import padded_nms
from cvkit.runtime.metadata import ModelMetadata
from cvkit.runtime.session import OnnxModel

logger = get_logger("export")

INPUT_NAME = "images"
DETECT_NMS_OUTPUTS = ("boxes", "scores", "labels", "num_dets")
DETECT_RAW_OUTPUTS = ("boxes", "scores")
LOGITS_OUTPUTS = ("logits",)


class DetectorGraph(nn.Module):
    """What an exported detector computes: candidates, then (optionally) padded NMS.

    With NMS, detections are selected as cvkit's torch detectors select them: (candidate,
    class) pairs above ``score_threshold``, the best ``topk_candidates`` of them, class-aware
    NMS, the ``max_det`` best survivors. The top-k runs on the flattened ``[B, N * C]`` scores;
    each chosen pair becomes a row whose scores are zero except in its own class, so
    :func:`cvkit.ops.nms.batched_nms_padded` sees exactly those pairs.

    Args:
        model: a detector implementing ``candidates(images) -> (boxes [B, N, 4],
            scores [B, N, C])``.
        nms: the padded NMS method appended (``"hard"``, ``"soft"``, ``"diou"``, see
            :func:`cvkit.ops.nms.padded_nms`; ``True`` means hard); false: the graph
            returns the candidates.
        score_threshold, iou_threshold, max_det, topk_candidates: selection settings
            (``topk_candidates`` None: all pairs).
        half: run ``model`` in float16 (inputs and outputs stay float32).
        soft_sigma: gaussian width for ``nms="soft"``.
    """

    def __init__(
        self,
        model: nn.Module,
        nms: str | bool,
        score_threshold: float,
        iou_threshold: float,
        max_det: int,
        topk_candidates: int | None = None,
        half: bool = False,
        soft_sigma: float = 0.5,
    ) -> None:
        super().__init__()
        self.model = model
        self.nms = nms
        self.score_threshold = score_threshold
        self.iou_threshold = iou_threshold
        self.max_det = max_det
        self.topk_candidates = topk_candidates
        self.half = half
        self.soft_sigma = soft_sigma

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        """``images [B, 3, H, W]`` → the outputs listed in the module docstring."""
        boxes, scores = self.model.candidates(images.half() if self.half else images)
        boxes, scores = boxes.float(), scores.float()
        if not self.nms:
            return boxes, scores
        num_pairs = scores.shape[1] * scores.shape[2]
        if self.topk_candidates is not None and self.topk_candidates < num_pairs:
            boxes, scores = self._top_pairs(boxes, scores, self.topk_candidates)
        method = "hard" if self.nms is True else self.nms
        return padded_nms(
            method,
            boxes,
            scores,
            self.iou_threshold,
            self.score_threshold,
            self.max_det,
            self.soft_sigma,
        )

    @staticmethod
    def _top_pairs(boxes: Tensor, scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """The ``k`` best (candidate, class) pairs as ``boxes [B, k, 4]``, one-hot
        ``scores [B, k, C]``."""
        num_classes = scores.shape[2]
        top_scores, top_index = scores.flatten(1).topk(k, dim=1)
        box_index = torch.div(top_index, num_classes, rounding_mode="floor")
        labels = top_index - box_index * num_classes
        top_boxes = torch.gather(boxes, 1, box_index.unsqueeze(-1).expand(-1, -1, 4))
        one_hot = nn.functional.one_hot(labels, num_classes).to(top_scores.dtype)
        return top_boxes, one_hot * top_scores.unsqueeze(-1)


class LogitsGraph(nn.Module):
    """What an exported classifier or segmenter computes: ``model(images)`` as float32."""

    def __init__(self, model: nn.Module, half: bool = False) -> None:
        super().__init__()
        self.model = model
        self.half = half

    def forward(self, images: Tensor) -> Tensor:
        """``images [B, 3, H, W]`` → ``logits [B, C]`` or ``[B, C, H, W]``."""
        return self.model(images.half() if self.half else images).float()


@dataclass
class ExportResult:
    """The written file and how closely onnxruntime matched torch.

    Attributes:
        path: the ``.onnx`` file.
        metadata: what was stamped into it.
        differences: largest difference per checked output (``boxes`` relative to the input
            size; empty when the check was skipped).
    """

    path: Path
    metadata: ModelMetadata
    differences: dict[str, float]


def metadata_from_config(config: Config, classes: list[str]) -> ModelMetadata:
    """The metadata of a model trained with ``config``: task, classes, the eval preset
    (``data.image_size``, ``data.resize``, ``data.mean``/``data.std``), detection thresholds
    (``eval:`` section). :func:`export_model` sets ``nms_in_graph`` from its options."""
    size = config.data.image_size
    # A model's own section (model.<name>, e.g. model.ssd) may cap the pairs entering NMS.
    own_section = getattr(config.model, config.model.name, None)
    return ModelMetadata(
        task=config.task,
        classes=tuple(classes),
        input_size=(size, size),
        mean=tuple(config.data.mean),
        std=tuple(config.data.std),
        resize=config.data.resize,
        nms_in_graph=config.task == "detect",
        score_threshold=config.eval.score_threshold,
        iou_threshold=config.eval.iou_threshold,
        max_det=config.eval.max_det,
        topk_candidates=getattr(own_section, "topk_candidates", None),
        model_name=config.model.name,
        cvkit_version=__version__,
    )


def build_graph(model: nn.Module, metadata: ModelMetadata, options: ExportConfig) -> nn.Module:
    """Wrap ``model`` in the module whose forward is the exported graph (eval mode).

    With ``options.half`` the graph holds a float16 copy; ``model`` itself is left as it is.
    """
    model = model.eval()
    if options.half:
        model = copy.deepcopy(model).half()
    if metadata.task == "detect":
        if not hasattr(model, "candidates"):
            raise ExportError(
                f"{type(model).__name__} has no candidates(images) method; detectors must "
                "implement it to be exported"
            )
        return DetectorGraph(
            model,
            options.nms,
            metadata.score_threshold,
            metadata.iou_threshold,
            metadata.max_det,
            metadata.topk_candidates,
            options.half,
            options.soft_sigma,
        ).eval()
    return LogitsGraph(model, options.half).eval()


def _output_names(metadata: ModelMetadata) -> tuple[str, ...]:
    if metadata.task != "detect":
        return LOGITS_OUTPUTS
    return DETECT_NMS_OUTPUTS if metadata.nms_in_graph else DETECT_RAW_OUTPUTS


def _dynamic_axes(metadata: ModelMetadata) -> dict[str, dict[int, str]]:
    # Segmenters take and return any height/width; everything else varies in batch only.
    spatial = metadata.task == "segment"
    names = (INPUT_NAME, *_output_names(metadata))
    return {
        name: {0: "batch", 2: "height", 3: "width"} if spatial else {0: "batch"} for name in names
    }


def _simplify(proto: onnx.ModelProto) -> onnx.ModelProto:
    try:
        import onnxslim
    except ModuleNotFoundError:
        raise ExportError("--simplify needs the onnxslim package: pip install onnxslim") from None
    return onnxslim.slim(proto)


def export_model(
    model: nn.Module,
    path: str | Path,
    metadata: ModelMetadata,
    options: ExportConfig | None = None,
    batch_size: int = 1,
    check: bool = True,
) -> ExportResult:
    """Export ``model`` to ``path`` as ONNX with ``metadata`` and check parity with torch.

    The file is written next to ``path`` and renamed to it only once the check has passed, so
    a failed export leaves no file that looks usable.

    Args:
        model: a cvkit detector (with ``candidates``), classifier or segmenter.
        path: output ``.onnx`` file (folders are created).
        metadata: task, classes, pre-processing and thresholds; ``nms_in_graph`` and
            ``cvkit_version`` are set from ``options`` and this cvkit.
        options: opset, dynamic batch, NMS in graph, float16, simplify, parity tolerances.
        batch_size: batch of the traced (and, when not dynamic, the fixed) input.
        check: run :func:`check_parity` (on the CPU) after writing the file.

    Returns:
        The :class:`ExportResult`.

    Raises:
        ExportError: tracing failed, ``--simplify`` without onnxslim, or parity failed.
    """
    options = options or ExportConfig()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = dataclasses.replace(
        metadata,
        nms_in_graph=options.nms and metadata.task == "detect",
        cvkit_version=__version__,
    )
    graph = build_graph(model, metadata, options)
    tmp = path.with_name(path.name + ".tmp")
    try:
        _write_onnx(graph, tmp, metadata, options, batch_size)
        differences = _verify(model, tmp, path, metadata, options, batch_size) if check else {}
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    logger.info("exported %s (%s) to %s", type(model).__name__, metadata.task, path)
    return ExportResult(path, metadata, differences)


def _write_onnx(
    graph: nn.Module,
    path: Path,
    metadata: ModelMetadata,
    options: ExportConfig,
    batch_size: int,
) -> None:
    """Trace ``graph`` to ``path``, simplify it if asked, and stamp the metadata."""
    height, width = metadata.input_size
    example = torch.randn(batch_size, 3, height, width, generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                graph,
                (example,),
                str(path),
                dynamo=False,
                opset_version=options.opset,
                input_names=[INPUT_NAME],
                output_names=list(_output_names(metadata)),
                dynamic_axes=_dynamic_axes(metadata) if options.dynamic else None,
            )
        proto = onnx.load(str(path))
        if options.simplify:
            proto = _simplify(proto)
        del proto.metadata_props[:]
        onnx.helper.set_model_props(proto, metadata.to_props())
        onnx.save(proto, str(path))
    except ExportError:
        raise
    except Exception as exc:
        name = type(graph.model).__name__
        raise ExportError(f"{path}: ONNX export of {name} failed: {exc}") from exc


def _verify(
    model: nn.Module,
    written: Path,
    path: Path,
    metadata: ModelMetadata,
    options: ExportConfig,
    batch_size: int,
) -> dict[str, float]:
    """Parity of the file ``written`` (to become ``path``) with the float32 torch model.

    A dynamic file is checked at another batch size than it was traced with.
    """
    check_batch = batch_size + 1 if options.dynamic else batch_size
    if options.half and metadata.nms_in_graph:
        # NMS on float16 scores may keep another box at a near-tie, so the float16 network is
        # checked through its raw candidates (the NMS part is float32 in both graphs).
        raw = options.model_copy(update={"nms": False, "simplify": False})
        with tempfile.TemporaryDirectory() as folder:
            return export_model(
                model, Path(folder) / "raw.onnx", metadata, raw, check_batch
            ).differences
    reference = build_graph(model, metadata, options.model_copy(update={"half": False}))
    try:
        return check_parity(reference, written, metadata, options, check_batch, name=str(path))
    except ExportError as exc:
        if not options.simplify:
            raise
        plain = options.model_copy(update={"simplify": False})
        with tempfile.TemporaryDirectory() as folder:
            export_model(model, Path(folder) / "plain.onnx", metadata, plain, batch_size)
        raise ExportError(
            f"{exc}; the graph before --simplify matches torch, so onnxslim changed the "
            "results: export without --simplify"
        ) from None


def check_parity(
    graph: nn.Module,
    path: str | Path,
    metadata: ModelMetadata,
    options: ExportConfig,
    batch_size: int,
    name: str | None = None,
) -> dict[str, float]:
    """Run seeded random inputs through ``graph`` (torch, float32) and ``path`` (onnxruntime,
    CPU).

    Detections must have equal ``num_dets`` and ``labels``, boxes within
    ``box_tolerance * max(input_size)`` pixels and scores within ``score_tolerance``; logits
    within ``logit_tolerance * (1 + |logit|)``. Float16 exports are held to at least 1e-2
    (boxes relative to the input size, scores) and 2e-2 (logits).

    ``name`` is how messages call the file (default: ``path``).

    Returns:
        The largest difference per output (boxes relative to the input size).

    Raises:
        ExportError: an output disagrees; the message gives the largest difference.
    """
    label = name or str(path)
    height, width = metadata.input_size
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(batch_size, 3, height, width, generator=generator)
    with torch.no_grad():
        expected = graph(images)
    expected = [t.float().numpy() if t.is_floating_point() else t.numpy() for t in _tuple(expected)]
    session = OnnxModel(path, "cpu")
    outputs = session.run(images.numpy().astype(session.input_dtype))
    got = [outputs[name] for name in _output_names(metadata)]
    floor = 1e-2 if options.half else 0.0
    box_tolerance = max(options.box_tolerance, floor)
    score_tolerance = max(options.score_tolerance, floor)
    logit_tolerance = max(options.logit_tolerance, 2 * floor)
    if metadata.task != "detect":
        scale = 1.0 + np.abs(expected[0])
        diff = float((np.abs(got[0] - expected[0]) / scale).max())
        _fail_if(diff > logit_tolerance, label, "logits", diff)
        return {"logits": diff}
    size = float(max(height, width))
    if not metadata.nms_in_graph:
        box_diff = float(np.abs(got[0] - expected[0]).max()) / size
        score_diff = float(np.abs(got[1] - expected[1]).max())
    else:
        exp_boxes, exp_scores, exp_labels, exp_count = expected
        boxes, scores, labels, count = got
        if not np.array_equal(count, exp_count):
            raise ExportError(
                f"{label}: parity check failed: num_dets {count.tolist()} (onnxruntime) != "
                f"{exp_count.tolist()} (torch)"
            )
        valid = np.arange(boxes.shape[1])[None, :] < count[:, None]
        if not np.array_equal(labels[valid], exp_labels[valid]):
            raise ExportError(f"{label}: parity check failed: labels differ from torch")
        box_diff = float(np.abs(boxes[valid] - exp_boxes[valid]).max(initial=0.0)) / size
        score_diff = float(np.abs(scores[valid] - exp_scores[valid]).max(initial=0.0))
    _fail_if(box_diff > box_tolerance, label, "boxes (relative)", box_diff)
    _fail_if(score_diff > score_tolerance, label, "scores", score_diff)
    logger.info("parity: boxes %.2e (relative), scores %.2e", box_diff, score_diff)
    return {"boxes": box_diff, "scores": score_diff}


def _tuple(outputs: Tensor | tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    return outputs if isinstance(outputs, tuple) else (outputs,)


def _fail_if(failed: bool, label: str, name: str, diff: float) -> None:
    if failed:
        raise ExportError(
            f"{label}: parity check failed: {name} differ from torch by up to {diff:.3g}"
        )
