"""Decoded-image caches (``data.cache``), so an epoch does not decode every file again.

- ``ram``: every image of the split is decoded once, before training, into one flat ``uint8``
  tensor. DataLoader workers share it (copy-on-write pages under ``fork``; torch's shared
  memory when the workers are spawned), so two workers do not cost two copies.
- ``disk``: each image is decoded once into an ``.npy`` file under
  ``<data.cache_dir>/decoded/`` (written atomically, named by the file's path, size and
  modification time, so an edited image is decoded again); later reads skip the codec.
- ``auto``: ``ram`` when the decoded split takes at most :data:`RAM_FRACTION` of the memory
  available now, else ``off``.

Cached pixels equal :meth:`~cvkit.data.records.Sample.load_image`'s, bit for bit; caching never
changes what a sample looks like. Samples that hold their pixels in memory are not cached.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from cvkit.data.records import Sample
from cvkit.logs import get_logger
from cvkit.resources import available_memory

__all__ = ["RAM_FRACTION", "ImageCache", "build_cache"]

RAM_FRACTION = 0.25
"""``auto`` caches in RAM when the decoded images take at most this share of free memory."""

logger = get_logger("data")


def decoded_bytes(samples: Sequence[Sample]) -> int:
    """Bytes the split's images take decoded (``H * W * 3`` each, from the annotations)."""
    return sum(int(s.height) * int(s.width) * 3 for s in samples if s.image is None)


def _decode(sample: Sample) -> np.ndarray | None:
    """The sample's decoded image, or None for samples that hold their pixels."""
    return None if sample.image is not None else sample.load_image()


class ImageCache:
    """Decoded images of one split, looked up by sample index.

    Args:
        mode: ``ram`` or ``disk``.
        samples: the split's samples (read once here, in the main process).
        folder: where ``disk`` keeps its ``.npy`` files.
        threads: decoding threads while filling the cache (OpenCV releases the GIL).
    """

    def __init__(
        self, mode: str, samples: Sequence[Sample], folder: Path | None = None, threads: int = 1
    ) -> None:
        if mode not in ("ram", "disk"):
            raise ValueError(f"ImageCache mode must be 'ram' or 'disk', not {mode!r}")
        if mode == "disk" and folder is None:
            raise ValueError("ImageCache('disk') needs a folder")
        self.mode = mode
        self.folder = folder
        self.files: list[Path | None] = []
        self.offsets: list[int] = []
        self.shapes: list[tuple[int, ...]] = []
        self.buffer = torch.empty(0, dtype=torch.uint8)
        self._fill(samples, max(1, threads))

    @classmethod
    def of_images(cls, images: Sequence[np.ndarray | None]) -> ImageCache:
        """A ``ram`` cache of ``images`` themselves (None: that index is not cached), e.g.
        resized copies of a split's images."""
        cache = cls.__new__(cls)
        cache.mode, cache.folder, cache.files = "ram", None, []
        cache.offsets, cache.shapes = [], []
        cache._store(images)
        return cache

    @property
    def nbytes(self) -> int:
        """Bytes the ``ram`` cache holds (0 for ``disk``)."""
        return self.buffer.numel()

    def _fill(self, samples: Sequence[Sample], threads: int) -> None:
        with ThreadPoolExecutor(threads) as pool:
            if self.mode == "disk":
                self.folder.mkdir(parents=True, exist_ok=True)
                self.files = list(pool.map(self._write_npy, samples))
                return
            images = list(pool.map(_decode, samples))
        self._store(images)

    def _store(self, images: Sequence[np.ndarray | None]) -> None:
        """Copy ``images`` into one flat ``uint8`` buffer (workers share it)."""
        sizes = [0 if image is None else image.size for image in images]
        self.buffer = torch.empty(sum(sizes), dtype=torch.uint8)
        flat = self.buffer.numpy()
        offset = 0
        for image, size in zip(images, sizes, strict=True):
            self.offsets.append(offset)
            self.shapes.append(() if image is None else image.shape)
            if image is not None:
                flat[offset : offset + size] = image.reshape(-1)
            offset += size

    def _write_npy(self, sample: Sample) -> Path | None:
        if sample.image is not None or sample.path is None:
            return None
        stat = sample.path.stat()
        name = f"{sample.path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
        path = self.folder / f"{hashlib.sha1(name.encode()).hexdigest()}.npy"
        if not path.exists():
            partial = path.with_suffix(f".{os.getpid()}.partial")
            with open(partial, "wb") as handle:
                np.save(handle, sample.load_image())
            os.replace(partial, path)
        return path

    def image(self, index: int, sample: Sample) -> np.ndarray:
        """Sample ``index``'s image, ``uint8 [H, W, 3]`` RGB (``sample`` when not cached)."""
        if self.mode == "disk":
            path = self.files[index]
            return sample.load_image() if path is None else np.load(path)
        shape = self.shapes[index]
        if not shape:
            return sample.load_image()
        start = self.offsets[index]
        size = int(np.prod(shape))
        # a copy: augmentations may work in place, and the cache must stay as decoded
        return self.buffer[start : start + size].numpy().reshape(shape).copy()

    def __len__(self) -> int:
        return len(self.files) if self.mode == "disk" else len(self.shapes)


def build_cache(
    mode: str, samples: Sequence[Sample], cache_dir: Path, split: str, threads: int = 1
) -> ImageCache | None:
    """The cache ``data.cache`` asks for over ``samples``, or None (``off``, or ``auto`` when the
    split does not fit; ``ram`` that does not fit falls back to ``disk``, with a warning)."""
    if mode == "off" or not samples:
        return None
    need, free = decoded_bytes(samples), available_memory()
    fits = need <= RAM_FRACTION * free if free else False
    if mode == "auto":
        if not fits:
            return None
        mode = "ram"
    if mode == "ram" and not fits:
        logger.warning(
            "data.cache=ram: the %s images need %.1f GiB decoded, more than %d%% of the %.1f "
            "GiB available; caching them on disk instead",
            split,
            need / 2**30,
            RAM_FRACTION * 100,
            free / 2**30,
        )
        mode = "disk"
    cache = ImageCache(mode, samples, cache_dir / "decoded", threads)
    logger.info(
        "cached %d %s images (%s, %.0f MiB decoded)", len(samples), split, mode, need / 2**20
    )
    return cache
