"""The ``cvkit`` command line: ``cvkit train | eval | predict | export | serve | data ...``.

Argument parsing imports nothing heavy, so ``cvkit --help`` answers at once. Each subcommand
names its handler as ``"module:function"``; the module (and torch with it) is imported only
when that command runs. A handler takes the parsed arguments and returns the exit code.
Commands whose implementation has not landed yet say so and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from cvkit import __version__
from cvkit.errors import CvkitError

EXIT_USAGE = 2

# Handler of each command, or the issue that will build it while it is not built yet.
HANDLERS: dict[str, str] = {
    "train": "cvkit.engine.commands:train",
    "eval": "cvkit.engine.commands:evaluate",
    "export": "cvkit.export.commands:run_export",
    "data check": "cvkit.data.commands:check",
    "data convert": "cvkit.data.commands:convert",
    "data synth": "cvkit.data.commands:synth",
    "predict": "cvkit.engine.predict:run_predict",
}
NOT_BUILT: dict[str, str] = {
    "serve": "the HTTP serving issue",
}


def _add_config_args(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("--cfg", required=required, help="YAML config file (see configs/)")
    parser.add_argument(
        "--set",
        dest="overrides",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="override config values, e.g. --set train.epochs=3 model.backbone=resnet18",
    )


def _add_dataset_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "path",
        help="dataset: a COCO .json, a YOLO data .yaml, or a Pascal VOC folder",
    )
    parser.add_argument(
        "--images", help="COCO only: image folder (default: images/ or the JSON's folder)"
    )
    parser.add_argument("--split", help="YOLO only: which split of the data file (train or val)")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser; cheap to build (no torch import)."""
    parser = argparse.ArgumentParser(
        prog="cvkit",
        description="Object detection and semantic segmentation on PyTorch, from data to a "
        "served ONNX model.",
    )
    parser.add_argument("--version", action="version", version=f"cvkit {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    train = commands.add_parser("train", help="train a model from a config")
    _add_config_args(train)
    train.add_argument("--out", help="run folder (default: runs/<task>/<name>/)")
    train.add_argument("--resume", metavar="CKPT", help="continue from a last.pt checkpoint")
    train.add_argument("--json", metavar="PATH", help="write the final metrics as JSON here")

    evaluate = commands.add_parser("eval", help="evaluate weights on the config's val split")
    _add_config_args(evaluate)
    evaluate.add_argument("--weights", required=True, help="checkpoint (.pt)")
    evaluate.add_argument("--json", metavar="PATH", help="write the metrics as JSON here")

    predict = commands.add_parser("predict", help="run a model on images and draw the results")
    predict.add_argument("source", nargs="+", help="image files or folders")
    predict.add_argument("--weights", required=True, help="checkpoint (.pt) or exported .onnx")
    predict.add_argument("--out", default="runs/predict", help="output folder for PNGs and JSON")
    predict.add_argument(
        "--score-threshold", type=float, default=None, help="minimum score to keep (default 0.3)"
    )

    export = commands.add_parser("export", help="export a checkpoint to ONNX")
    export.add_argument("--weights", required=True, help="checkpoint (.pt)")
    export.add_argument("--format", choices=["onnx"], default="onnx")
    export.add_argument("--out", help="output file (default: next to the weights)")
    export.add_argument("--dynamic", action="store_true", help="dynamic batch size")
    export.add_argument(
        "--nms", action=argparse.BooleanOptionalAction, default=True, help="NMS in the graph"
    )
    export.add_argument(
        "--nms-method",
        choices=["hard", "soft", "diou"],
        default="hard",
        help="the graph's NMS: hard, Gaussian soft-NMS or DIoU-NMS (with --nms)",
    )
    export.add_argument("--half", action="store_true", help="float16 weights (GPU inference)")
    export.add_argument("--opset", type=int, default=None, help="ONNX opset version")
    export.add_argument("--simplify", action="store_true", help="simplify the graph with onnxslim")

    serve = commands.add_parser("serve", help="serve an exported .onnx model over HTTP")
    serve.add_argument("model", help="exported .onnx file")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)

    data = commands.add_parser("data", help="dataset tools: check, convert, synth")
    data_commands = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    check = data_commands.add_parser("check", help="validate a dataset and report every problem")
    _add_dataset_args(check)
    check.add_argument("--show", type=int, default=0, metavar="N", help="draw N samples to PNGs")
    check.add_argument("--show-dir", default="runs/data_check", help="folder for --show PNGs")
    convert = data_commands.add_parser("convert", help="convert between COCO, YOLO and VOC")
    _add_dataset_args(convert)
    convert.add_argument("--to", required=True, choices=["coco", "yolo", "voc"])
    convert.add_argument("--out", required=True, help="output folder")
    synth = data_commands.add_parser("synth", help="write the built-in synthetic dataset")
    synth.add_argument("--out", required=True, help="output folder")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--num-train", type=int, help="train images (default 600)")
    synth.add_argument("--num-val", type=int, help="val images (default 150)")
    synth.add_argument("--image-size", type=int, help="image side in pixels (default 160)")
    return parser


def _command_name(args: argparse.Namespace) -> str:
    sub = getattr(args, "data_command", None)
    return f"{args.command} {sub}" if sub else args.command


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the command; returns the process exit code."""
    args = build_parser().parse_args(argv)
    name = _command_name(args)
    if name not in HANDLERS:
        print(f"cvkit {name}: not built yet (arrives with {NOT_BUILT[name]})", file=sys.stderr)
        return EXIT_USAGE
    module_name, func_name = HANDLERS[name].split(":")
    handler = getattr(importlib.import_module(module_name), func_name)
    try:
        return int(handler(args) or 0)
    except CvkitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
