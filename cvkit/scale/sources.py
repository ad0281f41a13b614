"""What ``SOURCE`` names: the image files of a folder, a glob, a list file or a URI.

Local sources become absolute paths; remote ones (``s3://``, ``gs://``, ``hdfs://`` ... any
filesystem :mod:`pyarrow.fs` opens, as Ray Data does) stay URIs. Every row of the output is
keyed by that string, which is how a re-run recognises the images it has already done.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable
from pathlib import Path

import pyarrow.fs as pafs

from cvkit.errors import DatasetError
from cvkit.images import IMAGE_SUFFIXES

LIST_SUFFIXES = (".txt", ".lst")
GLOB_CHARS = "*?["


def is_uri(source: str) -> bool:
    """True for ``scheme://...`` sources (``file://`` included)."""
    return "://" in source


def _is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """The :mod:`pyarrow.fs` filesystem of ``uri``'s scheme (and bucket), and the path in it.

    Raises:
        DatasetError: an unknown scheme or a location the filesystem refuses.
    """
    try:
        return pafs.FileSystem.from_uri(uri)
    except (ValueError, OSError) as exc:
        raise DatasetError(f"{uri}: cannot open this location: {exc}") from None


def _list_uri(uri: str) -> list[str]:
    fs, path = filesystem(uri)
    scheme = uri.split("://", 1)[0]
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise DatasetError(f"{uri}: no such file or folder")
    if info.type == pafs.FileType.File:
        if path.lower().endswith(LIST_SUFFIXES):
            with fs.open_input_stream(path) as stream:
                return _list_file_lines(stream.read().decode("utf-8"), None, uri)
        return [uri]
    selector = pafs.FileSelector(path, recursive=True)
    files = sorted(i.path for i in fs.get_file_info(selector) if i.is_file and _is_image(i.path))
    return [f"{scheme}://{name}" for name in files]


def _list_file_lines(text: str, folder: Path | None, source: str) -> list[str]:
    """The sources named by a list file's lines (``#`` comments and blank lines skipped);
    relative local paths are relative to the list file's ``folder``."""
    paths = []
    for number, line in enumerate(text.splitlines(), 1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        if not is_uri(entry) and folder is not None and not os.path.isabs(entry):
            entry = str(folder / entry)
        if not is_uri(entry) and not os.path.isfile(entry):
            raise DatasetError(f"{source}, line {number}: {entry}: no such image file")
        paths.append(entry if is_uri(entry) else os.path.abspath(entry))
    return paths


def _list_local(source: str) -> list[str]:
    if any(char in source for char in GLOB_CHARS):
        matches = sorted(glob.glob(source, recursive=True))
        return [os.path.abspath(p) for p in matches if os.path.isfile(p) and _is_image(p)]
    path = Path(source)
    if path.is_dir():
        files = sorted(str(p) for p in path.rglob("*") if p.is_file() and _is_image(p.name))
        return [os.path.abspath(p) for p in files]
    if path.is_file():
        if path.suffix.lower() in LIST_SUFFIXES:
            text = path.read_text(encoding="utf-8")
            return _list_file_lines(text, path.parent, source)
        return [os.path.abspath(path)]
    raise DatasetError(f"{source}: no such image file, folder, glob match or list file")


def list_sources(sources: str | Iterable[str]) -> list[str]:
    """The image files named by ``sources``, each once, in the order given (folders and globs
    sorted, folders recursively).

    Args:
        sources: folders, globs (``photos/**/*.jpg``), list files (``.txt``/``.lst``: one path
            or URI per line, relative paths from the file's folder), image files, or URIs of
            any of these on a :mod:`pyarrow.fs` filesystem (``s3://bucket/photos/``).

    Returns:
        Absolute local paths and URIs, as the output rows' ``path`` will show them.

    Raises:
        DatasetError: a source does not exist, or no image was found at all.
    """
    names = [sources] if isinstance(sources, (str, os.PathLike)) else list(sources)
    found: dict[str, None] = {}
    for source in map(str, names):
        for path in _list_uri(source) if is_uri(source) else _list_local(source):
            found.setdefault(path, None)
    if not found:
        suffixes = ", ".join(IMAGE_SUFFIXES)
        raise DatasetError(f"{', '.join(map(str, names))}: no images found (looked for {suffixes})")
    return list(found)


def read_bytes(path: str) -> bytes:
    """The bytes of a local file or of a URI on its :mod:`pyarrow.fs` filesystem."""
    if not is_uri(path):
        return Path(path).read_bytes()
    fs, inner = filesystem(path)
    with fs.open_input_stream(inner) as stream:
        return stream.read()
