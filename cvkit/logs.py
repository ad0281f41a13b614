"""Logging set-up and progress reporting shared by every stage.

cvkit logs through the standard :mod:`logging` module under the ``cvkit`` logger. Progress bars
use tqdm on a terminal and fall back to a few plain log lines when output is not a TTY, so CI
logs stay readable instead of filling with carriage-return frames.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TypeVar

LOGGER_NAME = "cvkit"
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
T = TypeVar("T")


def get_logger(name: str | None = None) -> logging.Logger:
    """The ``cvkit`` logger, or its child ``cvkit.<name>``."""
    return logging.getLogger(LOGGER_NAME if name is None else f"{LOGGER_NAME}.{name}")


def setup_logging(level: int | str = logging.INFO, log_file: str | Path | None = None) -> None:
    """Send ``cvkit`` log records to stderr and, when given, to ``log_file`` (appended).

    Calling it again replaces the handlers it installed before, so it is safe to call per run.
    """
    logger = get_logger()
    logger.setLevel(level)
    for handler in [h for h in logger.handlers if getattr(h, "_cvkit", False)]:
        logger.removeHandler(handler)
        handler.close()
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
    for handler in handlers:
        handler.setFormatter(logging.Formatter(_FORMAT, datefmt="%H:%M:%S"))
        handler._cvkit = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.propagate = False


def progress(
    iterable: Iterable[T],
    total: int | None = None,
    desc: str = "",
    lines: int = 4,
    status: Callable[[], str] | None = None,
    min_interval: float = 10.0,
) -> Iterator[T]:
    """Iterate with a progress report.

    On a TTY this is a tqdm bar. Otherwise up to ``lines`` plain log lines are written
    (``desc 25% 10/40 3.1 it/s``), at least ``min_interval`` seconds apart, plus one at the
    end, so a long loop shows it is alive and a short one logs a single line.

    Args:
        iterable: what to iterate over.
        total: number of items, when ``len(iterable)`` is not available.
        desc: label shown before the counts.
        lines: how many intermediate lines to log when not on a TTY.
        status: called after each processed item; its text (e.g. ``loss 0.52 lr 0.01``) is
            shown after the counts.
        min_interval: seconds between two intermediate lines when not on a TTY.
    """
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    if sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(iterable, total=total, desc=desc, dynamic_ncols=True)
        for item in bar:
            yield item
            if status is not None:
                bar.set_postfix_str(status(), refresh=False)
        return
    logger = get_logger("progress")
    every = max(1, (total or 0) // max(lines, 1)) if total else 0
    start = last = time.perf_counter()
    count = 0
    for count, item in enumerate(iterable, 1):
        yield item
        if every and count % every == 0 and count != total:
            now = time.perf_counter()
            if now - last >= min_interval:
                _log_line(logger, desc, count, total, start, status)
                last = now
    _log_line(logger, desc, count, total, start, status)


def _log_line(
    logger: logging.Logger,
    desc: str,
    count: int,
    total: int | None,
    start: float,
    status: Callable[[], str] | None,
) -> None:
    rate = count / max(time.perf_counter() - start, 1e-9)
    share = f"{100 * count // total:3d}% " if total else ""
    extra = f" {status()}" if status is not None else ""
    logger.info("%s %s%d/%s %.1f it/s%s", desc, share, count, total or "?", rate, extra)
