"""The output folder: result rows in part files that are either complete or absent.

Every write goes to a temporary name and is renamed into place, so a job killed at any moment
leaves only whole parts (and perhaps a ``.tmp`` file, removed by the next run). A re-run reads
the ``path`` column of the parts already there and skips those images, so it processes only
the rest. ``_model.json`` records which model wrote the folder; a run of another model into
the same folder is refused rather than mixing two models' rows.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from cvkit.errors import CvkitError
from cvkit.scale.rows import RowFormat
from cvkit.scale.sources import filesystem, is_uri

FORMATS = ("parquet", "jsonl")
MODEL_FILE = "_model.json"


class OutputError(CvkitError, ValueError):
    """The output folder holds another model's results, or an unknown format was asked for."""


def model_identity(model: str | Path, task: str) -> dict[str, Any]:
    """``{"model": file name, "sha256": digest, "task": task}`` of an exported model."""
    digest = hashlib.sha256()
    with open(model, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return {"model": Path(model).name, "sha256": digest.hexdigest(), "task": task}


class ResultStore:
    """Part files of result rows under ``out`` (a local folder or a :mod:`pyarrow.fs` URI).

    Args:
        out: the output folder (created).
        rows: the task's row format (schema of every part).
        output_format: ``parquet`` or ``jsonl`` for the parts this run writes (a folder may
            hold both; both are read back).
    """

    def __init__(self, out: str | Path, rows: RowFormat, output_format: str = "parquet") -> None:
        if output_format not in FORMATS:
            raise OutputError(f"--format: expected one of {FORMATS}, got {output_format!r}")
        self.out = str(out)
        if is_uri(self.out):
            self.fs, self.root = filesystem(self.out)
        else:
            self.fs, self.root = pafs.LocalFileSystem(), os.path.abspath(self.out)
        self.fs.create_dir(self.root, recursive=True)
        self.rows = rows
        self.output_format = output_format
        self.run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
        self._written = 0

    def _path(self, name: str) -> str:
        return f"{self.root.rstrip('/')}/{name}"

    def claim(self, identity: dict[str, Any]) -> None:
        """Record ``identity`` (:func:`model_identity`) as the folder's model, or check it
        against the one recorded.

        Raises:
            OutputError: the folder holds the results of another model.
        """
        path = self._path(MODEL_FILE)
        if self.fs.get_file_info(path).type == pafs.FileType.File:
            with self.fs.open_input_stream(path) as stream:
                recorded = json.loads(stream.read().decode("utf-8"))
            if recorded.get("sha256") != identity["sha256"]:
                raise OutputError(
                    f"{self.out}: holds the results of {recorded.get('model')} "
                    f"(sha256 {str(recorded.get('sha256'))[:12]}...), not of "
                    f"{identity['model']} (sha256 {identity['sha256'][:12]}...); "
                    "write to another --out folder"
                )
            return
        self._put(MODEL_FILE, json.dumps(identity, indent=1).encode("utf-8"))

    def parts(self) -> list[str]:
        """The complete part files, sorted; leftover ``.tmp`` files of a killed run are
        deleted."""
        selector = pafs.FileSelector(self.root, allow_not_found=True)
        parts = []
        for info in self.fs.get_file_info(selector):
            if not info.is_file or not info.base_name.startswith("part-"):
                continue
            if info.base_name.endswith(".tmp"):
                self.fs.delete_file(info.path)
            elif info.extension in FORMATS:
                parts.append(info.path)
        return sorted(parts)

    def read_part(self, path: str, columns: Iterable[str] | None = None) -> pa.Table:
        """One part file as a table of the row schema (or of ``columns`` of it)."""
        names = list(columns) if columns is not None else None
        if path.endswith(".parquet"):
            return pq.read_table(path, columns=names, filesystem=self.fs, schema=self.rows.schema)
        with self.fs.open_input_stream(path) as stream:
            lines = stream.read().decode("utf-8").splitlines()
        table = self.rows.table([json.loads(line) for line in lines if line])
        return table.select(names) if names is not None else table

    def read(self) -> pa.Table:
        """Every row of every part (an empty table of the schema when there is none)."""
        tables = [self.read_part(path) for path in self.parts()]
        return pa.concat_tables(tables) if tables else self.rows.schema.empty_table()

    def done_paths(self) -> set[str]:
        """The ``path`` of every row already written (results and errors alike)."""
        done: set[str] = set()
        for path in self.parts():
            done.update(self.read_part(path, ["path"]).column("path").to_pylist())
        return done

    def write(self, table: pa.Table) -> str:
        """Write ``table`` as this run's next part file (atomically); returns its path."""
        name = f"part-{self.run_id}-{self._written:05d}.{self.output_format}"
        buffer = io.BytesIO()
        if self.output_format == "parquet":
            pq.write_table(table.cast(self.rows.schema), buffer)
        else:
            for row in table.to_pylist():
                buffer.write(json.dumps(row).encode("utf-8") + b"\n")
        path = self._put(name, buffer.getvalue())
        self._written += 1
        return path

    def _put(self, name: str, data: bytes) -> str:
        path, tmp = self._path(name), self._path(name + ".tmp")
        with self.fs.open_output_stream(tmp) as stream:
            stream.write(data)
        self.fs.move(tmp, path)
        return path
