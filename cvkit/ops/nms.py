"""Non-maximum suppression: greedy, class-aware, DIoU, soft, and a fixed-shape export form.

Boxes are ``Tensor[N, 4]`` ``(x1, y1, x2, y2)``; scores ``Tensor[N]``. Every function returns
kept indices sorted by decreasing score; equal scores keep their input order, except in
:func:`batched_nms` above 1000 boxes, which orders them as torchvision does.

How the CPU path beats a sequential greedy loop. Greedy NMS compares every kept box with every
later box. Here the boxes are swept along x: a box can only overlap boxes whose left edge lies
before its right edge, so IoU is computed only on blocks of that band (with the bit-exact
IoU of :mod:`cvkit.ops.iou`), giving the few pairs that overlap above the threshold as edges
"higher score suppresses lower score". Greedy NMS is the unique fixed point of
``keep[j] = no kept i with an edge i → j``; iterating that rule from "all kept" settles in a
handful of vectorized steps for real detections, and after :data:`_MAX_SWEEPS` steps (long
chains of boxes that each overlap only the next) the remaining work is done exactly by one
pass over the edges in score order. The band of a box ends where the x-overlap can no longer
exceed ``threshold * width``, so higher thresholds compare fewer pairs. The sweep's ops are
small and run on the calling thread (see :func:`_calling_thread_only`). The result equals
``torchvision.ops.nms`` index for index. On CUDA, in half precision, while tracing for ONNX
and for IoU thresholds outside [0, 1], torchvision's kernels are used directly.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
import torchvision
from torch import Tensor

from cvkit.ops.boxes import BoxError, BoxShapeError, BoxTypeError, box_area, check_boxes
from cvkit.ops.iou import CPU_BLOCK_ELEMENTS, _box_iou_blocked, _diou, _inter_union, _iou_into

_MAX_SWEEPS = 32
# Relative slack on the band bound: far above float rounding of IoU (a few 1e-7 in float32).
_BAND_MARGIN = 1e-5
_SOFT_NMS_MATRIX_SIDE = 4096
_SCORE_LAYOUTS = ("bnc", "bcn")
# torchvision.ops.batched_nms runs one NMS per class above this many box elements on the CPU,
# and orders the kept boxes with an unstable sort of their scores.
_TORCHVISION_PER_CLASS_NUMEL = 4000


def _check_nms_inputs(boxes: Tensor, scores: Tensor) -> None:
    check_boxes(boxes)
    if boxes.ndim != 2:
        raise BoxShapeError(f"boxes must have shape [N, 4], got {tuple(boxes.shape)}")
    if not isinstance(scores, Tensor):
        raise BoxTypeError(f"scores must be a torch.Tensor, got {type(scores).__name__}")
    if scores.ndim != 1 or scores.shape[0] != boxes.shape[0]:
        raise BoxShapeError(
            f"scores must have shape [N] matching boxes [N, 4], got scores "
            f"{tuple(scores.shape)} and boxes {tuple(boxes.shape)}"
        )


def _check_iou_threshold(iou_threshold: float) -> None:
    """The NMS forms torchvision does not have take thresholds in [0, 1] only."""
    if not 0.0 <= float(iou_threshold) <= 1.0:
        raise BoxError(f"iou_threshold must be in [0, 1], got {iou_threshold}")


def _strict_threshold(iou_threshold: float, dtype: torch.dtype) -> float:
    """A threshold ``t`` with ``x > t`` ⇔ ``x > iou_threshold`` for every ``x`` of ``dtype``.

    torchvision compares float32 IoUs with the float64 threshold; rounding the threshold to
    float32 the usual way would move the boundary when it rounds up.
    """
    if dtype != torch.float32:
        return float(iou_threshold)
    rounded = np.float32(iou_threshold)
    if float(rounded) > iou_threshold:
        rounded = np.nextafter(rounded, np.float32(-np.inf))
    return float(rounded)


def _sweep_order(boxes: Tensor, groups: Tensor | None, threshold: float) -> tuple[Tensor, Tensor]:
    """Order boxes by (group, x1) and, per box, the end of the band of boxes that may overlap it.

    Returns ``(sweep, band_end)``: ``sweep`` (Tensor[N] int64) lists box indices by increasing
    key; the boxes that may overlap ``sweep[p]`` by more than ``threshold`` with a larger key
    are at sweep positions ``p + 1 .. band_end[p] - 1``. The band may hold extra boxes but never
    misses one: IoU(p, q) > t with ``x1_p <= x1_q`` needs the x-overlap ``x2_p - x1_q`` to
    exceed ``t * width_p``, so the band ends at ``x2_p - t * width_p`` (less a relative margin
    ``_BAND_MARGIN`` for float rounding).
    """
    x1, x2 = boxes[:, 0].double(), boxes[:, 2].double()
    key = x1
    query = x2 - (threshold * (1 - _BAND_MARGIN)) * (x2 - x1)
    if groups is not None:
        low = torch.minimum(x1.min(), x2.min())
        offsets = groups.double() * (2 * (torch.maximum(x1.max(), x2.max()) - low) + 1)
        key = offsets + (x1 - low)
        query = offsets + (query - low)
    # float64 rounding must never shrink a band: widen the query by a few units in the last place.
    query = query + 8 * torch.finfo(torch.float64).eps * query.abs().max()
    sweep = torch.argsort(key, stable=True)
    band_end = torch.searchsorted(key[sweep].contiguous(), query[sweep].contiguous(), side="right")
    return sweep, band_end


def _suppression_edges(
    boxes: Tensor, groups: Tensor | None, threshold: float, criterion: str, eps: float
) -> tuple[Tensor, Tensor]:
    """Pairs ``(i, j)``, ``i < j``, of rows of ``boxes`` with overlap above ``threshold``.

    ``boxes`` (Tensor[N, 4]) are in decreasing score order, so ``i`` suppresses ``j``.
    ``criterion`` is ``"iou"`` or ``"diou"``; ``groups`` (Tensor[N] or None) keeps pairs within
    a group. Each swept box is compared with the ``band`` boxes after it, read through a
    sliding-window view, so no pair outside the bands is ever computed.
    """
    n = boxes.shape[0]
    empty = torch.empty(0, dtype=torch.int64, device=boxes.device)
    sweep, band_end = _sweep_order(boxes, groups, threshold)
    bands = (band_end - torch.arange(1, n + 1, device=boxes.device)).clamp_(min=0)
    widest = int(bands.max())
    if widest == 0:
        return empty, empty
    swept = torch.cat([boxes.index_select(0, sweep), boxes.new_zeros((widest, 4))])
    coords = (*swept.t().contiguous().unbind(0), box_area(swept))
    swept_groups = None
    if groups is not None:
        swept_groups = torch.cat([groups[sweep], groups.new_full((widest,), -1 + groups.min())])
    # Blocks of about CPU_BLOCK_ELEMENTS elements (single-threaded ops, see cvkit.ops.iou).
    typical_rows = max(16, CPU_BLOCK_ELEMENTS // max(1, 2 * int(bands.float().mean())))
    firsts, seconds = [], []
    start = 0
    while start < n:
        rows = min(typical_rows, n - start)
        band = int(bands[start : start + rows].max())
        stop = start + max(1, min(rows, CPU_BLOCK_ELEMENTS // max(1, band)))
        if band == 0:
            start = stop
            continue
        row = tuple(c[start:stop, None] for c in coords)
        window = tuple(c.unfold(0, band, 1)[start + 1 : stop + 1] for c in coords)
        if criterion == "iou":
            inter = boxes.new_empty((stop - start, band))
            overlap = _iou_into(row, window, inter, torch.empty_like(inter))
        else:
            overlap = _diou(torch.stack(row[:4], -1), torch.stack(window[:4], -1), eps)[0]
        hit = overlap > threshold
        if swept_groups is not None:
            hit &= (
                swept_groups[start:stop, None]
                == swept_groups.unfold(0, band, 1)[start + 1 : stop + 1]
            )
        row_idx, offset = torch.nonzero(hit, as_tuple=True)
        row_idx += start
        firsts.append(sweep[row_idx])
        seconds.append(sweep[row_idx + offset + 1])
        start = stop
    if not firsts:
        return empty, empty
    first, second = torch.cat(firsts), torch.cat(seconds)
    return torch.minimum(first, second), torch.maximum(first, second)


def _resolve_greedy(n: int, source: Tensor, target: Tensor) -> Tensor:
    """Greedy keep mask (Tensor[N] bool) for nodes in score order and edges ``source → target``."""
    keep = torch.ones(n, dtype=torch.bool, device=source.device)
    if source.numel() == 0:
        return keep
    for _ in range(_MAX_SWEEPS):
        suppressed = torch.zeros_like(keep)
        suppressed[target[keep[source]]] = True
        settled = torch.equal(~suppressed, keep)
        keep = ~suppressed
        if settled:
            return keep
    # Long suppression chains: one exact pass in score order over the edges grouped by source.
    order = torch.argsort(source, stable=True)
    source_np = source[order].cpu().numpy()
    target_np = target[order].cpu().numpy()
    heads, starts = np.unique(source_np, return_index=True)
    stops = np.append(starts[1:], source_np.size)
    keep_np = np.ones(n, dtype=bool)
    for head, lo, hi in zip(heads.tolist(), starts.tolist(), stops.tolist(), strict=True):
        if keep_np[head]:
            keep_np[target_np[lo:hi]] = False
    return torch.from_numpy(keep_np).to(source.device)


@contextmanager
def _calling_thread_only() -> Iterator[None]:
    """Run torch CPU ops on the calling thread for the duration of the block.

    The sweep is many small ops; split over threads, each waits at a barrier for the other
    threads, which on a busy CPU costs milliseconds per op (measured: 10-20 ms for a 1000-box
    ``searchsorted`` with 2 threads at load 10 on 2 cores, 7 µs on one thread). With torch's
    OpenMP backend the thread count is a per-thread setting, restored on exit.
    """
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _greedy_nms(
    boxes: Tensor,
    scores: Tensor,
    iou_threshold: float,
    groups: Tensor | None = None,
    criterion: str = "iou",
    eps: float = 1e-7,
) -> Tensor:
    # Selection is not differentiable: work on detached tensors (boxes may come from a model).
    with _calling_thread_only():
        return _greedy_nms_sweep(
            boxes.detach(), scores.detach(), iou_threshold, groups, criterion, eps
        )


def _greedy_nms_sweep(
    boxes: Tensor,
    scores: Tensor,
    iou_threshold: float,
    groups: Tensor | None,
    criterion: str,
    eps: float,
) -> Tensor:
    order = torch.sort(scores, descending=True, stable=True).indices
    ranked = boxes.index_select(0, order)
    ranked_groups = None if groups is None else groups[order]
    # A box with a non-finite coordinate has IoU 0 or NaN with every box (its area is inf or
    # NaN), so it neither suppresses nor is suppressed: leave it out of the sweep.
    finite = torch.isfinite(ranked).all(dim=1)
    all_finite = bool(finite.all())
    if not all_finite:
        finite_rank = torch.nonzero(finite).flatten()
        ranked = ranked.index_select(0, finite_rank)
        ranked_groups = None if groups is None else ranked_groups[finite_rank]
    source, target = _suppression_edges(
        ranked, ranked_groups, _strict_threshold(iou_threshold, boxes.dtype), criterion, eps
    )
    if not all_finite:
        source, target = finite_rank[source], finite_rank[target]
    keep = _resolve_greedy(boxes.shape[0], source, target)
    return order[keep]


def _use_torchvision_kernel(boxes: Tensor, iou_threshold: float) -> bool:
    """torchvision's kernels serve CUDA, ONNX tracing, half precision, and thresholds outside
    [0, 1] (the band bound of the sweep assumes ``0 <= t``; torchvision's kernel compares
    ``IoU > t`` for any ``t``: below 0 a kept box suppresses every box it has a non-NaN IoU
    with, overlapping or not; above 1 or NaN nothing is suppressed)."""
    return (
        boxes.device.type != "cpu"
        or torch.jit.is_tracing()
        or boxes.dtype not in (torch.float32, torch.float64)
        or not 0.0 <= float(iou_threshold) <= 1.0
    )


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy non-maximum suppression.

    Repeatedly keeps the highest-scoring remaining box and drops every remaining box whose IoU
    with it is greater than ``iou_threshold``.

    Args:
        boxes (Tensor[N, 4]): floating ``(x1, y1, x2, y2)``; quantized boxes and scores go to
            torchvision's quantized kernel.
        scores (Tensor[N]): one score per box.
        iou_threshold: usually in [0, 1]; any float is taken, with torchvision's meaning.

    Returns:
        Tensor[K] int64: indices of the kept boxes, by decreasing score (ties: input order);
        identical to ``torchvision.ops.nms``.
    """
    if isinstance(boxes, Tensor) and boxes.is_quantized:
        return torchvision.ops.nms(boxes, scores, iou_threshold)
    _check_nms_inputs(boxes, scores)
    if boxes.shape[0] == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    if _use_torchvision_kernel(boxes, iou_threshold):
        return torchvision.ops.nms(boxes, scores, iou_threshold)
    return _greedy_nms(boxes, scores, iou_threshold)


