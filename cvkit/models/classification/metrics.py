"""Classification metrics: confusion matrix, top-k accuracy, per-class accuracy, and a PNG.

The confusion matrix ``M[t, p]`` counts samples of true class ``t`` predicted as ``p``; top-1
accuracy is ``trace(M) / sum(M)`` and the accuracy of class ``t`` (its recall) is
``M[t, t] / sum(M[t])`` (NaN when the split has no sample of ``t``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor


def confusion_matrix(predictions: Tensor, targets: Tensor, num_classes: int) -> Tensor:
    """``int64 [C, C]`` counts, rows = true class, columns = predicted class.

    Args:
        predictions: ``int64 [N]`` predicted class indices.
        targets: ``int64 [N]`` true class indices in ``0..C-1``.
        num_classes: ``C``.
    """
    index = targets.long().flatten() * num_classes + predictions.long().flatten()
    counts = torch.bincount(index.cpu(), minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def topk_correct(logits: Tensor, targets: Tensor, k: int) -> int:
    """How many rows of ``logits [N, C]`` have the true class among their ``k`` largest."""
    k = min(k, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    return int((top == targets.view(-1, 1)).any(dim=1).sum())


def summarize(matrix: Tensor, classes: Sequence[str]) -> dict[str, float]:
    """``top1`` and ``acc/<class>`` (per-class recall, NaN without samples) from a matrix."""
    matrix = matrix.double()
    total = float(matrix.sum())
    metrics = {"top1": float(matrix.trace()) / total if total else math.nan}
    per_class = matrix.sum(dim=1)
    for index, name in enumerate(classes):
        count = float(per_class[index])
        metrics[f"acc/{name}"] = float(matrix[index, index]) / count if count else math.nan
    return metrics


def plot_confusion_matrix(
    matrix: Tensor, classes: Sequence[str], path: str | Path, title: str = ""
) -> Path:
    """Write the confusion matrix as a PNG: row-normalized colours, raw counts as text.

    Uses a bare :class:`matplotlib.figure.Figure`, so no pyplot backend is selected or changed.
    """
    from matplotlib.figure import Figure

    counts = matrix.cpu().double()
    rows = counts.sum(dim=1, keepdim=True).clamp(min=1)
    size = max(4.0, 0.6 * len(classes) + 2)
    figure = Figure(figsize=(size, size * 0.85))
    axes = figure.subplots()
    image = axes.imshow((counts / rows).numpy(), cmap="Blues", vmin=0, vmax=1)
    axes.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    axes.set_yticks(range(len(classes)), classes)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title or f"confusion matrix (top-1 {float(counts.trace() / counts.sum()):.3f})")
    if len(classes) <= 30:
        for t in range(len(classes)):
            for p in range(len(classes)):
                share = float(counts[t, p] / rows[t])
                axes.text(
                    p,
                    t,
                    int(counts[t, p]),
                    ha="center",
                    va="center",
                    color="white" if share > 0.5 else "black",
                    fontsize=8,
                )
    figure.colorbar(image, ax=axes, fraction=0.046)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    figure.savefig(tmp, dpi=100)
    tmp.replace(path)
    return path
