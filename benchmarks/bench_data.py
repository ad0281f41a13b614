"""cvkit's detection data pipeline against an equivalent torchvision.transforms.v2 pipeline.

Both read the same JPEG images and COCO boxes (the synthetic train split, generated once into
a temporary folder) and produce the same batch: ``uint8`` images letterboxed to ``--size``,
boxes in input pixels, normalized in the same collate function, with ``--workers`` loader
workers (one thread each) and batch size ``--batch``.

- cvkit: ``build_dataset``/``build_loader`` with the detection preset (albumentations:
  ``Affine`` zoom-out p=0.3, ``RandomSizedBBoxSafeCrop`` p=0.4, ``HorizontalFlip``,
  ``ColorJitter`` p=0.8; OpenCV decode; letterbox).
- torchvision: ``decode_jpeg`` then v2 ``RandomAffine`` zoom-out p=0.3, ``RandomIoUCrop`` +
  ``Resize`` p=0.4, ``RandomHorizontalFlip``, ``ColorJitter`` p=0.8, ``Resize(max_size)`` +
  bottom/right pad (letterbox), ``SanitizeBoundingBoxes``.

Each repeat times one full pass (worker start-up included) of each pipeline, alternating the
two so load from other processes hits both alike; the table reports the median images/s.
Writes ``benchmarks/results/data.md``.

    python benchmarks/bench_data.py [--images 600] [--size 160] [--workers 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import albumentations
import torch
import torchvision
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.io import decode_jpeg, read_file
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from cvkit.config import load_config
from cvkit.data import build_dataset, build_loader
from cvkit.data.loader import Collate
from cvkit.data.records import Records
from cvkit.data.synthetic import annotation_path, write_synthetic

ROOT = Path(__file__).resolve().parents[1]
TARGET = 1.0


class LetterboxPad(torch.nn.Module):
    """Pad an image (and its boxes) at the bottom/right to ``size × size``."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, image, target):
        height, width = image.shape[-2:]
        padding = [0, 0, self.size - width, self.size - height]
        target = {**target, "boxes": F.pad(target["boxes"], padding)}
        return F.pad(image, padding), target


class TorchvisionDetection(Dataset):
    """The same records through torchvision's decoder and v2 transforms."""

    def __init__(self, records: Records, size: int) -> None:
        self.records = records
        self.transform = v2.Compose(
            [
                v2.RandomApply([v2.RandomAffine(degrees=0, scale=(0.5, 1.0))], p=0.3),
                v2.RandomApply([v2.RandomIoUCrop(), v2.Resize((size, size))], p=0.4),
                v2.RandomHorizontalFlip(0.5),
                v2.RandomApply([v2.ColorJitter(0.3, 0.3, 0.3, 0.03)], p=0.8),
                v2.Resize(size=None, max_size=size),
                LetterboxPad(size),
                v2.SanitizeBoundingBoxes(),
            ]
        )

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int):
        sample = self.records.samples[index]
        image = tv_tensors.Image(decode_jpeg(read_file(str(sample.path))))
        boxes = tv_tensors.BoundingBoxes(
            torch.from_numpy(sample.boxes), format="XYXY", canvas_size=image.shape[-2:]
        )
        target = {"boxes": boxes, "labels": torch.from_numpy(sample.labels)}
        image, target = self.transform(image, target)
        return image.as_subclass(torch.Tensor), target


def images_per_second(loader: DataLoader) -> float:
    start = time.perf_counter()
    count = sum(len(images) for images, _ in loader)
    return count / (time.perf_counter() - start)


def run(
    num_images: int, size: int, workers: int, batch: int, repeats: int, out: Path
) -> dict[str, float]:
    """Time both pipelines and write the markdown table to ``out``; returns the medians."""
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        root = write_synthetic(Path(tmp), num_images, 1, image_size=160, seed=0)
        config = load_config(
            overrides=[
                f"data.train.path={annotation_path(root, 'train')}",
                f"data.image_size={size}",
                f"data.batch_size={batch}",
                f"data.workers={workers}",
                "data.pin_memory=false",
            ]
        )
        ours = build_dataset(config.data, "train", "detect")
        ours_loader = build_loader(ours, config.data, train=True)
        theirs_loader = DataLoader(
            TorchvisionDetection(ours.records, size),
            batch_size=batch,
            shuffle=True,
            num_workers=workers,
            collate_fn=Collate(config.data.mean, config.data.std),
            drop_last=True,
        )
        timings: dict[str, list[float]] = {"cvkit": [], "torchvision": []}
        for _ in range(repeats):
            timings["cvkit"].append(images_per_second(ours_loader))
            timings["torchvision"].append(images_per_second(theirs_loader))
    medians = {name: statistics.median(values) for name, values in timings.items()}
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    ratio = medians["cvkit"] / medians["torchvision"]
    verdict = "meets" if ratio >= TARGET else "misses"
    report = f"""# Data pipeline: cvkit detection preset vs torchvision.transforms.v2

{datetime.now(UTC):%Y-%m-%d %H:%M} UTC · {platform.processor() or platform.machine()}, \
torch {torch.__version__}, torchvision {torchvision.__version__}, \
albumentations {albumentations.__version__}, {os.cpu_count()} CPUs (load average at the end: \
{load})

Load (JPEG decode) + augment + letterbox to {size}×{size} + collate/normalize, {num_images} \
synthetic 160×160 JPEGs, batch {batch}, {workers} workers (1 thread each), {repeats} passes \
each (alternating, worker start-up included), median.

| pipeline | images/s | passes (images/s) |
|---|---:|---|
| cvkit (albumentations + OpenCV) | {medians["cvkit"]:.0f} | \
{", ".join(f"{v:.0f}" for v in timings["cvkit"])} |
| torchvision.transforms.v2 | {medians["torchvision"]:.0f} | \
{", ".join(f"{v:.0f}" for v in timings["torchvision"])} |

cvkit / torchvision = **{ratio:.2f}x** (target ≥ {TARGET:.1f}x: {verdict}).
"""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report, encoding="utf-8")
    return medians


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "data.md")
    args = parser.parse_args(argv)
    run(args.images, args.size, args.workers, args.batch, args.repeats, args.out)
    print(args.out.read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