def _check_idxs(idxs: Tensor, boxes: Tensor) -> None:
    if not isinstance(idxs, Tensor):
        raise BoxTypeError(f"idxs must be a torch.Tensor, got {type(idxs).__name__}")
    if idxs.shape != boxes.shape[:1]:
        raise BoxShapeError(
            f"idxs must have shape [N] matching boxes, got {tuple(idxs.shape)} "
            f"and boxes {tuple(boxes.shape)}"
        )


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """Class-aware NMS: boxes with different ``idxs`` never suppress each other.

    Args:
        boxes (Tensor[N, 4]): floating ``(x1, y1, x2, y2)``.
        scores (Tensor[N]): one score per box.
        idxs (Tensor[N] int64): class (or image) index of each box.
        iou_threshold: as in :func:`nms`.

    Returns:
        Tensor[K] int64: kept indices by decreasing score, identical to
        ``torchvision.ops.batched_nms``'s, tie order included: input order up to 1000 boxes,
        above that (on the CPU) the order of torchvision's unstable sort of the kept scores.
        Boxes with no elements, whatever their shape, give an empty ``Tensor[0]`` int64, as in
        torchvision. Deliberate difference: up to 1000 boxes torchvision shifts each class by
        a multiple of the largest coordinate, so one non-finite box stops all suppression and
        very large ``idxs`` round the coordinates; cvkit keeps each class's greedy result.
    """
    if not isinstance(boxes, Tensor):
        raise BoxTypeError(f"boxes must be a torch.Tensor, got {type(boxes).__name__}")
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    _check_nms_inputs(boxes, scores)
    _check_idxs(idxs, boxes)
    if _use_torchvision_kernel(boxes, iou_threshold):
        return torchvision.ops.batched_nms(boxes, scores, idxs, iou_threshold)
    keep = _greedy_nms(boxes, scores, iou_threshold, groups=idxs)
    if boxes.numel() > _TORCHVISION_PER_CLASS_NUMEL:
        keep = keep.sort().values
        keep = keep[scores.detach()[keep].sort(descending=True).indices]
    return keep


