"""Run directories: one folder per run holding its config, log, metrics, checkpoints and plots.

The default location is ``runs/<task>/<name>/``; an existing name gets a numeric suffix
(``exp2``, ``exp3``) so earlier results are never overwritten. ``--out DIR`` picks the folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cvkit.config import Config, save_config
from cvkit.logs import setup_logging


@dataclass(frozen=True)
class RunDir:
    """The files of one run, all under ``root``."""

    root: Path

    @property
    def config(self) -> Path:
        """The resolved config the run used (``config.yaml``)."""
        return self.root / "config.yaml"

    @property
    def log(self) -> Path:
        """The run's log file (``train.log``)."""
        return self.root / "train.log"

    @property
    def metrics_csv(self) -> Path:
        """Per-epoch metrics as CSV."""
        return self.root / "metrics.csv"

    @property
    def metrics_jsonl(self) -> Path:
        """Per-epoch metrics as JSON lines."""
        return self.root / "metrics.jsonl"

    @property
    def weights(self) -> Path:
        """Folder of checkpoints (``best.pt``, ``last.pt``)."""
        return self.root / "weights"

    @property
    def best(self) -> Path:
        """The checkpoint with the best validation metric."""
        return self.weights / "best.pt"

    @property
    def last(self) -> Path:
        """The checkpoint written at the end of the latest epoch."""
        return self.weights / "last.pt"

    @property
    def plots(self) -> Path:
        """Folder of PNG plots (loss and metric curves, predictions)."""
        return self.root / "plots"


def _unique(path: Path) -> Path:
    if not path.exists():
        return path
    index = 2
    while path.with_name(f"{path.name}{index}").exists():
        index += 1
    return path.with_name(f"{path.name}{index}")


def create_run_dir(
    config: Config, out: str | Path | None = None, root: str | Path = "runs"
) -> RunDir:
    """Create the run folder, save the resolved config into it and log to its ``train.log``.

    Args:
        config: the resolved config; ``config.task`` and ``config.name`` name the folder.
        out: an explicit folder (used as is, created if missing); overrides ``root``.
        root: parent of the ``<task>/<name>`` folders.
    """
    path = Path(out) if out is not None else _unique(Path(root) / config.task / config.name)
    run = RunDir(path)
    for folder in (run.root, run.weights, run.plots):
        folder.mkdir(parents=True, exist_ok=True)
    save_config(config, run.config)
    setup_logging(log_file=run.log)
    return run
