"""Peak memory of Mask R-CNN's training data pipeline: one batch of 16 images at 512 px with 50
instance masks each.

The samples are built in memory (random noise images of 640x560 original pixels, 50 ellipses
each, stored as COCO RLE like a COCO split's segmentations) and go through cvkit's training
path for ``configs/mask_rcnn.yaml`` at ``data.image_size=512``: the config's augmentations and
resize (:func:`cvkit.data.loader.build_transform`), :class:`~cvkit.data.loader.RecordsDataset`
with ``instance_masks`` and the loader's ``Collate`` (``num_workers=0``, so everything is in
this process). Reported: the peak of Python/numpy allocations during the batch (tracemalloc;
torch's own allocations are not traced), the growth of the process's peak RSS
(``resource.getrusage``), and the size of the batch's mask tensors. With ``--workers N`` instead, a
DataLoader (torch's default ``prefetch_factor`` of 2 batches per worker) delivers ``4 * N``
batches of the same samples, and the growth of the main process's peak RSS and the largest
worker's peak RSS (which counts the pages it shares with the main process from the fork) and
of ``/dev/shm`` (where workers hand batches over) are reported.

``--compact`` measures the same with the transform's compact masks
(:class:`~cvkit.structures.CroppedMasks`: each mask cropped to its own region, ``compact_masks``
of :func:`build_transform`, what ``build_dataset`` uses for ``data.instance_masks``) in the
targets, which the mask loss densifies only for the matched ground truths of one image at a
time.

``python benchmarks/bench_mask_memory.py [--workers 2] [--compact]`` (under a minute on 2 cores).
"""

from __future__ import annotations

import argparse
import resource
import shutil
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch
from machine import cpu_model

from cvkit.config import load_config
from cvkit.data.loader import Collate, RecordsDataset
from cvkit.data.records import Records, Sample, encode_mask
from cvkit.data.transforms import build_transform
from cvkit.structures import CroppedMasks

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "mask_rcnn.yaml"
CLASSES = ["circle", "rectangle", "triangle"]


def _records(count: int, objects: int, height: int, width: int, seed: int = 0) -> Records:
    """``count`` noise images with ``objects`` ellipse masks each (RLE), boxes tight around them."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[:height, :width]
    samples = []
    for index in range(count):
        segmentations, boxes = [], []
        for _ in range(objects):
            cy, cx = rng.uniform(40, [height - 40, width - 40])
            ry, rx = rng.uniform(8, 60, size=2)
            mask = ((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 <= 1
            rows, cols = np.nonzero(mask)
            boxes.append([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1])
            segmentations.append(encode_mask(mask))
        samples.append(
            Sample(
                index + 1,
                f"{index}.png",
                height,
                width,
                image=rng.integers(0, 256, (height, width, 3), dtype=np.uint8),
                boxes=np.array(boxes, np.float32),
                labels=rng.integers(0, len(CLASSES), objects),
                iscrowd=np.zeros(objects, bool),
                segmentations=segmentations,
            )
        )
    return Records(samples, CLASSES)


def _peak_rss_mib(who: int = resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # Linux: KiB


class _Repeated(torch.utils.data.Dataset):
    """``dataset``'s samples ``times`` over (fresh augmentation each time)."""

    def __init__(self, dataset: RecordsDataset, times: int) -> None:
        self.dataset, self.times = dataset, times

    def __len__(self) -> int:
        return len(self.dataset) * self.times

    def __getitem__(self, index: int):
        return self.dataset[index % len(self.dataset)]


def _mask_bytes(masks: torch.Tensor | CroppedMasks) -> int:
    if isinstance(masks, CroppedMasks):
        return masks.nbytes
    return masks.numel() * masks.element_size()


def _mask_pixels(masks: torch.Tensor | CroppedMasks) -> int:
    return int((masks.data if isinstance(masks, CroppedMasks) else masks).sum())


def _with_workers(
    dataset: torch.utils.data.Dataset, collate: Collate, workers: int, batch: int
) -> None:
    """Peak RSS of the main process and of the largest worker over ``4 * workers`` batches."""
    rss_before = _peak_rss_mib()
    print(f"main process peak RSS before the loader: {rss_before:.0f} MiB")
    loader = torch.utils.data.DataLoader(
        _Repeated(dataset, 4 * workers), batch_size=batch, num_workers=workers, collate_fn=collate
    )
    shm_before, shm_peak, count = _shm_used_mib(), 0.0, 0
    start = time.perf_counter()
    for images, targets in loader:
        # read every pixel, as training does, so the shared pages count in this process
        float(images.sum()) + sum(_mask_pixels(t.masks) for t in targets)
        shm_peak = max(shm_peak, _shm_used_mib() - shm_before)
        count += 1
    seconds = time.perf_counter() - start
    del loader
    print(
        f"{workers} workers, {count} batches in {seconds:.1f} s: main peak RSS "
        f"{_peak_rss_mib():.0f} MiB (+{_peak_rss_mib() - rss_before:.0f}), largest worker "
        f"{_peak_rss_mib(resource.RUSAGE_CHILDREN):.0f} MiB, /dev/shm in use up to "
        f"+{shm_peak:.0f} MiB"
    )


def _shm_used_mib() -> float:
    return shutil.disk_usage("/dev/shm").used / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--objects", type=int, default=50)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--compact", action="store_true", help="CroppedMasks in the targets")
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = load_config(CONFIG, [f"data.image_size={args.size}"])
    records = _records(args.images, args.objects, 560, 640)
    transform = build_transform(config.data, "detect", True, 0, compact_masks=args.compact)
    dataset = RecordsDataset(records, transform, "detect", True)
    collate = Collate(config.data.mean, config.data.std)
    dataset[0]  # imports and first-call caches outside the measurement
    if args.workers:
        _with_workers(dataset, collate, args.workers, args.images)
        return
    rss_before = _peak_rss_mib()
    tracemalloc.start()
    start = time.perf_counter()
    images, targets = collate([dataset[i] for i in range(len(dataset))])
    seconds = time.perf_counter() - start
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss_after = _peak_rss_mib()
    mask_bytes = sum(_mask_bytes(t.masks) for t in targets)
    kind = type(targets[0].masks).__name__
    print(f"cpu: {cpu_model()}, torch {torch.__version__}")
    print(
        f"{args.images} images at {args.size} px, {args.objects} masks each: batch "
        f"{tuple(images.shape)}, masks {kind} of {len(targets[0].masks)} masks"
    )
    print(f"batch built in {seconds:.2f} s")
    print(f"target masks in the batch: {mask_bytes / 2**20:.1f} MiB")
    print(f"tracemalloc peak (numpy/Python) during the batch: {traced_peak / 2**20:.1f} MiB")
    print(
        f"peak RSS: {rss_before:.0f} MiB before, {rss_after:.0f} MiB after "
        f"(+{rss_after - rss_before:.0f} MiB)"
    )


if __name__ == "__main__":
    main()
