"""``cvkit export``: checkpoint → ``.onnx`` with metadata, checked against torch."""

from __future__ import annotations

import argparse
from pathlib import Path

from cvkit.config.export import ExportConfig
from cvkit.errors import ConfigError
from cvkit.export.onnx import ExportResult, export_model, metadata_from_config
from cvkit.logs import get_logger, setup_logging


def export_checkpoint(
    weights: str | Path, out: str | Path | None = None, options: ExportConfig | None = None
) -> ExportResult:
    """Rebuild the model saved in ``weights`` (a cvkit ``.pt``) and export it.

    Args:
        weights: checkpoint written by ``cvkit train``.
        out: output file; default: ``weights`` with the suffix ``.onnx``.
        options: export options; default: the checkpoint config's ``export:`` section.

    Raises:
        CheckpointError: unreadable checkpoint. ExportError: export or parity check failed.
    """
    from cvkit.config import Config
    from cvkit.engine.checkpoint import load_checkpoint
    from cvkit.models.loading import load_model

    checkpoint = load_checkpoint(weights)
    model = load_model(checkpoint, source=weights)
    config = Config.model_validate(checkpoint["config"])
    options = options or config.export
    metadata = metadata_from_config(
        config, list(checkpoint["classes"]), checkpoint.get("category_ids")
    )
    out = Path(out) if out else Path(weights).with_suffix(".onnx")
    return export_model(model, out, metadata, options)


def run_export(args: argparse.Namespace) -> int:
    """Handler of ``cvkit export`` (flags as defined in :mod:`cvkit.cli`)."""
    setup_logging()
    fields = {
        "dynamic": args.dynamic,
        "nms": args.nms_method if args.nms else False,
        "half": args.half,
        "simplify": args.simplify,
    }
    if args.opset is not None:
        fields["opset"] = args.opset
    if args.int8 or args.half:
        return _run_reduced(args, ExportConfig(**fields))
    if args.max_drop is not None:
        raise ConfigError("--max-drop: only --half and --int8 exports are scored and gated")
    result = export_checkpoint(args.weights, args.out, ExportConfig(**fields))
    differences = ", ".join(f"{name} {value:.2e}" for name, value in result.differences.items())
    get_logger("export").info("wrote %s (parity max differences: %s)", result.path, differences)
    print(result.path)
    return 0


def _run_reduced(args: argparse.Namespace, options: ExportConfig) -> int:
    """``--half`` / ``--int8``: export, score on the val split, gate on ``--max-drop``."""
    from cvkit.export.quantize import export_reduced

    result = export_reduced(
        args.weights,
        args.out,
        options,
        int8_mode=args.int8_mode if args.int8 else None,
        calib=args.calib,
        calib_images=args.calib_images,
        max_drop=args.max_drop,
    )
    get_logger("export").info(
        "wrote %s (%s; val %s %.4f, float %.4f)",
        result.path,
        result.precision,
        result.metric,
        result.value,
        result.float_value,
    )
    print(result.path)
    print(
        f"val {result.metric}: {result.value:.4f} ({result.precision}) vs "
        f"{result.float_value:.4f} (float)"
    )
    return 0
