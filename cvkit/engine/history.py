"""Per-epoch training history: ``metrics.jsonl`` (one JSON object per epoch), ``metrics.csv``
(the same rows, one column per key seen) and a PNG of the loss and validation-metric curves.

The JSONL file is appended after each epoch; the CSV is rewritten from all rows, so a metric
that first appears at a later epoch (validation every N epochs) still gets its column.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

Row = dict[str, Any]


class MetricsHistory:
    """The rows of one run, mirrored to ``jsonl_path`` and ``csv_path``.

    Args:
        jsonl_path: appended one row per epoch; on resume, its rows up to the resumed epoch are
            kept and later ones dropped.
        csv_path: rewritten with every row after each epoch.
    """

    def __init__(self, jsonl_path: Path, csv_path: Path) -> None:
        self.jsonl_path = jsonl_path
        self.csv_path = csv_path
        self.rows: list[Row] = []

    def resume(self, completed_epochs: int) -> None:
        """Reload the rows of the first ``completed_epochs`` epochs from the JSONL file."""
        if self.jsonl_path.is_file():
            lines = self.jsonl_path.read_text(encoding="utf-8").splitlines()
            rows = [json.loads(line) for line in lines if line.strip()]
            self.rows = [row for row in rows if row.get("epoch", 0) <= completed_epochs]
        self._write_all()

    def append(self, row: Row) -> None:
        """Add one epoch's row and update both files."""
        self.rows.append(row)
        with self.jsonl_path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")
        self._write_csv()

    def _write_all(self) -> None:
        self.jsonl_path.write_text(
            "".join(json.dumps(row) + "\n" for row in self.rows), encoding="utf-8"
        )
        self._write_csv()

    def _write_csv(self) -> None:
        columns: list[str] = []
        for row in self.rows:
            columns += [key for key in row if key not in columns]
        with self.csv_path.open("w", encoding="utf-8", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(self.rows)


def plot_curves(rows: list[Row], path: Path, metric: str | None = None) -> Path | None:
    """Draw training losses (``train/*`` keys) and validation ``metric`` per epoch to a PNG.

    Args:
        rows: per-epoch rows with an ``epoch`` key.
        path: the PNG to write.
        metric: the validation key to draw (e.g. ``val/mAP``); skipped when absent.

    Returns:
        ``path``, or None when there is nothing to draw.
    """
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loss_keys = sorted({key for row in rows for key in row if key.startswith("train/")})
    loss_keys = [key for key in loss_keys if key != "train/lr" and key != "train/img_per_s"]
    has_metric = metric is not None and any(metric in row for row in rows)
    fig, axes = plt.subplots(1, 2 if has_metric else 1, figsize=(11 if has_metric else 6, 4))
    loss_ax = axes[0] if has_metric else axes
    for key in loss_keys:
        points = [(r["epoch"], r[key]) for r in rows if _finite(r.get(key))]
        loss_ax.plot(*zip(*points, strict=True), marker="o", label=key.removeprefix("train/"))
    loss_ax.set(xlabel="epoch", ylabel="training loss", title="loss")
    loss_ax.legend(fontsize="small")
    if has_metric:
        points = [(r["epoch"], r[metric]) for r in rows if _finite(r.get(metric))]
        axes[1].plot(*zip(*points, strict=True), marker="o", color="tab:green")
        axes[1].set(xlabel="epoch", ylabel=metric, title=metric)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)