def diou_nms(
    boxes: Tensor,
    scores: Tensor,
    iou_threshold: float,
    idxs: Tensor | None = None,
    eps: float = 1e-7,
) -> Tensor:
    """Greedy NMS that suppresses on distance-IoU instead of IoU.

    DIoU subtracts the normalized centre distance, so two overlapping boxes with distant
    centres (e.g. two people side by side) are both kept more often than with plain NMS.

    Args:
        boxes (Tensor[N, 4]): ``(x1, y1, x2, y2)``.
        scores (Tensor[N]): one score per box.
        iou_threshold: in [0, 1]; a box is dropped when its DIoU with a kept box is greater.
        idxs (Tensor[N] int64, optional): class indices for class-aware suppression.
        eps: as in :func:`cvkit.ops.iou.distance_box_iou`.

    Returns:
        Tensor[K] int64: kept indices by decreasing score (ties in input order), on the device
        of ``boxes``. The suppression itself runs on the CPU (CUDA inputs are copied there).
    """
    _check_nms_inputs(boxes, scores)
    _check_iou_threshold(iou_threshold)
    if idxs is not None:
        _check_idxs(idxs, boxes)
    if boxes.shape[0] == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    # The band sweep runs on the CPU (torchvision has no DIoU kernel to defer to on CUDA).
    keep = _greedy_nms(
        boxes.detach().cpu(),
        scores.detach().cpu(),
        iou_threshold,
        groups=None if idxs is None else idxs.cpu(),
        criterion="diou",
        eps=eps,
    )
    return keep.to(boxes.device)


