"""Handlers of ``cvkit data check | convert | synth`` (see :mod:`cvkit.cli`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from cvkit.logs import get_logger

logger = get_logger("data")
EXIT_ERRORS = 1


def check(args: argparse.Namespace) -> int:
    """``cvkit data check PATH [--show N]``: print the report; exit 1 on errors, 0 otherwise."""
    from cvkit.data.check import check_dataset

    report, records = check_dataset(args.path, args.images, args.split)
    print(report.format())
    if args.show:
        from cvkit.data.visualize import draw_sample, save_png

        out = Path(args.show_dir)
        bad = report.bad_image_ids()
        for sample in records.samples[: args.show]:
            if sample.image_id in bad:
                continue
            name = f"{Path(sample.file_name).stem}.png"
            save_png(draw_sample(sample, records.classes), out / name)
        print(f"drew up to {args.show} samples into {out}/")
    return EXIT_ERRORS if report.errors else 0


def convert(args: argparse.Namespace) -> int:
    """``cvkit data convert SRC --to coco|yolo|voc --out DIR``."""
    from cvkit.data.convert import convert as run

    result = run(args.path, args.to, args.out, args.images, args.split)
    print(f"wrote {args.to} dataset: {result}")
    return 0


def synth(args: argparse.Namespace) -> int:
    """``cvkit data synth --out DIR [--seed S]``: write the synthetic COCO dataset."""
    from cvkit.config.data import SyntheticConfig
    from cvkit.data.synthetic import annotation_path, write_synthetic

    defaults = SyntheticConfig()
    out = write_synthetic(
        args.out,
        num_train=args.num_train or defaults.num_train,
        num_val=args.num_val or defaults.num_val,
        image_size=args.image_size or defaults.image_size,
        seed=args.seed,
    )
    print(f"wrote the synthetic dataset to {out} (train: {annotation_path(out, 'train')})")
    return 0
