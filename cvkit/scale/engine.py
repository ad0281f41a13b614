"""Batch prediction over many images: one pipeline, run in-process or on Ray Data.

Both engines list the source (:func:`~cvkit.scale.sources.list_sources`), drop the images the
output folder already holds (:class:`~cvkit.scale.store.ResultStore`), run
:class:`~cvkit.scale.batch.BatchPredictor` on batches of the rest and write the rows in
parts. ``engine="local"`` calls the predictor in this process; ``engine="ray"`` builds a Ray
Dataset of the paths and maps it with an actor pool (``map_batches`` with
``ActorPoolStrategy``: each actor loads the model once and reads, decodes and predicts its
batches), streaming the rows back to this process, which writes the parts. Rows are identical
between engines; only their order differs.

Ray is imported only by the ``ray`` engine (``pip install cvkit[ray]``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from cvkit.errors import CvkitError
from cvkit.runtime import OnnxModel
from cvkit.scale.batch import BatchPredictor
from cvkit.scale.rows import row_format
from cvkit.scale.sources import list_sources
from cvkit.scale.store import ResultStore, model_identity

ENGINES = ("local", "ray")
DEFAULT_BATCH = 16
DEFAULT_ROWS_PER_FILE = 1000


class EngineError(CvkitError, RuntimeError):
    """The engine asked for is unknown, not installed, or its cluster cannot be reached."""


@dataclass
class ScaleReport:
    """What one run did.

    Attributes:
        out: the output folder.
        total: images in the source; skipped: already in ``out`` before this run;
        processed: rows this run wrote; errors: of those, error rows.
        seconds: wall-clock time of the prediction (listing and start-up included).
        files: the part files this run wrote.
    """

    out: str
    total: int
    skipped: int
    processed: int = 0
    errors: int = 0
    seconds: float = 0.0
    files: list[str] = field(default_factory=list)

    @property
    def images_per_s(self) -> float:
        """Rows written per second of :attr:`seconds`."""
        return self.processed / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class PredictOptions:
    """How each worker predicts: the :class:`BatchPredictor` arguments.

    Attributes:
        providers: onnxruntime providers of every predictor.
        threads: onnxruntime intra-op threads per predictor (None: the ray engine uses
            ``cpus_per_actor``, the local one onnxruntime's default).
        batch_size: images per model call (and per Ray batch).
        score_threshold: detectors: minimum score kept (None: the model's).
    """

    providers: str = "cpu"
    threads: int | None = None
    batch_size: int = DEFAULT_BATCH
    score_threshold: float | None = None

    def predictor_kwargs(self, model: str, threads: int | None) -> dict[str, Any]:
        """Keyword arguments of :class:`BatchPredictor` for ``model``."""
        return {
            "model": model,
            "providers": self.providers,
            "threads": threads,
            "batch_size": self.batch_size,
            "score_threshold": self.score_threshold,
        }


def open_store(model: str | Path, out: str | Path, output_format: str) -> ResultStore:
    """The :class:`ResultStore` at ``out`` for ``model``'s task, claimed for ``model``."""
    task = OnnxModel(model, "cpu").metadata.task
    store = ResultStore(out, row_format(task), output_format)
    store.claim(model_identity(model, task))
    return store


def write_parts(
    tables: Iterable[pa.Table], store: ResultStore, report: ScaleReport, rows_per_file: int
) -> ScaleReport:
    """Write ``tables`` to ``store`` in parts of ``rows_per_file`` rows (the last may be
    shorter), counting rows and error rows into ``report``."""
    pending = pa.Table.from_batches([], schema=store.rows.schema)

    def flush(table: pa.Table) -> None:
        report.files.append(store.write(table))
        report.processed += table.num_rows
        report.errors += table.num_rows - table.column("error").null_count

    for table in tables:
        pending = pa.concat_tables([pending, table])
        while pending.num_rows >= rows_per_file:
            flush(pending.slice(0, rows_per_file))
            pending = pending.slice(rows_per_file)
    if pending.num_rows:
        flush(pending)
    return report


def local_tables(
    paths: Sequence[str], predictor: BatchPredictor, batch_size: int
) -> Iterator[pa.Table]:
    """``predictor``'s rows of ``paths``, ``batch_size`` images at a time, in order."""
    for start in range(0, len(paths), batch_size):
        yield predictor({"path": list(paths[start : start + batch_size])})


def connect_ray(address: str | None = None) -> Any:
    """The ``ray`` module, connected: to ``address`` (``auto``: the running cluster; a
    ``host:port``; ``ray://`` for Ray Client), or a new local cluster when None. A session
    already started by the caller (``ray.init`` in a notebook or test) is used as it is.

    Raises:
        EngineError: Ray is not installed.
    """
    try:
        import ray
        import ray.data
    except ImportError:
        raise EngineError(
            "--engine ray needs Ray Data: pip install 'cvkit[ray]' (ray[data], pyarrow)"
        ) from None
    if not ray.is_initialized():
        ray.init(address=address)
    return ray


def map_rows(
    dataset: Any,
    model: str | Path,
    options: PredictOptions = PredictOptions(),
    actors: int = 1,
    cpus_per_actor: float = 1.0,
    gpus_per_actor: float = 0.0,
) -> Any:
    """``dataset`` (Ray Dataset with a ``path`` column, and ``bytes`` or ``image`` if read)
    mapped to result rows by a pool of ``actors`` actors, each holding one
    :class:`BatchPredictor` and reserving ``cpus_per_actor`` CPUs (its onnxruntime threads,
    unless ``options.threads``) and ``gpus_per_actor`` GPUs. Lazy: nothing runs until the
    result is consumed."""
    import ray.data

    threads = options.threads or max(1, int(cpus_per_actor))
    return dataset.map_batches(
        BatchPredictor,
        fn_constructor_kwargs=options.predictor_kwargs(str(model), threads),
        compute=ray.data.ActorPoolStrategy(size=actors),
        batch_size=options.batch_size,
        batch_format="numpy",
        num_cpus=cpus_per_actor,
        num_gpus=gpus_per_actor,
    )


def _ray_tables(rows: Any) -> Iterator[pa.Table]:
    yield from rows.iter_batches(batch_size=None, batch_format="pyarrow")


def predict_files(
    sources: str | Iterable[str],
    model: str | Path,
    out: str | Path,
    engine: str = "local",
    options: PredictOptions = PredictOptions(),
    output_format: str = "parquet",
    rows_per_file: int = DEFAULT_ROWS_PER_FILE,
    address: str | None = None,
    actors: int = 1,
    cpus_per_actor: float = 1.0,
    gpus_per_actor: float = 0.0,
) -> ScaleReport:
    """Predict every image of ``sources`` with ``model`` into ``out``, skipping images
    already there; what ``cvkit predict MODEL.onnx SOURCE --out DIR`` runs.

    Args:
        sources: folders, globs, list files, images or URIs (:func:`list_sources`).
        model: exported ``.onnx`` file.
        out: output folder (local or URI) of ``part-*.parquet`` / ``part-*.jsonl`` rows
            (:mod:`cvkit.scale.rows`).
        engine: ``local`` (this process) or ``ray`` (Ray Data actor pool).
        options: providers, threads, batch size, score threshold of each predictor.
        output_format: ``parquet`` or ``jsonl``.
        rows_per_file: rows per part file: a killed run loses at most the rows not yet in one.
        address: ray: the cluster (``auto``, ``host:port``, ``ray://...``; None: start one).
        actors, cpus_per_actor, gpus_per_actor: ray: size and resources of the actor pool.

    Returns:
        The :class:`ScaleReport`.

    Raises:
        DatasetError: no images in ``sources``.
        OutputError: ``out`` holds another model's results.
        EngineError: an unknown engine, or Ray missing.
    """
    if engine not in ENGINES:
        raise EngineError(f"--engine: expected one of {ENGINES}, got {engine!r}")
    start = time.perf_counter()
    paths = list_sources(sources)
    store = open_store(model, out, output_format)
    done = store.done_paths()
    todo = [path for path in paths if path not in done]
    report = ScaleReport(str(out), len(paths), len(paths) - len(todo))
    if todo:
        if engine == "local":
            predictor = BatchPredictor(**options.predictor_kwargs(str(model), options.threads))
            tables = local_tables(todo, predictor, options.batch_size)
        else:
            ray = connect_ray(address)
            dataset = ray.data.from_items([{"path": path} for path in todo])
            rows = map_rows(dataset, model, options, actors, cpus_per_actor, gpus_per_actor)
            tables = _ray_tables(rows)
        write_parts(tables, store, report, rows_per_file)
    report.seconds = time.perf_counter() - start
    return report


def predict_dataset(
    dataset_or_path: Any,
    model: str | Path,
    out: str | Path | None = None,
    options: PredictOptions = PredictOptions(),
    output_format: str = "parquet",
    rows_per_file: int = DEFAULT_ROWS_PER_FILE,
    actors: int = 1,
    cpus_per_actor: float = 1.0,
    gpus_per_actor: float = 0.0,
) -> Any:
    """Predict a Ray Dataset (or the images of a path) with ``model`` on an actor pool.

    Args:
        dataset_or_path: a Ray Dataset with a ``path`` column (string) and optionally
            ``bytes`` (``ray.data.read_binary_files(..., include_paths=True)``) or ``image``
            (RGB ``uint8 [H, W, 3]``, ``ray.data.read_images(..., include_paths=True)``;
            without either, actors read each path); or anything :func:`list_sources` takes.
        model: exported ``.onnx`` file, readable by every worker.
        out: None: return the lazy Dataset of result rows (schema
            :func:`cvkit.scale.rows.row_format` of the model's task), e.g. to
            ``.write_parquet("s3://...")`` yourself. A folder: write the rows there as
            :func:`predict_files` does, skipping paths already in it, and return the
            :class:`ScaleReport`.
        options, output_format, rows_per_file, actors, cpus_per_actor, gpus_per_actor: as for
            :func:`predict_files`.

    Raises:
        EngineError: Ray missing.
        OutputError: ``out`` holds another model's results.
    """
    ray = connect_ray()
    if not isinstance(dataset_or_path, ray.data.Dataset):
        if out is not None:
            return predict_files(
                dataset_or_path, model, out, "ray", options, output_format, rows_per_file,
                None, actors, cpus_per_actor, gpus_per_actor,
            )  # fmt: skip
        paths = list_sources(dataset_or_path)
        dataset_or_path = ray.data.from_items([{"path": path} for path in paths])
    if out is None:
        return map_rows(dataset_or_path, model, options, actors, cpus_per_actor, gpus_per_actor)
    from ray.data.expressions import col

    start = time.perf_counter()
    store = open_store(model, out, output_format)
    done = store.done_paths()
    dataset = (
        dataset_or_path.filter(expr=col("path").not_in(sorted(done))) if done else dataset_or_path
    )
    report = ScaleReport(str(out), 0, len(done))
    rows = map_rows(dataset, model, options, actors, cpus_per_actor, gpus_per_actor)
    write_parts(_ray_tables(rows), store, report, rows_per_file)
    report.total = report.skipped + report.processed
    report.seconds = time.perf_counter() - start
    return report