def soft_nms(
    boxes: Tensor,
    scores: Tensor,
    method: str = "gaussian",
    sigma: float = 0.5,
    iou_threshold: float = 0.3,
    score_threshold: float = 0.001,
) -> tuple[Tensor, Tensor]:
    """Soft-NMS: instead of dropping overlapping boxes, lower their scores.

    Repeatedly takes the box with the highest current score and multiplies the score of every
    remaining box ``b`` by ``exp(-IoU² / sigma)`` (``"gaussian"``) or, when IoU is greater than
    ``iou_threshold``, by ``1 - IoU`` (``"linear"``). Boxes whose score falls below
    ``score_threshold`` are dropped.

    Args:
        boxes (Tensor[N, 4]): ``(x1, y1, x2, y2)``.
        scores (Tensor[N]): one score per box.
        method: ``"gaussian"`` or ``"linear"``.
        sigma: gaussian width (> 0; ``math.inf`` disables the decay).
        iou_threshold: in [0, 1]; linear decay applies above this IoU.
        score_threshold: boxes whose updated score is below it are dropped.

    Returns:
        ``(keep, updated_scores)``: ``keep`` (Tensor[K] int64) in the order the boxes were picked
        (decreasing updated score; ties in input order), ``updated_scores`` (Tensor[K]) their
        decayed scores.
    """
    _check_nms_inputs(boxes, scores)
    _check_iou_threshold(iou_threshold)
    if method not in ("gaussian", "linear"):
        raise BoxError(f"soft_nms method must be 'gaussian' or 'linear', got {method!r}")
    if not sigma > 0:
        raise BoxError(f"soft_nms sigma must be > 0, got {sigma}")
    boxes, current = boxes.detach(), scores.detach().clone()
    alive = current >= score_threshold
    # The full IoU matrix when it is small, one row per step otherwise.
    ious = _box_iou_blocked(boxes, boxes) if boxes.shape[0] <= _SOFT_NMS_MATRIX_SIDE else None
    keep, kept_scores = [], []
    candidates = current.masked_fill(~alive, -math.inf)
    for _ in range(boxes.shape[0]):
        best = int(torch.argmax(candidates))
        if not bool(alive[best]):
            break
        keep.append(best)
        kept_scores.append(candidates[best].clone())
        alive[best] = False
        overlap = (
            ious[best] if ious is not None else _box_iou_blocked(boxes[best : best + 1], boxes)[0]
        )
        overlap = overlap.nan_to_num(0.0)
        if method == "gaussian":
            decay = torch.exp(-(overlap * overlap) / sigma)
        else:
            decay = torch.where(overlap > iou_threshold, 1 - overlap, torch.ones_like(overlap))
        current = torch.where(alive, current * decay, current)
        alive &= current >= score_threshold
        candidates = current.masked_fill(~alive, -math.inf)
    keep_t = torch.tensor(keep, dtype=torch.int64, device=boxes.device)
    scores_t = torch.stack(kept_scores) if kept_scores else current.new_empty(0)
    return keep_t, scores_t


