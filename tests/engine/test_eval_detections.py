"""``cvkit eval --detections PATH`` writes the detections it scored as a COCO results file: with
the dataset's own (non-contiguous) category ids and (non-consecutive) image ids, it loads into
pycocotools' ``COCO.loadRes`` against the ground-truth JSON, and ``COCOeval`` on it gives the
mAP ``cvkit eval`` reported, for a checkpoint and its ONNX export, boxes and masks alike."""

import contextlib
import io
import json
import math
from pathlib import Path

import pytest
from engine_toys import COCO_CATEGORY_IDS, renumber_coco
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from cvkit.cli import main
from cvkit.data.synthetic import annotation_path, write_synthetic
from cvkit.logs import setup_logging

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
STATS_KEYS = ("mAP", "mAP50", "mAP75", "mAP_small", "mAP_medium", "mAP_large")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """A small synthetic COCO set (8 images of 64 px, its train split) with renumbered ids; the
    tests train on it and score on it too, so that the tiny models reach an mAP above 0."""
    root = write_synthetic(tmp_path_factory.mktemp("coco"), num_train=8, num_val=1, image_size=64)
    renumber_coco(annotation_path(root, "train"))
    return root


def _settings(root: Path, tmp_path: Path) -> list[str]:
    return [
        f"data.train.path={annotation_path(root, 'train')}",
        f"data.train.images={root / 'images' / 'train'}",
        f"data.val.path={annotation_path(root, 'train')}",
        f"data.val.images={root / 'images' / 'train'}",
        "data.image_size=64",
        "data.batch_size=4",
        "data.workers=0",
        "data.mosaic=0.0",
        "data.augment=[]",
        "train.val_every=1",
        "train.threads=1",
        "export.after_train=true",
        "device=cpu",
    ]


def _cocoeval(ground_truth: Path, detections: Path, iou_type: str) -> list[float]:
    """pycocotools' 12 summary stats of the results file against the ground-truth file; for
    masks without the boxes, so that areas come from the masks (as Detectron2 does)."""
    results = json.loads(detections.read_text())
    if iou_type == "segm":
        results = [{k: v for k, v in r.items() if k != "bbox"} for r in results]
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO(str(ground_truth))
        evaluator = COCOeval(truth, truth.loadRes(results), iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return [float(value) for value in evaluator.stats]


def _assert_same_map(reported: dict, stats: list[float], prefix: str = "") -> None:
    for key, value in zip(STATS_KEYS, stats, strict=False):
        expected = reported[prefix + key]
        if value < 0:  # pycocotools' -1: no ground truth of that size
            assert expected is None or math.isnan(expected), key
        else:
            assert expected == pytest.approx(value, abs=1e-9), key


def _train_and_evaluate(config: str, settings: list[str], tmp_path: Path) -> dict[str, Path]:
    """Train, then ``cvkit eval --detections`` on ``best.pt`` and ``best.onnx``; returns the
    metrics and detections files per weights suffix."""
    run = tmp_path / "run"
    files = {}
    try:
        assert main(["train", "--cfg", config, "--out", str(run), "--set", *settings]) == 0
        for suffix in ("pt", "onnx"):
            weights = run / "weights" / f"best.{suffix}"
            metrics, detections = tmp_path / f"{suffix}.json", tmp_path / f"{suffix}_dets.json"
            command = ["eval", "--cfg", config, "--weights", str(weights), "--no-plots"]
            command += ["--json", str(metrics), "--detections", str(detections)]
            assert main([*command, "--set", *settings]) == 0
            files[suffix] = (metrics, detections)
    finally:
        setup_logging()  # detach the run folder's log file
    return files


def test_box_detections_file_scores_like_cvkit_eval(dataset, tmp_path):
    settings = [*_settings(dataset, tmp_path), "train.epochs=20"]
    files = _train_and_evaluate(str(CONFIGS / "ssd.yaml"), settings, tmp_path)
    ground_truth = annotation_path(dataset, "train")
    truth = json.loads(ground_truth.read_text())
    image_ids = {image["id"] for image in truth["images"]}
    for metrics, detections in files.values():
        records = json.loads(detections.read_text())
        assert records, "the tiny model should detect something"
        assert {r["image_id"] for r in records} <= image_ids
        assert {r["category_id"] for r in records} <= set(COCO_CATEGORY_IDS.values())
        assert all(set(r) == {"image_id", "category_id", "bbox", "score"} for r in records)
        reported = json.loads(metrics.read_text())
        assert reported["mAP50"] > 0
        _assert_same_map(reported, _cocoeval(ground_truth, detections, "bbox"))


def test_mask_detections_file_scores_like_cvkit_eval(dataset, tmp_path):
    small = (
        "fpn_channels=16 representation_size=32 mask_layers=[8,8] mask_dim_reduced=8 "
        "rpn.pre_nms_top_n_test=100 rpn.post_nms_top_n_test=30"
    )
    settings = [*_settings(dataset, tmp_path), "train.epochs=20"]
    settings += [f"model.mask_rcnn.{option}" for option in small.split()]
    files = _train_and_evaluate(str(CONFIGS / "mask_rcnn.yaml"), settings, tmp_path)
    ground_truth = annotation_path(dataset, "train")
    for metrics, detections in files.values():
        records = json.loads(detections.read_text())
        assert records and all(isinstance(r["segmentation"]["counts"], str) for r in records)
        reported = json.loads(metrics.read_text())
        assert reported["segm_mAP50"] > 0
        _assert_same_map(reported, _cocoeval(ground_truth, detections, "bbox"))
        _assert_same_map(reported, _cocoeval(ground_truth, detections, "segm"), "segm_")


def test_detections_refused_for_semantic_segmentation(capsys):
    command = ["eval", "--cfg", str(CONFIGS / "fcn.yaml"), "--weights", "missing.pt"]
    assert main([*command, "--detections", "dets.json"]) != 0
    error = capsys.readouterr().err
    assert "--detections dets.json" in error and "'segment'" in error
