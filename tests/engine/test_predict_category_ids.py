"""``cvkit predict`` names each detection's COCO ``category_id``: a tiny SSD trained on a COCO
set whose categories are 1, 3 and 90 writes ``category_ids[label]`` for every detection, from
its ``best.pt`` and from its ``best.onnx`` (whose metadata carries the ids), and the runtime's
``Detections.to_dict`` (serve's body) lists them; a model whose checkpoint has no ids (a
synthetic, YOLO or VOC set, or an older checkpoint) writes no ``category_id``."""

import json
from pathlib import Path

import pytest
from engine_toys import COCO_CATEGORY_IDS, renumber_coco

from cvkit.cli import main
from cvkit.data.synthetic import annotation_path, write_synthetic
from cvkit.engine.checkpoint import load_checkpoint, save_checkpoint
from cvkit.export.commands import export_checkpoint
from cvkit.images import read_image
from cvkit.logs import setup_logging
from cvkit.runtime import load_predictor

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "ssd.yaml"
CATEGORY_IDS = list(COCO_CATEGORY_IDS.values())


@pytest.fixture(scope="module")
def coco_run(tmp_path_factory) -> tuple[Path, Path]:
    """The weights folder of a one-epoch tiny SSD (with its export) on a 4-image COCO set with
    category ids 1, 3, 90, and the folder of those images."""
    root = write_synthetic(tmp_path_factory.mktemp("coco"), num_train=4, num_val=1, image_size=64)
    renumber_coco(annotation_path(root, "train"))
    images = root / "images" / "train"
    split = [f"path={annotation_path(root, 'train')}", f"images={images}"]
    settings = [f"data.{name}.{value}" for name in ("train", "val") for value in split]
    settings += ["data.image_size=64", "data.batch_size=4", "train.threads=1", "train.plots=false"]
    settings += ["data.workers=0", "data.augment=[]", "data.mosaic=0.0", "train.epochs=1"]
    settings += ["train.val_every=1", "export.after_train=true", "device=cpu"]
    run = tmp_path_factory.mktemp("run")
    try:
        assert main(["train", "--cfg", str(CONFIG), "--out", str(run), "--set", *settings]) == 0
    finally:
        setup_logging()  # detach the run folder's log file
    return run / "weights", images


def _predict(weights: Path, images: Path, out: Path) -> list[dict]:
    """Every detection of ``cvkit predict`` at score threshold 0 (at least one)."""
    command = ["predict", str(images), "--weights", str(weights), "--out", str(out)]
    assert main([*command, "--score-threshold", "0"]) == 0
    records = json.loads((out / "predictions.json").read_text())
    detections = [detection for record in records for detection in record["detections"]]
    assert detections, "the tiny model should detect something at threshold 0"
    return detections


@pytest.mark.parametrize("suffix", ["pt", "onnx"])
def test_predictions_carry_the_dataset_category_ids(coco_run, suffix, tmp_path):
    weights_dir, images = coco_run
    for detection in _predict(weights_dir / f"best.{suffix}", images, tmp_path):
        assert detection["category_id"] == CATEGORY_IDS[detection["label"]]


def test_the_export_carries_the_ids_into_the_runtime_json(coco_run):
    weights_dir, images = coco_run
    predictor = load_predictor(weights_dir / "best.onnx", "cpu")
    assert predictor.metadata.category_ids == tuple(CATEGORY_IDS)
    body = predictor.predict(read_image(next(images.iterdir()))).to_dict()
    assert body["labels"], "the tiny model should detect something"
    assert body["category_ids"] == [CATEGORY_IDS[label] for label in body["labels"]]


def test_a_model_without_category_ids_writes_none(coco_run, tmp_path):
    weights_dir, images = coco_run
    checkpoint = load_checkpoint(weights_dir / "best.pt")
    assert checkpoint["category_ids"] == CATEGORY_IDS
    weights = save_checkpoint({**checkpoint, "category_ids": None}, tmp_path / "plain.pt")
    exported = export_checkpoint(weights).path
    assert load_predictor(exported, "cpu").metadata.category_ids is None
    for path in (weights, exported):
        for detection in _predict(path, images, tmp_path / path.suffix[1:]):
            assert "category_id" not in detection