class _NonMaxSuppression(torch.autograd.Function):
    """Per-image, per-class NMS that exports as one ONNX ``NonMaxSuppression`` node.

    Returns ``Tensor[S, 3]`` int64 ``(batch, class, box)`` triples of the selected boxes (in
    eager mode, in decreasing score order per image; the order is not part of the contract).
    """

    @staticmethod
    def forward(
        ctx,
        boxes: Tensor,
        scores: Tensor,
        max_per_class: int,
        iou_threshold: float,
        score_threshold: float,
    ) -> Tensor:
        selected = []
        for image in range(boxes.shape[0]):
            classes, box_idx = torch.nonzero(scores[image] > score_threshold, as_tuple=True)
            keep = batched_nms(
                boxes[image, box_idx], scores[image, classes, box_idx], classes, iou_threshold
            )
            picked = torch.stack([torch.full_like(keep, image), classes[keep], box_idx[keep]], 1)
            selected.append(picked)
        return torch.cat(selected) if selected else boxes.new_zeros((0, 3), dtype=torch.int64)

    @staticmethod
    def symbolic(g, boxes, scores, max_per_class, iou_threshold, score_threshold):
        return g.op(
            "NonMaxSuppression",
            boxes,
            scores,
            g.op("Constant", value_t=torch.tensor([max_per_class], dtype=torch.int64)),
            g.op("Constant", value_t=torch.tensor([iou_threshold], dtype=torch.float32)),
            g.op("Constant", value_t=torch.tensor([score_threshold], dtype=torch.float32)),
            center_point_box_i=0,
        )


