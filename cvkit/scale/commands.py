"""``cvkit predict MODEL.onnx SOURCE --out DIR [--engine local|ray]``: rows, not drawings.

The handler of the batch form of ``cvkit predict`` (see :mod:`cvkit.cli`): it runs
:func:`cvkit.scale.engine.predict_files` and prints what was done. Torch is never imported.
"""

from __future__ import annotations

import argparse

from cvkit.errors import InputError
from cvkit.scale.engine import PredictOptions, predict_files


def run_predict(args: argparse.Namespace) -> int:
    """Run the batch prediction ``args`` describe; returns the exit code (0; 1 when every
    image of the run failed).

    Raises:
        InputError: the model is not an exported ``.onnx`` file.
    """
    if not str(args.weights).lower().endswith(".onnx"):
        raise InputError(
            f"{args.weights}: --engine runs exported models; export it first "
            "(cvkit export --weights CKPT) and pass the .onnx"
        )
    options = PredictOptions(
        providers=args.providers,
        batch_size=args.batch,
        score_threshold=args.score_threshold,
    )
    report = predict_files(
        args.source,
        args.weights,
        args.out,
        engine=args.engine or "local",
        options=options,
        output_format=args.format,
        address=args.address,
        actors=args.actors,
    )
    print(
        f"cvkit predict: {report.total} images, {report.skipped} already in {report.out}, "
        f"{report.processed} predicted ({report.errors} errors) in {report.seconds:.1f}s "
        f"({report.images_per_s:.1f} images/s), {len(report.files)} part files"
    )
    return 1 if report.processed and report.errors == report.processed else 0
