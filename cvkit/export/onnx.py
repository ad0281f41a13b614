"""Export a cvkit model to ONNX, stamp its metadata and check it against torch.

The exported graph takes ``images float32 [B, 3, H, W]`` (normalized as the metadata says). What
it returns, its dynamic axes and how it is compared with torch belong to the metadata's task
(:class:`cvkit.engine.tasks.Task` ``export_*`` hooks), unless the model declares them itself
(the export contract, read on the traced graph first, then on the model it wraps as
``graph.model``):

- ``export_inputs(images) -> {name: (example, dynamic_axes)}``: the graph's inputs after
  ``images``, in the order its forward takes them, each with an example tensor made for the
  example ``images`` and its dynamic axes (``{axis: name}``; axes named ``batch`` stay fixed
  without ``--dynamic``). Fast R-CNN declares ``proposals [B, P, 4]`` this way.
- ``export_output_names(metadata) -> tuple[str, ...]``: every output name, in the graph's
  order (default: the task's ``export_outputs(metadata)``). Mask R-CNN adds ``masks``.
- ``export_graph(metadata, options) -> nn.Module`` (on the model): the module traced instead
  of the task's default graph.

The built-in tasks return:

- detect, NMS in the graph: ``boxes [B, K, 4]`` (x1, y1, x2, y2 input pixels), ``scores [B, K]``,
  ``labels [B, K]`` int64, ``num_dets [B]`` int64 — ``model.candidates`` followed by
  :func:`cvkit.ops.nms.batched_nms_padded` (ONNX ``NonMaxSuppression``), ``K = max_det``;
- detect, ``nms=False``: the raw candidates ``boxes [B, N, 4]`` (or per-class
  ``[B, N, C, 4]``) and ``scores [B, N, C]``; the runtime applies the score threshold, NMS and
  ``max_det`` in numpy;
- classify: ``logits [B, C]``; segment: ``logits [B, C, H, W]``.

After writing the file, :func:`check_parity` runs the same inputs through torch and onnxruntime
and raises :class:`~cvkit.errors.ExportError` with the largest difference when they disagree
(:func:`compare_logits`, :func:`compare_detections`).
"""

from __future__ import annotations

import copy
import dataclasses
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import Tensor, nn

