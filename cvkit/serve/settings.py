"""What ``cvkit serve`` was asked to do: the models to load and the server's limits.

:class:`ServeSettings` is the one validated record the command line, :func:`cvkit.serve.serve`
and every uvicorn worker share (workers receive it as JSON in an environment variable, since a
multi-process uvicorn imports the app by name). :func:`model_files` turns the ``MODEL``
arguments (``.onnx`` files or folders of them) into ``name -> path``.
:meth:`ServeSettings.resolved` turns ``workers="auto"`` into a process count for the machine.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

from cvkit.errors import CvkitError

SETTINGS_ENV = "CVKIT_SERVE_SETTINGS"
# ``workers="auto"`` on the CPU: one process per core up to this many. Each holds every model
# and its own Python (~150 MB); beyond a few, more onnxruntime threads per process serve better.
MAX_AUTO_SERVE_WORKERS = 4


class ServeError(CvkitError, ValueError):
    """The server cannot start: no models, two models with one name, or a bad limit."""


@dataclass(frozen=True)
class ServeSettings:
    """Models and limits of one server.

    Attributes:
        models: ``.onnx`` files or folders holding them (one model per file, named by the
            file's stem).
        host, port: where uvicorn listens.
        workers: uvicorn worker processes, each with its own event loop, batchers and copy of
            every model; ``auto`` (:meth:`resolved`): one per core up to
            :data:`MAX_AUTO_SERVE_WORKERS` when the models run on the CPU, else 1. On 2 cores two
            processes of one onnxruntime thread each served 2.0-2.5x a plain FastAPI server's
            requests/s against ~1.5x for one process (``docs/serving.md``): a Python
            server's event loop is one core's work.
        max_batch: most images (rows) one ``session.run`` gathers for a dynamic-batch model.
        max_delay_ms: how long the first queued request waits for others to join its batch
            (for images only while other images for the model are being received or decoded).
        max_upload_mb: request bodies larger than this get 413.
        timeout_s: a request still unanswered after this gets 504.
        providers: onnxruntime providers (``auto``, ``cpu``, ``cuda``, ``tensorrt``).
        threads: CPU intra-op threads per model (None: onnxruntime's default with one
            worker; the cores shared out between the workers with several).
        spin: let those threads spin-wait between runs. Off by default: where other work
            competes for the cores the spinning takes them from the HTTP handling and decoding;
            on a quiet machine it answers one-at-a-time requests sooner (measurements in
            ``docs/serving.md`` and ``benchmarks/results/serve.md``).
    """

    models: tuple[str, ...]
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int | Literal["auto"] = "auto"
    max_batch: int = 16
    max_delay_ms: float = 5.0
    max_upload_mb: float = 16.0
    timeout_s: float = 30.0
    providers: str = "auto"
    threads: int | None = None
    spin: bool = False

    def __post_init__(self) -> None:
        checks = {
            "workers": self.workers == "auto"
            or (isinstance(self.workers, int) and self.workers >= 1),
            "max_batch": self.max_batch >= 1,
            "max_delay_ms": self.max_delay_ms >= 0,
            "max_upload_mb": self.max_upload_mb > 0,
            "timeout_s": self.timeout_s > 0,
            "threads": self.threads is None or self.threads >= 1,
        }
        for name, valid in checks.items():
            if not valid:
                raise ServeError(f"--{name.replace('_', '-')}: bad value {getattr(self, name)!r}")
        if not self.models:
            raise ServeError("cvkit serve needs at least one .onnx file or folder")

    def resolved(self, cores: int, cpu_only: bool) -> ServeSettings:
        """These settings with ``workers`` a number and ``threads`` set for several workers.

        Args:
            cores: CPU cores this process may use.
            cpu_only: whether the models run on the CPU (``providers`` resolve to the CPU
                alone); on a GPU ``auto`` is one worker, as one process per GPU.
        """
        workers = self.workers
        if workers == "auto":
            workers = min(cores, MAX_AUTO_SERVE_WORKERS) if cpu_only else 1
        threads = self.threads
        if threads is None and workers > 1 and cpu_only:
            threads = max(1, cores // workers)
        return replace(self, workers=workers, threads=threads)

    @property
    def max_upload_bytes(self) -> int:
        """:attr:`max_upload_mb` in bytes (1 MB = 2**20 bytes)."""
        return int(self.max_upload_mb * 2**20)

    def to_json(self) -> str:
        """These settings as JSON (what :meth:`from_json` reads)."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ServeSettings:
        """Settings written by :meth:`to_json`."""
        values = json.loads(text)
        values["models"] = tuple(values["models"])
        return cls(**values)


def model_files(models: Sequence[str | Path]) -> dict[str, Path]:
    """``name -> .onnx path`` for files and folders (every ``*.onnx`` directly inside).

    Raises:
        ServeError: a missing path, a file that is not ``.onnx``, a folder with no model,
            or two models with the same name.
    """
    found: dict[str, Path] = {}
    for entry in map(Path, models):
        if entry.is_dir():
            files = sorted(entry.glob("*.onnx"))
            if not files:
                raise ServeError(f"{entry}: folder holds no .onnx model")
        elif entry.is_file() and entry.suffix == ".onnx":
            files = [entry]
        else:
            what = "not an .onnx file" if entry.exists() else "no such file or folder"
            raise ServeError(f"{entry}: {what}")
        for path in files:
            if path.stem in found:
                raise ServeError(
                    f"two models are named {path.stem!r}: {found[path.stem]} and {path}"
                )
            found[path.stem] = path
    return found
