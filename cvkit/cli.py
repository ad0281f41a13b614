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
    "serve": "cvkit.serve.server:run_serve",
    "tune": "cvkit.engine.tune:run_tune",
    "viz filters": "cvkit.insight.commands:filters",
    "viz features": "cvkit.insight.commands:features",
    "viz cam": "cvkit.insight.commands:cam",
    "style": "cvkit.style.commands:run_style",
}
# ``cvkit predict MODEL.onnx SOURCE`` or ``--engine``: resumable rows (cvkit.scale)
SCALE_PREDICT = "cvkit.scale.commands:run_predict"
NOT_BUILT: dict[str, str] = {}


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
    parser.add_argument(
        "--split",
        help="YOLO: a split of the data file (train, val or test); VOC: an ImageSets list "
        "(default: check reads every image, convert the train split)",
    )


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
    evaluate.add_argument("--weights", required=True, help="checkpoint (.pt) or exported .onnx")
    evaluate.add_argument("--json", metavar="PATH", help="write the metrics as JSON here")
    evaluate.add_argument(
        "--plots", metavar="DIR", help="detectors: plot folder (default: <run>/plots/eval_<W>/)"
    )
    evaluate.add_argument("--no-plots", action="store_true", help="write no plots")
    evaluate.add_argument(
        "--detections",
        metavar="PATH",
        help="detectors: write the detections as a COCO results JSON (dataset's image and "
        "category ids, bbox [x, y, w, h], score, RLE segmentation for masks)",
    )

    predict = commands.add_parser(
        "predict",
        help="run a model on images: drawings + JSON, or rows at scale (--engine local|ray)",
        description="cvkit predict --weights CKPT|ONNX SOURCE... draws the results and writes "
        "predictions.json; cvkit predict MODEL.onnx SOURCE... --out DIR (or any --engine) "
        "writes Parquet/JSONL rows, resumable, in this process (local) or on Ray Data (ray).",
    )
    predict.add_argument(
        "source", nargs="+", help="[MODEL.onnx] then image files, folders, globs, list files, URIs"
    )
    predict.add_argument("--weights", help="checkpoint (.pt) or exported .onnx")
    predict.add_argument("--out", default="runs/predict", help="output folder")
    predict.add_argument(
        "--score-threshold", type=float, default=None, help="minimum score to keep (default 0.3)"
    )
    predict.add_argument(
        "--engine", choices=["local", "ray"], help="rows at scale: this process or Ray Data"
    )
    predict.add_argument("--address", help="ray: cluster address (auto, host:port, ray://...)")
    predict.add_argument("--actors", type=int, default=1, help="ray: actors (model copies)")
    predict.add_argument("--batch", type=int, default=16, help="images per model call")
    predict.add_argument("--providers", default="auto", help="rows: auto, cpu, cuda or tensorrt")
    predict.add_argument(
        "--format", choices=["parquet", "jsonl"], default="parquet", help="row files' format"
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
    export.add_argument("--int8", action="store_true", help="int8 quantization (onnxruntime)")
    export.add_argument(
        "--int8-mode",
        choices=["static", "dynamic"],
        default="static",
        help="static: calibrated QDQ, per-channel weights; dynamic: weights only",
    )
    export.add_argument(
        "--calib",
        default="train",
        metavar="DATA",
        help="int8 calibration: train or val (the config's split), or image files/folders",
    )
    export.add_argument("--calib-images", type=int, default=200, help="calibration image count")
    export.add_argument(
        "--max-drop",
        type=float,
        metavar="D",
        help="--half/--int8: refuse when the val metric drops by more (0.01 = one point)",
    )
    export.add_argument("--opset", type=int, default=None, help="ONNX opset version")
    export.add_argument("--simplify", action="store_true", help="simplify the graph with onnxslim")

    _add_serve_parser(commands)

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
    _add_tune_parser(commands)
    _add_viz_parser(commands)
    _add_style_parser(commands)
    return parser


def _add_style_parser(commands: argparse._SubParsersAction) -> None:
    style = commands.add_parser("style", help="Gatys style transfer of one image")
    style.add_argument("--content", required=True, help="content image")
    style.add_argument("--style", required=True, action="append", help="style image (repeatable)")
    style.add_argument("--style-weights", type=float, nargs="+", help="blend, one per --style")
    style.add_argument("--vgg", help="torchvision vgg16/vgg19 .pth (default: random weights)")
    style.add_argument("--out", required=True, help="output image (.png, .jpg)")
    style.add_argument("--size", type=int, default=512, help="longer side in pixels")
    style.add_argument("--steps", type=int, default=300, help="optimiser steps per level")
    style.add_argument("--optimizer", choices=["lbfgs", "adam"], default="lbfgs")
    style.add_argument("--lr", type=float, help="step size (lbfgs 1.0, adam 0.02)")
    style.add_argument("--levels", type=int, default=1, help="coarse-to-fine levels")
    style.add_argument("--init", choices=["content", "noise"], default="content")
    style.add_argument("--content-weight", type=float, default=1.0)
    style.add_argument("--style-weight", type=float, default=1e4)
    style.add_argument("--tv-weight", type=float, default=0.0)
    style.add_argument("--preserve-colour", action="store_true", help="keep the content colours")
    style.add_argument("--save-every", type=int, default=0, help="intermediate PNGs every N steps")
    style.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")


def _workers(value: str) -> int | str:
    """``--workers``: ``auto`` or a positive number."""
    if value == "auto":
        return value
    if value.isdigit() and int(value) >= 1:
        return int(value)
    raise argparse.ArgumentTypeError(f"expected auto or a number of processes, got {value!r}")


def _add_serve_parser(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser("serve", help="serve exported .onnx models over HTTP")
    serve.add_argument("model", nargs="+", help=".onnx files or folders of them (name = stem)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--workers",
        type=_workers,
        default="auto",
        help="uvicorn worker processes (auto: one per core up to 4 on the CPU, 1 on a GPU)",
    )
    serve.add_argument("--max-batch", type=int, default=16, help="most images per session.run")
    serve.add_argument(
        "--max-delay-ms",
        type=float,
        default=5.0,
        help="longest wait for a batch to fill (image requests: only while others are arriving)",
    )
    serve.add_argument("--max-upload-mb", type=float, default=16.0, help="larger bodies get 413")
    serve.add_argument("--timeout", type=float, default=30.0, help="seconds before a 504")
    serve.add_argument("--providers", default="auto", help="auto, cpu, cuda or tensorrt")
    serve.add_argument("--threads", type=int, help="CPU intra-op threads per model")
    serve.add_argument(
        "--spin",
        action="store_true",
        help="let onnxruntime's threads spin-wait between runs (off: they leave the cores to "
        "the HTTP work)",
    )


def _add_tune_parser(commands: argparse._SubParsersAction) -> None:
    tune = commands.add_parser("tune", help="search hyper-parameters with Optuna")
    _add_config_args(tune)
    tune.add_argument("--space", required=True, help="search-space YAML (configs/tune_space.yaml)")
    tune.add_argument("--trials", type=int, required=True, help="completed + pruned trials wanted")
    tune.add_argument("--time", type=float, metavar="M", help="start no trial after M minutes")
    tune.add_argument("--out", help="study folder (default: runs/tune/<cfg name>/); resumes")


def _add_viz_parser(commands: argparse._SubParsersAction) -> None:
    viz = commands.add_parser("viz", help="look inside a model: filters, feature maps, CAMs")
    actions = viz.add_subparsers(dest="viz_command", metavar="ACTION", required=True)
    filters = actions.add_parser("filters", help="a convolution's filters as an image grid")
    filters.add_argument("--layer", help="Conv2d module name (default: the first convolution)")
    features = actions.add_parser("features", help="feature maps of chosen layers on an image")
    features.add_argument("image", help="image file")
    features.add_argument("--layers", nargs="+", help="module names (default: backbone stages)")
    features.add_argument("--channels", type=int, default=16, help="maps shown per layer")
    cam = actions.add_parser("cam", help="class activation map (Grad-CAM ...) on an image")
    cam.add_argument("image", help="image file")
    target = cam.add_mutually_exclusive_group()
    target.add_argument("--class", dest="class_name", help="class to explain (default: top)")
    target.add_argument("--box", type=int, help="detectors: explain detection K (0: top score)")
    cam.add_argument("--method", default="gradcam", help="gradcam, hirescam, gradcam++, ...")
    cam.add_argument("--layer", nargs="+", help="target module names (default: backbone stages)")
    cam.add_argument(
        "--score-threshold", type=float, default=0.3, help="detectors: detections kept"
    )
    for action in (filters, features, cam):
        action.add_argument("--weights", required=True, help="checkpoint (.pt)")
        action.add_argument("--out", default="runs/viz", help="output folder for the PNGs")


def _command_name(args: argparse.Namespace) -> str:
    sub = getattr(args, "data_command", None) or getattr(args, "viz_command", None)
    return f"{args.command} {sub}" if sub else args.command


def _predict_handler(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """``cvkit predict MODEL SOURCE...`` is ``--weights MODEL SOURCE...``; the batch handler
    (:mod:`cvkit.scale`) runs a positional ``.onnx`` model or any ``--engine``."""
    positional = args.weights is None
    if positional:
        if len(args.source) < 2:
            parser.error("predict: give --weights MODEL, or MODEL.onnx before the sources")
        args.weights, args.source = args.source[0], args.source[1:]
    if args.engine is not None or (positional and args.weights.lower().endswith(".onnx")):
        return SCALE_PREDICT
    return HANDLERS["predict"]


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the command; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    name = _command_name(args)
    if name not in HANDLERS:
        print(f"cvkit {name}: not built yet (arrives with {NOT_BUILT[name]})", file=sys.stderr)
        return EXIT_USAGE
    handler_path = _predict_handler(parser, args) if name == "predict" else HANDLERS[name]
    module_name, func_name = handler_path.split(":")
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