from cvkit import __version__
from cvkit.config import Config
from cvkit.config.export import ExportConfig
from cvkit.engine.tasks import get_task
from cvkit.errors import ExportError
from cvkit.logs import get_logger
from cvkit.ops.nms import padded_nms
from cvkit.runtime.metadata import ModelMetadata
from cvkit.runtime.session import OnnxModel
from cvkit.structures import ImageBatch

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
        model: a detector implementing ``candidates(images) -> (boxes, scores [B, N, C])``
            with boxes shared by all classes ``[B, N, 4]`` or per class ``[B, N, C, 4]``.
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

    def forward(self, images: Tensor, *inputs: Tensor) -> tuple[Tensor, ...]:
        """``images [B, 3, H, W]`` (and any further inputs of ``candidates``, e.g. Fast
        R-CNN's padded ``proposals [B, P, 4]``) → the outputs listed in the module docstring."""
        boxes, scores = self.model.candidates(images.half() if self.half else images, *inputs)
        return self.select(boxes.float(), scores.float())

    def select(self, boxes: Tensor, scores: Tensor) -> tuple[Tensor, ...]:
        """Candidates ``boxes`` (``[B, N, 4]`` or ``[B, N, C, 4]``) and ``scores [B, N, C]``
        → the graph's outputs: themselves without NMS, else the padded NMS results."""
        if not self.nms:
            return boxes, scores
        num_pairs = scores.shape[1] * scores.shape[2]
        top_k = self.topk_candidates
        if top_k is not None and top_k < num_pairs:
            boxes, scores = self._top_pairs(boxes, scores, top_k)
        elif boxes.dim() == 4:
            # per-class boxes: every (candidate, class) pair becomes a row of its own
            boxes, scores = self._top_pairs(boxes, scores, num_pairs)
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
        ``scores [B, k, C]``; ``boxes`` is shared ``[B, N, 4]`` or per-class ``[B, N, C, 4]``."""
        num_classes = scores.shape[2]
        top_scores, top_index = scores.flatten(1).topk(k, dim=1)
        box_index = torch.div(top_index, num_classes, rounding_mode="floor")
        labels = top_index - box_index * num_classes
        if boxes.dim() == 4:
            rows, row_index = boxes.flatten(1, 2), top_index
        else:
            rows, row_index = boxes, box_index
        top_boxes = torch.gather(rows, 1, row_index.unsqueeze(-1).expand(-1, -1, 4))
        one_hot = nn.functional.one_hot(labels, num_classes).to(top_scores.dtype)
        return top_boxes, one_hot * top_scores.unsqueeze(-1)


class MaskDetectorGraph(DetectorGraph):
    """:class:`DetectorGraph` with NMS of a detector that also segments each detection (Mask
    R-CNN): after NMS, the features computed once read the mask of every padded detection.

    ``model`` implements ``features(images)``, ``candidates_from_features(features, batch)``
    and ``padded_masks(features, boxes, labels)``; the graph returns ``boxes, scores, labels,
    num_dets`` as :class:`DetectorGraph` does, plus ``masks [B, K, M, M]`` probabilities in
    the frame of each box (rows past ``num_dets`` are padding).
    """

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        """``images [B, 3, H, W]`` → ``boxes, scores, labels, num_dets, masks``."""
        inputs = images.half() if self.half else images
        features = self.model.features(inputs)
        boxes, scores = self.model.candidates_from_features(features, ImageBatch.of(inputs))
        boxes, scores, labels, count = self.select(boxes.float(), scores.float())
        # the boxes stay float32 (as the proposals are): the RoIs read float16 features in
        # float32 (roi_heads.pool_in_roi_precision)
        masks = self.model.padded_masks(features, boxes, labels)
        return boxes, scores, labels, count, masks.float()


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


def metadata_from_config(
    config: Config, classes: list[str], category_ids: list[int] | None = None
) -> ModelMetadata:
    """The metadata of a model trained with ``config`` (its task's
    :meth:`~cvkit.engine.tasks.Task.export_metadata`: task, classes, the eval preset,
    detection thresholds) and the COCO ``category_ids`` of its classes (the checkpoint's;
    None: its dataset had none). :func:`export_model` sets ``nms_in_graph`` from its
    options."""
    metadata = get_task(config.task).export_metadata(config, classes)
    if category_ids is None:
        return metadata
    return dataclasses.replace(metadata, category_ids=tuple(int(i) for i in category_ids))


def build_graph(model: nn.Module, metadata: ModelMetadata, options: ExportConfig) -> nn.Module:
    """Wrap ``model`` in the module whose forward is the exported graph (eval mode): the
    model's own ``model.export_graph(metadata, options)`` when it defines one, else as the
    metadata's task builds it (:meth:`~cvkit.engine.tasks.Task.export_graph`).

    With ``options.half`` the graph holds a float16 copy; ``model`` itself is left as it is.
    """
    model = model.eval()
    if options.half:
        model = copy.deepcopy(model).half()
    if hasattr(model, "export_graph"):
        return model.export_graph(metadata, options).eval()
    return get_task(metadata.task).export_graph(model, metadata, options).eval()


def dynamic_axes(names: tuple[str, ...], spatial: bool = False) -> dict[str, dict[int, str]]:
    """``torch.onnx.export`` dynamic axes: batch (axis 0) of every name, plus height/width
    (axes 2, 3) when ``spatial``."""
    axes = {0: "batch", 2: "height", 3: "width"} if spatial else {0: "batch"}
    return {name: dict(axes) for name in names}


def _declaration(graph: nn.Module, name: str) -> Any:
    """The export declaration ``name`` of ``graph``, else of the model it wraps
    (``graph.model``), else None."""
    for owner in (graph, getattr(graph, "model", None)):
        if owner is not None and hasattr(owner, name):
            return getattr(owner, name)
    return None


def export_inputs(graph: nn.Module, images: Tensor) -> dict[str, tuple[Tensor, dict[int, str]]]:
    """The inputs ``graph`` takes after ``images [B, 3, H, W]``, as declared by its (or its
    model's) ``export_inputs(images)``: ``{name: (example tensor, dynamic axes)}``, in forward
    order; empty for a graph of ``images`` alone.

    Raises:
        ExportError: a declared input is called ``images`` or is not a tensor.
    """
    declared = _declaration(graph, "export_inputs")
    if declared is None:
        return {}
    inputs = dict(declared(images))
    for name, (example, _) in inputs.items():
        if name == INPUT_NAME or not isinstance(example, Tensor):
            raise ExportError(
                f"{type(graph).__name__}.export_inputs: input {name!r} must be a tensor named "
                f"other than {INPUT_NAME!r}"
            )
    return inputs


def export_output_names(graph: nn.Module, metadata: ModelMetadata) -> tuple[str, ...]:
    """The output names of ``graph`` (an export graph or a model), in order: its (or its
    model's) ``export_output_names(metadata)``, else the metadata task's
    ``export_outputs(metadata)``."""
    declared = _declaration(graph, "export_output_names")
    if declared is None:
        return get_task(metadata.task).export_outputs(metadata)
    return tuple(declared(metadata))


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
        nms_in_graph=bool(options.nms) and get_task(metadata.task).exports_nms,
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
    task = get_task(metadata.task)
    extra = export_inputs(graph, example)
    outputs = export_output_names(graph, metadata)
    axes = None
    if options.dynamic:
        axes = task.export_dynamic_axes(INPUT_NAME, outputs)
    for name, (_, input_axes) in extra.items():
        kept = dict(input_axes)
        if not options.dynamic:
            kept = {axis: label for axis, label in kept.items() if label != "batch"}
        if kept:
            axes = {**(axes or {}), name: kept}
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                graph,
                (example, *(tensor for tensor, _ in extra.values())),
                str(path),
                dynamo=False,
                opset_version=options.opset,
                input_names=[INPUT_NAME, *extra],
                output_names=list(outputs),
                dynamic_axes=axes,
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
        name = type(getattr(graph, "model", graph)).__name__
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
    if options.half and metadata.nms_in_graph and getattr(model, "selects_proposals", False):
        reference = build_graph(model, metadata, options.model_copy(update={"half": False}))
        return check_parity(
            reference, written, metadata, options, check_batch, str(path), matched=True
        )
    if options.half and metadata.nms_in_graph:
        # NMS on float16 scores may keep another box at a near-tie, so the float16 network is
        # checked through its raw candidates (the NMS part is float32 in both graphs).
        return _candidate_differences(model, metadata, options, check_batch)
    reference = build_graph(model, metadata, options.model_copy(update={"half": False}))
    try:
        return check_parity(reference, written, metadata, options, check_batch, name=str(path))
    except ExportError as exc:
        if not options.simplify:
            if metadata.nms_in_graph:
                return _parity_of_candidates(model, metadata, options, check_batch, exc)
            raise
        plain = options.model_copy(update={"simplify": False})
        with tempfile.TemporaryDirectory() as folder:
            export_model(model, Path(folder) / "plain.onnx", metadata, plain, batch_size)
        raise ExportError(
            f"{exc}; the graph before --simplify matches torch, so onnxslim changed the "
            "results: export without --simplify"
        ) from None


def _candidate_differences(
    model: nn.Module, metadata: ModelMetadata, options: ExportConfig, batch_size: int
) -> dict[str, float]:
    """The parity differences of the detector's raw candidates (``boxes``, ``scores`` before
    NMS): the graph exported alone, without NMS or simplification, to a temporary file.

    Raises:
        ExportError: the candidates differ from torch's (or cannot be exported).
    """
    raw = options.model_copy(update={"nms": False, "simplify": False})
    with tempfile.TemporaryDirectory() as folder:
        return export_model(model, Path(folder) / "raw.onnx", metadata, raw, batch_size).differences


def _parity_of_candidates(
    model: nn.Module,
    metadata: ModelMetadata,
    options: ExportConfig,
    batch_size: int,
    failure: ExportError,
) -> dict[str, float]:
    """The parity of a detector whose NMS results differed from torch's, judged on its raw
    candidates (``boxes``, ``scores`` before NMS) exported alone.

    Scores that tie within float rounding make NMS and the score threshold keep another box in
    onnxruntime than in torch, and a detector trained briefly has thousands of such ties (YOLO's
    class bias starts every score near 0.01, the default threshold). When the candidates
    agree within the tolerances the difference lies in those ties, not in the export: a warning
    says so. Otherwise ``failure`` stands.

    Raises:
        ExportError: ``failure``, when the candidates differ too (or cannot be exported alone).
    """
    try:
        differences = _candidate_differences(model, metadata, options, batch_size)
    except ExportError:
        raise failure from None
    logger.warning(
        "%s; the candidates before NMS match torch (boxes %.2e relative, scores %.2e), so "
        "scores tied within float rounding decided which boxes NMS kept: the export is kept",
        failure,
        differences["boxes"],
        differences["scores"],
    )
    return differences


def check_parity(
    graph: nn.Module,
    path: str | Path,
    metadata: ModelMetadata,
    options: ExportConfig,
    batch_size: int,
    name: str | None = None,
    matched: bool = False,
) -> dict[str, float]:
    """Run seeded random inputs through ``graph`` (torch, float32) and ``path`` (onnxruntime,
    CPU): ``images`` and the examples of the inputs the graph declares after them
    (:func:`export_inputs`), compared output by output in :func:`export_output_names` order.

    Detections must have equal ``num_dets`` and ``labels``, boxes within
    ``box_tolerance * max(input_size)`` pixels and scores within ``score_tolerance``; logits
    within ``logit_tolerance * (1 + |logit|)``. Float16 exports are held to at least 1e-2
    (boxes relative to the input size, scores) and 2e-2 (logits).

    ``name`` is how messages call the file (default: ``path``). With ``matched``, detections
    are paired one by one instead (:func:`compare_detections` with ``matched``).

    Returns:
        The largest difference per output (boxes relative to the input size).

    Raises:
        ExportError: an output disagrees; the message gives the largest difference.
    """
    label = name or str(path)
    height, width = metadata.input_size
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(batch_size, 3, height, width, generator=generator)
    extra = {name: example for name, (example, _) in export_inputs(graph, images).items()}
    with torch.no_grad():
        expected = graph(images, *extra.values())
    expected = [t.float().numpy() if t.is_floating_point() else t.numpy() for t in _tuple(expected)]
    session = OnnxModel(path, "cpu")
    feeds = {name: example.numpy() for name, example in extra.items()}
    outputs = session.run(images.numpy().astype(session.input_dtype), feeds)
    task = get_task(metadata.task)
    got = [outputs[name] for name in export_output_names(graph, metadata)]
    floor = 1e-2 if options.half else 0.0
    tolerances = Tolerances(
        box=max(options.box_tolerance, floor),
        score=max(options.score_tolerance, floor),
        logit=max(options.logit_tolerance, 2 * floor),
    )
    if matched:
        return compare_detections(expected, got, metadata, tolerances, label, matched=True)
    return task.compare_exported(expected, got, metadata, tolerances, label)


HALF_UNMATCHED_FRACTION = 0.1
"""Share of a float16 two-stage detector's detections allowed to lack a float32 counterpart
(float16 rounding may reorder near-tied proposals or detections, and NMS then keeps another
box: each such swap changes one or two detections)."""


def _compare_matched(expected: list, got: list, size: float, tol: Tolerances, label: str) -> dict:
    """:func:`compare_detections` with ``matched``: the differences of the detection pairs,
    ``size`` the larger input side."""
    box_diff = score_diff = mask_diff = 0.0
    matched = total = 0
    for image in range(len(got[3])):
        want = [output[image, : int(expected[3][image])] for output in expected[:3]]
        have = [output[image, : int(got[3][image])] for output in got[:3]]
        pairs = match_detections(*want, *have, tol.box * size, tol.score)
        matched += len(pairs)
        total += max(len(want[0]), len(have[0]))
        for ref, found in pairs:
            box_diff = max(box_diff, float(np.abs(want[0][ref] - have[0][found]).max()) / size)
            score_diff = max(score_diff, abs(float(want[1][ref] - have[1][found])))
            if len(got) > 4:
                difference = np.abs(expected[4][image, ref] - got[4][image, found]).max()
                mask_diff = max(mask_diff, float(difference))
    fraction = matched / total if total else 1.0
    if fraction < 1.0 - HALF_UNMATCHED_FRACTION:
        raise ExportError(
            f"{label}: parity check failed: only {matched} of {total} float16 detections "
            "match float32's (same label, box and score within tolerance)"
        )
    differences = {"boxes": box_diff, "scores": score_diff, "matched": fraction}
    if len(got) > 4:
        _fail_if(mask_diff > tol.logit, label, "masks", mask_diff)
        differences["masks"] = mask_diff
    logger.info(
        "float16 parity: %d/%d detections matched, boxes %.2e (relative), scores %.2e",
        matched,
        total,
        box_diff,
        score_diff,
    )
    return differences


def match_detections(
    ref_boxes: np.ndarray,
    ref_scores: np.ndarray,
    ref_labels: np.ndarray,
    boxes: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    box_tolerance: float,
    score_tolerance: float,
) -> list[tuple[int, int]]:
    """Pair one image's detections with reference detections, greedily in the reference's
    order (highest score first): each takes the first unused detection of its label whose
    coordinates all lie within ``box_tolerance`` pixels and whose score within
    ``score_tolerance``.

    Args:
        ref_boxes, boxes: ``float32 [N, 4]`` / ``[M, 4]`` xyxy pixels.
        ref_scores, scores: ``[N]`` / ``[M]``.
        ref_labels, labels: ``int64 [N]`` / ``[M]``.
        box_tolerance: largest coordinate difference in pixels.
        score_tolerance: largest score difference.

    Returns:
        ``(reference index, index)`` pairs, in the reference's order.
    """
    used = np.zeros(len(boxes), dtype=bool)
    pairs = []
    for index in range(len(ref_boxes)):
        close = np.abs(boxes - ref_boxes[index]).max(axis=1, initial=0.0) <= box_tolerance
        fits = ~used & close & (labels == ref_labels[index])
        fits &= np.abs(scores - ref_scores[index]) <= score_tolerance
        candidates = np.flatnonzero(fits)
        if candidates.size:
            used[candidates[0]] = True
            pairs.append((index, int(candidates[0])))
    return pairs


@dataclass(frozen=True)
class Tolerances:
    """Largest allowed torch ↔ onnxruntime differences of one parity check.

    Attributes:
        box: box coordinates, relative to the larger input side.
        score: detection scores.
        logit: logits, relative to ``1 + |logit|``.
    """

    box: float
    score: float
    logit: float


def compare_logits(
    expected: list[np.ndarray], got: list[np.ndarray], tolerances: Tolerances, label: str
) -> dict[str, float]:
    """Compare each output pair ``(expected[i], got[i])`` (logits of any shape) within
    ``tolerances.logit * (1 + |expected|)``; returns ``{"logits": largest difference}``
    (over all outputs).

    Raises:
        ExportError: an output differs by more.
    """
    diff = 0.0
    for want, have in zip(expected, got, strict=True):
        scale = 1.0 + np.abs(want)
        diff = max(diff, float((np.abs(have - want) / scale).max(initial=0.0)))
    _fail_if(diff > tolerances.logit, label, "logits", diff)
    return {"logits": diff}


def compare_detections(
    expected: list[np.ndarray],
    got: list[np.ndarray],
    metadata: ModelMetadata,
    tolerances: Tolerances,
    label: str,
    matched: bool = False,
) -> dict[str, float]:
    """Compare detector outputs: padded NMS results (``boxes, scores, labels, num_dets``: equal
    counts and labels, boxes and scores within tolerance) or raw candidates (``boxes, scores``).

    ``matched`` compares padded NMS results (+ ``masks``) detection by detection instead
    (:func:`match_detections`), for a float16 file of a detector whose candidate slots depend
    on a selection inside the network (two-stage detectors: ``model.selects_proposals``)
    against float32 torch: at least ``1 - HALF_UNMATCHED_FRACTION`` of the detections (of the
    larger of the two counts, over the batch) must match, and the masks of matched pairs lie
    within the logit tolerance (they come out of six more float16 layers, as logits do).

    Returns:
        ``{"boxes": largest box difference relative to the input size, "scores": ...}``
        (``matched``: of the matched pairs, plus ``"matched"``, the matched fraction, and
        ``"masks"`` when there are masks).

    Raises:
        ExportError: an output disagrees (``matched``: too few detections match, or matched
            masks differ by more); the message gives the largest difference.
    """
    size = float(max(metadata.input_size))
    if matched:
        return _compare_matched(expected, got, size, tolerances, label)
    if not metadata.nms_in_graph:
        box_diff = float(np.abs(got[0] - expected[0]).max(initial=0.0)) / size
        score_diff = float(np.abs(got[1] - expected[1]).max(initial=0.0))
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
    _fail_if(box_diff > tolerances.box, label, "boxes (relative)", box_diff)
    _fail_if(score_diff > tolerances.score, label, "scores", score_diff)
    logger.info("parity: boxes %.2e (relative), scores %.2e", box_diff, score_diff)
    return {"boxes": box_diff, "scores": score_diff}


def _tuple(outputs: Tensor | tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    return outputs if isinstance(outputs, tuple) else (outputs,)


def _fail_if(failed: bool, label: str, name: str, diff: float) -> None:
    if failed:
        raise ExportError(
            f"{label}: parity check failed: {name} differ from torch by up to {diff:.3g}"
        )