def batched_nms_padded(
    boxes: Tensor,
    scores: Tensor,
    iou_threshold: float = 0.5,
    score_threshold: float = 0.05,
    max_detections: int = 100,
    scores_layout: str = "bnc",
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Class-aware NMS over a batch with fixed-shape, padded outputs (the ONNX export form).

    Per image and per class, boxes with score > ``score_threshold`` go through greedy NMS;
    the ``max_detections`` highest-scoring survivors of all classes are returned. Exported with
    ``torch.onnx.export(..., dynamo=False)`` this is one ``NonMaxSuppression`` node plus
    fixed-shape post-processing, so the batch size and the number of boxes may be dynamic.

    Args:
        boxes (Tensor[B, N, 4]): ``(x1, y1, x2, y2)`` candidates, shared by all classes.
        scores (Tensor[B, N, C] or Tensor[B, C, N]): class scores in [0, 1], no background.
        iou_threshold: NMS IoU threshold in [0, 1].
        score_threshold: candidates must score strictly above it.
        max_detections: K, detections kept per image.
        scores_layout: ``"bnc"`` for ``[B, N, C]`` scores, ``"bcn"`` for ``[B, C, N]``.

    Returns:
        ``(boxes [B, K, 4], scores [B, K], labels [B, K] int64, num_dets [B] int64)``: per image
        the detections by decreasing score; entries from ``num_dets`` on are padding with
        zero boxes and scores and label ``-1``.
    """
    check_boxes(boxes)
    if scores_layout not in _SCORE_LAYOUTS:
        raise BoxError(f"scores_layout must be one of {_SCORE_LAYOUTS}, got {scores_layout!r}")
    if boxes.ndim != 3 or scores.ndim != 3:
        raise BoxError(
            f"batched_nms_padded needs boxes [B, N, 4] and 3-d scores, got "
            f"{tuple(boxes.shape)} and {tuple(scores.shape)}"
        )
    scores_bcn = scores.transpose(1, 2) if scores_layout == "bnc" else scores
    if scores_bcn.shape[0] != boxes.shape[0] or scores_bcn.shape[2] != boxes.shape[1]:
        raise BoxError(
            f"scores {tuple(scores.shape)} (layout {scores_layout!r}) do not match boxes "
            f"{tuple(boxes.shape)}"
        )
    _check_selection_settings(iou_threshold, max_detections)
    scores_bcn = scores_bcn.contiguous()
    num_boxes = boxes.shape[1]
    if num_boxes == 0 and not torch.jit.is_tracing():
        batch = boxes.shape[0]
        return (
            boxes.new_zeros((batch, max_detections, 4)),
            scores.new_zeros((batch, max_detections)),
            torch.full((batch, max_detections), -1, dtype=torch.int64, device=boxes.device),
            torch.zeros(batch, dtype=torch.int64, device=boxes.device),
        )
    selected = _NonMaxSuppression.apply(
        boxes, scores_bcn, max_detections, float(iou_threshold), float(score_threshold)
    )
    image_idx, class_idx, box_idx = selected.unbind(1)
    # Scores of the selected (class, box) pairs in a dense [B, C * N + K] table, -inf elsewhere;
    # the K extra columns guarantee top-k always has K entries to pick from.
    flat = torch.full_like(scores_bcn.flatten(1), -math.inf)
    flat = torch.cat([flat, flat[:, :1].expand(-1, max_detections)], dim=1)
    flat = flat.index_put(
        (image_idx, class_idx * num_boxes + box_idx), scores_bcn[image_idx, class_idx, box_idx]
    )
    top_scores, top_idx = flat.topk(max_detections, dim=1)
    return _padded_outputs(boxes, top_scores, top_idx, num_boxes)


def _check_selection_settings(iou_threshold: float, max_detections: int) -> None:
    if max_detections < 1:
        raise BoxError(f"max_detections must be >= 1, got {max_detections}")
    _check_iou_threshold(iou_threshold)


def _padded_outputs(
    boxes: Tensor, top_scores: Tensor, top_idx: Tensor, num_boxes: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Padded detections from the picked ``class * N + box`` indices ``top_idx [B, K]``;
    a pick with a non-finite score is padding (zero box and score, label -1)."""
    valid = torch.isfinite(top_scores)
    labels = torch.div(top_idx, num_boxes, rounding_mode="floor")
    box_index = top_idx - labels * num_boxes
    picked = torch.gather(boxes, 1, box_index.unsqueeze(-1).expand(-1, -1, 4))
    out_boxes = torch.where(valid.unsqueeze(-1), picked, torch.zeros_like(picked))
    out_scores = torch.where(valid, top_scores, torch.zeros_like(top_scores))
    out_labels = torch.where(valid, labels, torch.full_like(labels, -1))
    return out_boxes, out_scores, out_labels, valid.sum(1)


PADDED_NMS_METHODS = ("hard", "soft", "diou")


def _check_padded_inputs(
    boxes: Tensor, scores: Tensor, iou_threshold: float, max_detections: int
) -> None:
    check_boxes(boxes)
    if boxes.ndim != 3 or scores.ndim != 3 or scores.shape[:2] != boxes.shape[:2]:
        raise BoxShapeError(
            f"padded NMS needs boxes [B, N, 4] and scores [B, N, C], got "
            f"{tuple(boxes.shape)} and {tuple(scores.shape)}"
        )
    _check_selection_settings(iou_threshold, max_detections)


def _iterative_padded_nms(
    boxes: Tensor,
    scores: Tensor,
    score_threshold: float,
    max_detections: int,
    overlap: Tensor,
    step,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``max_detections`` rounds of "pick the best live (box, class) pair, update its class".

    Loop-free per round and the same number of rounds for every input, so tracing records the
    whole selection (dynamic batch and number of boxes). Classes never interact: each round
    changes only the picked pair's class row, so the picks of one class come in the order
    the per-class eager algorithm takes them, and the global picks by decreasing score.

    Args:
        boxes (Tensor[B, N, 4]), scores (Tensor[B, N, C]): candidates (float).
        score_threshold: a pair is live from the start only when its score is above it.
        max_detections: K, the number of rounds and of outputs per image.
        overlap (Tensor[B, N, N]): the box-to-box overlap the update reads.
        step: ``step(current [B, C, N], alive [B, C, N] bool, row [B, 1, N], in_class
            [B, C, 1] bool) -> (current, alive)`` applying one pick's update.

    Returns:
        As :func:`batched_nms_padded`.
    """
    num_boxes = boxes.shape[1]
    current = scores.transpose(1, 2)
    alive = current > score_threshold
    classes = torch.arange(current.shape[1], device=boxes.device)[None, :, None]
    positions = torch.arange(current.shape[1] * num_boxes, device=boxes.device)[None, :]
    picked_scores, picked_index = [], []
    for _ in range(max_detections):
        best_score, best = current.masked_fill(~alive, -math.inf).flatten(1).max(dim=1)
        picked_scores.append(best_score)
        picked_index.append(best)
        label = torch.div(best, num_boxes, rounding_mode="floor")
        box = best - label * num_boxes
        row = torch.gather(overlap, 1, box[:, None, None].expand(-1, 1, num_boxes))
        in_class = classes == label[:, None, None]
        alive = alive & (positions != best[:, None]).view_as(alive)
        current, alive = step(current, alive, row, in_class)
    top_scores, top_idx = torch.stack(picked_scores, 1), torch.stack(picked_index, 1)
    return _padded_outputs(boxes, top_scores, top_idx, num_boxes)


def soft_nms_padded(
    boxes: Tensor,
    scores: Tensor,
    iou_threshold: float = 0.5,
    score_threshold: float = 0.05,
    max_detections: int = 100,
    sigma: float = 0.5,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Class-aware gaussian soft-NMS over a batch, fixed-shape and exportable.

    Per image and class it equals :func:`soft_nms` (``method="gaussian"``, ``sigma``,
    ``score_threshold``) on the boxes scoring above ``score_threshold``; the
    ``max_detections`` best picks of all classes are returned, by decreasing decayed score.
    Costs an ``[N, N]`` IoU matrix per image and ``max_detections`` rounds over ``[C, N]``.

    Args:
        boxes (Tensor[B, N, 4]): ``(x1, y1, x2, y2)`` candidates, shared by all classes.
        scores (Tensor[B, N, C]): class scores, no background.
        iou_threshold: checked to be in [0, 1]; the gaussian decay does not use it.
        score_threshold: candidates must score above it; decayed below it, they drop out.
        max_detections: K, detections kept per image.
        sigma: gaussian width (> 0): a score is multiplied by ``exp(-IoU² / sigma)``.

    Returns:
        As :func:`batched_nms_padded`; ``scores`` are the decayed scores.
    """
    _check_padded_inputs(boxes, scores, iou_threshold, max_detections)
    if not sigma > 0:
        raise BoxError(f"soft-NMS sigma must be > 0, got {sigma}")
    boxes, scores = _upcast_padded(boxes, scores)
    inter, union = _inter_union(boxes[:, :, None, :], boxes[:, None, :, :])
    overlap = (inter / union).nan_to_num(0.0)

    def step(current, alive, row, in_class):
        decayed = torch.where(in_class, current * torch.exp(-(row * row) / sigma), current)
        return decayed, alive & (decayed >= score_threshold)

    return _iterative_padded_nms(boxes, scores, score_threshold, max_detections, overlap, step)


def diou_nms_padded(
    boxes: Tensor,
    scores: Tensor,
    iou_threshold: float = 0.5,
    score_threshold: float = 0.05,
    max_detections: int = 100,
    eps: float = 1e-7,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Class-aware DIoU-NMS over a batch, fixed-shape and exportable.

    Per image and class it keeps what :func:`diou_nms` keeps of the boxes scoring above
    ``score_threshold``; the ``max_detections`` best survivors of all classes are returned.
    Costs an ``[N, N]`` DIoU matrix per image and ``max_detections`` rounds over ``[C, N]``.

    Args:
        boxes (Tensor[B, N, 4]): ``(x1, y1, x2, y2)`` candidates, shared by all classes.
        scores (Tensor[B, N, C]): class scores, no background.
        iou_threshold: a box is dropped when its DIoU with a kept box of its class exceeds it.
        score_threshold: candidates must score strictly above it.
        max_detections: K, detections kept per image.
        eps: as in :func:`cvkit.ops.iou.distance_box_iou`.

    Returns:
        As :func:`batched_nms_padded`.
    """
    _check_padded_inputs(boxes, scores, iou_threshold, max_detections)
    boxes, scores = _upcast_padded(boxes, scores)
    overlap = _diou(boxes[:, :, None, :], boxes[:, None, :, :], eps)[0]
    threshold = _strict_threshold(iou_threshold, boxes.dtype)

    def step(current, alive, row, in_class):
        return current, alive & ~(in_class & (row > threshold))

    return _iterative_padded_nms(boxes, scores, score_threshold, max_detections, overlap, step)


def _upcast_padded(boxes: Tensor, scores: Tensor) -> tuple[Tensor, Tensor]:
    if boxes.dtype not in (torch.float32, torch.float64):
        boxes = boxes.float()
    return boxes, scores.to(boxes.dtype)


def padded_nms(
    method: str,
    boxes: Tensor,
    scores: Tensor,
    iou_threshold: float = 0.5,
    score_threshold: float = 0.05,
    max_detections: int = 100,
    sigma: float = 0.5,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Fixed-shape, exportable class-aware NMS: ``method`` is ``"hard"``, ``"soft"`` or ``"diou"``.

    ``"hard"`` is :func:`batched_nms_padded` (one ONNX ``NonMaxSuppression`` node),
    ``"soft"`` is :func:`soft_nms_padded` (gaussian, ``sigma``), ``"diou"`` is
    :func:`diou_nms_padded`. Inputs ``boxes [B, N, 4]`` xyxy and ``scores [B, N, C]``; outputs
    ``(boxes [B, K, 4], scores [B, K], labels [B, K] int64, num_dets [B] int64)`` with
    ``K = max_detections``, padding after ``num_dets`` (zero boxes and scores, label -1).
    """
    if method == "hard":
        return batched_nms_padded(boxes, scores, iou_threshold, score_threshold, max_detections)
    if method == "soft":
        return soft_nms_padded(boxes, scores, iou_threshold, score_threshold, max_detections, sigma)
    if method == "diou":
        return diou_nms_padded(boxes, scores, iou_threshold, score_threshold, max_detections)
    raise BoxError(f"padded NMS method must be one of {PADDED_NMS_METHODS}, got {method!r}")
