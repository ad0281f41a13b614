"""cvkit YOLO vs Ultralytics YOLOv8n (from scratch) vs cvkit SSD at the same wall-clock budget.

Same machine, same data, same input size, same training budget (``--minutes``, default 10),
one after the other:

- data: a 320-px variant of the synthetic shapes with many small objects (:data:`VARIANT`,
  600 train / 150 val images), written once as COCO for cvkit and as YOLO files for
  Ultralytics (:func:`cvkit.data.formats.yolo.write_yolo`, the same images and boxes);
- cvkit: ``cvkit.train(configs/yolo.yaml | configs/ssd.yaml)`` with ``train.time`` and the
  variant at ``data.image_size = 320``;
- Ultralytics: ``YOLO("yolov8n.yaml").train(time=...)``, random initial weights, its default
  recipe, run by another Python: ``--ultralytics-python``, else a venv the script makes once
  in ``.venv-peers/ultralytics`` (:func:`peer_python`: ultralytics 8.4.190 and the few
  packages it needs beyond cvkit's, over this venv's torch): a peer for this benchmark only,
  never a cvkit dependency.

Each trained model predicts the val images (score >= 0.001, at most 100 per image) and one
COCO evaluation (:func:`cvkit.eval.coco.evaluate_coco`) scores all three against the same
ground truth. Speed is training images per second of the budget (validation included).
Writes ``benchmarks/results/yolo.md``.

    python benchmarks/bench_yolo.py [--ultralytics-python PYTHON] [--minutes 10]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import sysconfig
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from machine import cpu_model, uptime, vector_isa

import cvkit
from cvkit.config import load_config
from cvkit.data.formats.yolo import write_yolo
from cvkit.data.loader import build_dataset
from cvkit.eval.coco import detections_to_coco, evaluate_coco

ROOT = Path(__file__).resolve().parents[1]
SIZE = 320
VARIANT = {
    "data.synthetic.image_size": SIZE,
    "data.synthetic.objects": [4, 16],
    "data.synthetic.object_size": [0.04, 0.16],
    "data.image_size": SIZE,
}
"""The small-object variant: 4-16 shapes tried per 320-px image, 13-51 px across."""
PEER_PACKAGES = (
    "ultralytics==8.4.190",
    "ultralytics-thop",
    "polars",
    "py-cpuinfo",
    "ultralytics-platform",
    "nvidia-ml-py",
)
"""What :func:`peer_python` installs (without dependencies: the rest comes from cvkit's venv)."""
SCORE = 0.001
MAX_DET = 100
NOTES = (
    "Each model runs its own defaults, as a user would: Ultralytics validates after every "
    "epoch, loads with its default loader workers and picks its optimizer (`optimizer=auto`: "
    "AdamW for a short run) and warm-up itself; cvkit validates every `train.val_every` "
    "epochs and on the last one. `configs/ssd.yaml`'s augmentation crops 128 px "
    "(`RandomSizedBBoxSafeCrop`) before the fit step resizes to 320, so 30% of its samples "
    "are upsampled crops here."
)
DEFAULT_HEADING = "## Default config: `cvkit train --cfg configs/yolo.yaml`"
"""The results file's section measured apart (kept when this script rewrites the file)."""

ULTRALYTICS = """
import json, sys, time
from ultralytics import YOLO

job = json.loads(sys.argv[1])
model = YOLO("yolov8n.yaml")
start = time.perf_counter()
model.train(data=job["data"], imgsz=job["size"], epochs=1000, time=job["hours"], batch=16,
            device="cpu", pretrained=False, amp=False, plots=False, project=job["folder"],
            name="v8n", exist_ok=True, seed=0, verbose=False)
seconds = time.perf_counter() - start
epochs = model.trainer.epoch + 1
best = YOLO(str(model.trainer.best))
detections = []
for path in job["images"]:
    found = best.predict(path, imgsz=job["size"], conf=job["score"], iou=0.7,
                         max_det=job["max_det"], device="cpu", verbose=False)[0].boxes
    detections.append({"boxes": found.xyxy.tolist(), "scores": found.conf.tolist(),
                       "labels": [int(c) for c in found.cls.tolist()]})
json.dump({"detections": detections, "epochs": epochs, "seconds": seconds}, open(job["out"], "w"))
"""


def peer_python(folder: Path = ROOT / ".venv-peers" / "ultralytics") -> str:
    """A Python with Ultralytics: a venv in ``folder`` (made on first use) whose own packages
    are ultralytics and what it needs beyond this environment's, which it sees through a
    ``.pth`` file (the same torch, numpy and OpenCV; its pip never touches this venv)."""
    python = folder / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
        own = subprocess.run(
            [str(python), "-c", "import site; print(site.getsitepackages()[0])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        shared = sysconfig.get_paths()["purelib"]
        (Path(own) / "cvkit-env.pth").write_text(shared + "\n", encoding="utf-8")
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "--no-deps", *PEER_PACKAGES], check=True
        )
    return str(python)


def settings(extra: dict | None = None) -> dict:
    """``cvkit.train`` keywords for the variant (``extra`` on top)."""
    return {**VARIANT, "eval.score_threshold": SCORE, "eval.max_det": MAX_DET, **(extra or {})}


def train_cvkit(name: str, minutes: float, folder: Path) -> dict:
    """Train ``configs/<name>.yaml`` on the variant for ``minutes``: the best checkpoint's val
    mAP (cvkit's COCO evaluation of its detections), epochs and seconds."""
    start = time.perf_counter()
    run = cvkit.train(
        ROOT / "configs" / f"{name}.yaml",
        out=folder / name,
        **settings({"train.time": minutes, "train.plots": False, "export.after_train": False}),
    )
    return {
        "mAP": run.metrics["mAP"],
        "mAP50": run.metrics["mAP50"],
        "epochs": run.epochs,
        "seconds": time.perf_counter() - start,
    }


def train_ultralytics(python: str, data_yaml: Path, val_set, minutes: float, folder: Path) -> dict:
    """Train YOLOv8n from scratch with Ultralytics for ``minutes`` in ``python``; its best
    checkpoint's val detections scored by the same COCO evaluation as cvkit's."""
    out = folder / "ultralytics.json"
    images = data_yaml.parent / "images" / "val"
    samples = val_set.records.samples
    job = {
        "data": str(data_yaml),
        "size": SIZE,
        "hours": minutes / 60,
        "folder": str(folder / "ultralytics"),
        "images": [str(images / sample.file_name) for sample in samples],
        "score": SCORE,
        "max_det": MAX_DET,
        "out": str(out),
    }
    subprocess.run([python, "-c", ULTRALYTICS, json.dumps(job)], check=True, cwd=folder)
    result = json.loads(out.read_text())
    detections = [
        {
            key: np.asarray(value, np.float32).reshape(-1, 4)
            if key == "boxes"
            else np.asarray(value)
            for key, value in found.items()
        }
        for found in result["detections"]
    ]
    category_ids = val_set.category_ids or list(range(1, len(val_set.classes) + 1))
    records = detections_to_coco(detections, [s.image_id for s in samples], category_ids)
    metrics = evaluate_coco(val_set.coco_ground_truth(), records, val_set.classes)
    return {
        "mAP": metrics.AP,
        "mAP50": metrics.AP50,
        "epochs": result["epochs"],
        "seconds": result["seconds"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--ultralytics-python", help="a Python with ultralytics (default: make one, peer_python)"
    )
    parser.add_argument("--minutes", type=float, default=10.0, help="training budget per model")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "yolo.md")
    args = parser.parse_args()
    peer = args.ultralytics_python or peer_python()
    load_before = uptime()
    started = datetime.now(UTC)
    config = load_config(overrides=[f"{key}={json.dumps(value)}" for key, value in VARIANT.items()])
    train_set = build_dataset(config.data, "train", "detect")
    val_set = build_dataset(config.data, "val", "detect")
    boxes = sum(len(sample.boxes) for sample in train_set.records.samples)
    sides = np.concatenate(
        [sample.boxes[:, 2:] - sample.boxes[:, :2] for sample in train_set.records.samples]
    )
    results = {}
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        data_yaml = write_yolo(train_set.records, folder / "yolo", "train")
        write_yolo(val_set.records, folder / "yolo", "val")
        results["cvkit YOLO (configs/yolo.yaml)"] = train_cvkit("yolo", args.minutes, folder)
        print(results, flush=True)
        results["Ultralytics YOLOv8n, from scratch"] = train_ultralytics(
            peer, data_yaml, val_set, args.minutes, folder
        )
        print(results, flush=True)
        results["cvkit SSD (configs/ssd.yaml)"] = train_cvkit("ssd", args.minutes, folder)
        print(results, flush=True)
    version = subprocess.run(
        [peer, "-c", "import ultralytics; print(ultralytics.__version__)"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    ours, theirs, ssd = results.values()
    ratio = ours["mAP50"] / theirs["mAP50"] if theirs["mAP50"] > 0 else float("inf")
    met = ratio >= 1.5 and ours["mAP50"] > ssd["mAP50"]
    count = len(train_set)
    lines = [
        f"# YOLO: cvkit vs Ultralytics YOLOv8n vs cvkit SSD, {args.minutes:g} minutes each",
        "",
        f"Written by `benchmarks/bench_yolo.py`, {started:%Y-%m-%d %H:%M}–"
        f"{datetime.now(UTC):%H:%M} UTC on {cpu_model()} ({vector_isa()}), "
        f"{torch.get_num_threads()} torch threads, torch {torch.__version__}, ultralytics "
        f"{version} (its own venv, benchmark only). No GPU.",
        f"Load before: `{load_before}`; after: `{uptime()}`. The three trainings ran one after "
        "the other, alone.",
        "",
        f"Data: the synthetic shapes at {SIZE} px with many small objects "
        f"(`data.synthetic.objects: {VARIANT['data.synthetic.objects']}`, `object_size: "
        f"{VARIANT['data.synthetic.object_size']}`): {count} train images with {boxes} boxes "
        f"(median side {np.median(sides):.0f} px), {len(val_set)} val images; input {SIZE} px "
        "for every model. Each trains for the same wall clock (cvkit `train.time`, "
        "Ultralytics `time=`), from random weights, with its own default recipe; its best "
        "checkpoint's val detections (score >= 0.001, <= 100 per image) are scored by the "
        "same COCO evaluation.",
        "",
        "| model | epochs in the budget | train images/s (budget wall clock) | mAP@.5 | "
        "mAP@[.5:.95] |",
        "|---|---|---|---|---|",
    ]
    for name, result in results.items():
        rate = result["epochs"] * count / result["seconds"]
        lines.append(
            f"| {name} | {result['epochs']} | {rate:.1f} | {result['mAP50']:.4f} | "
            f"{result['mAP']:.4f} |"
        )
    lines += [
        "",
        f"cvkit YOLO / YOLOv8n mAP@.5: **{ratio:.2f}x** (target ≥ 1.5x, and above cvkit SSD: "
        f"{ours['mAP50']:.4f} vs {ssd['mAP50']:.4f}): {'met' if met else 'NOT met'} in this run.",
        "",
        NOTES,
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    previous = args.out.read_text(encoding="utf-8") if args.out.exists() else ""
    kept = previous.split(DEFAULT_HEADING, 1)
    tail = DEFAULT_HEADING + kept[1] if len(kept) > 1 else ""
    args.out.write_text("\n".join(lines) + "\n" + ("\n" + tail if tail else ""), encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
