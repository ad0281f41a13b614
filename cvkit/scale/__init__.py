"""Batch inference over many images with the torch-free runtime, in one process or on Ray.

``cvkit predict MODEL.onnx SOURCE --out results/ [--engine ray --actors N]`` and
:func:`predict_files` list the images, skip those already in ``results/``, predict the rest
with one :func:`cvkit.runtime.load_predictor` per worker and write Parquet (or JSONL) rows
(:mod:`cvkit.scale.rows`); bad images become error rows. :func:`predict_dataset` maps a Ray
Dataset the user already has. Nothing here imports torch; Ray is imported only by the ``ray``
engine (``pip install cvkit[ray]``).
"""

from cvkit.scale.engine import (
    EngineError,
    PredictOptions,
    ScaleReport,
    predict_dataset,
    predict_files,
)
from cvkit.scale.rows import decode_masks, encode_masks, row_format
from cvkit.scale.sources import list_sources
from cvkit.scale.store import OutputError, ResultStore

__all__ = [
    "EngineError",
    "OutputError",
    "PredictOptions",
    "ResultStore",
    "ScaleReport",
    "decode_masks",
    "encode_masks",
    "list_sources",
    "predict_dataset",
    "predict_files",
    "row_format",
]
