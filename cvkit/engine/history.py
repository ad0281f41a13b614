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


def plot_curves(rows: list[Row], path: Path, metrics: list[str] = ()) -> Path | None:
    """Draw the training losses (``train/*`` keys) and validation ``metrics`` per epoch to a PNG.

    Args:
        rows: per-epoch rows with an ``epoch`` key.
        path: the PNG to write.
        metrics: validation keys to draw in a second panel (e.g. ``val/mAP``, ``val/mAP50``).

    Returns:
        ``path``, or None when there is nothing to draw.
    """
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    loss_keys = sorted({key for row in rows for key in row if key.startswith("train/")})
    metrics = [key for key in metrics if any(_finite(row.get(key)) for row in rows)]
    fig, axes = plt.subplots(1, 2 if metrics else 1, figsize=(11 if metrics else 6, 4))
    panels = [(axes[0] if metrics else axes, loss_keys, "training loss")]
    if metrics:
        panels.append((axes[1], metrics, "validation"))
    for ax, keys, title in panels:
        for key in keys:
            points = [(row["epoch"], row[key]) for row in rows if _finite(row.get(key))]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", label=key.split("/", 1)[1])
        ax.set(xlabel="epoch", title=title)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize="small")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)
