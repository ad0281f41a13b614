"""``cvkit train`` / ``cvkit eval`` end to end on the toy detector: JSON metrics, resume."""

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from engine_toys import ToyDetectionDataset, detection_collate
from torch import nn
from torch.utils.data import DataLoader

from cvkit.cli import main
from cvkit.engine import commands
from cvkit.engine.checkpoint import load_checkpoint
from cvkit.engine.tasks.detect import DetectTask
from cvkit.logs import setup_logging
from cvkit.models.build import register_model
from cvkit.structures import Instances


class ToyDetect(DetectTask):
    """The detection task over the toy dataset instead of cvkit.data."""

    def build_dataset(self, split):
        return ToyDetectionDataset()

    def build_loader(self, dataset, train, distributed=False):
        return DataLoader(dataset, batch_size=2, collate_fn=detection_collate)


@pytest.fixture
def toy_task(monkeypatch):
    monkeypatch.setattr(commands, "get_task", lambda name: ToyDetect)
    yield
    setup_logging()  # detach the run folders' log files


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "toy.yaml"
    path.write_text(
        "task: detect\ndevice: cpu\nmodel: {name: toy_oracle}\n"
        "train: {epochs: 2, lr: 0.15, momentum: 0, warmup_epochs: 0, scheduler: constant}\n"
    )
    return path


def test_train_then_eval_write_the_same_metrics(toy_task, config_file, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["--cfg", str(config_file), "--out", str(run), "--json", str(tmp_path / "train.json")]
    assert main(["train", *args]) == 0
    trained = json.loads((tmp_path / "train.json").read_text())
    assert set(trained) >= {"mAP", "mAP50", "mAP75", "per_class_AP", "epoch", "run"}
    assert set(trained["per_class_AP"]) == {"circle", "square"}
    assert trained["mAP_small"] is None or math.isfinite(trained["mAP_small"])
    best = load_checkpoint(run / "weights" / "best.pt")
    assert trained["mAP"] == best["metrics"]["mAP"] and trained["epoch"] == best["epoch"] == 2
    out = capsys.readouterr().out
    assert "mAP" in out and str(run) in out and "AP/circle" in out

    eval_json = tmp_path / "eval.json"
    weights = str(run / "weights" / "best.pt")
    assert (
        main(["eval", "--cfg", str(config_file), "--weights", weights, "--json", str(eval_json)])
        == 0
    )
    evaluated = json.loads(eval_json.read_text())
    for key in ("mAP", "mAP50", "mAP75", "per_class_AP"):
        assert evaluated[key] == trained[key]


def test_resume_from_the_command_line_extends_the_run(toy_task, config_file, tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--cfg", str(config_file), "--out", str(run)]) == 0
    last = str(run / "weights" / "last.pt")
    assert (
        main(["train", "--cfg", str(config_file), "--resume", last, "--set", "train.epochs=3"]) == 0
    )
    checkpoint = load_checkpoint(last)
    assert checkpoint["epoch"] == 3 and checkpoint["step"] == 6
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2, 3]


def test_wrong_num_classes_and_mismatched_weights_fail_clearly(
    toy_task, config_file, tmp_path, capsys
):
    assert (
        main(
            [
                "train",
                "--cfg",
                str(config_file),
                "--set",
                "model.num_classes=5",
                "--out",
                str(tmp_path / "r"),
            ]
        )
        == 2
    )
    assert "model.num_classes: 5, but the dataset has 2 classes" in capsys.readouterr().err
    assert main(["eval", "--cfg", str(config_file), "--weights", str(tmp_path / "nope.pt")]) == 2
    assert "checkpoint file not found" in capsys.readouterr().err


def test_metrics_json_groups_per_class_values():
    flat = {"mAP": 0.5, "AP/circle": 0.25, "AP/star": float("nan"), "IoU/bg": 0.9}
    assert commands.metrics_json(flat) == {
        "mAP": 0.5,
        "per_class_AP": {"circle": 0.25, "star": None},
        "per_class_IoU": {"bg": 0.9},
    }


def test_train_refuses_a_val_split_with_other_classes(monkeypatch, config_file, tmp_path, capsys):
    """A val split that lists only some of the classes (a COCO val file with its own
    categories, a VOC split without one class) numbers them differently: refused before
    training instead of failing at validation or scoring classes under other names."""

    class ValWithoutCircle(ToyDetect):
        def build_dataset(self, split):
            dataset = ToyDetectionDataset()
            if split == "val":
                dataset.classes = ["square"]
            return dataset

    monkeypatch.setattr(commands, "get_task", lambda name: ValWithoutCircle)
    out = tmp_path / "r"
    assert main(["train", "--cfg", str(config_file), "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert "the train split has the classes ['circle', 'square'] but the val split" in error
    assert "['square']" in error and not (out / "weights" / "last.pt").exists()
    setup_logging()


# Train's COCO categories (ids with gaps, names with spaces) and train's numbering, by hand:
# ascending ids 1, 3, 90 → labels 0, 1, 2. The val file lists only 90 and 1, in that order.
TRAIN_CATEGORIES = [
    {"id": 3, "name": "fire hydrant"},
    {"id": 90, "name": "tooth brush"},
    {"id": 1, "name": "traffic light"},
]
VAL_CATEGORIES = [{"id": 90, "name": "tooth brush"}, {"id": 1, "name": "traffic light"}]
TRAIN_LABEL_OF_ID = {1: 0, 3: 1, 90: 2}


class CocoOracle(nn.Module):
    """Predicts the objects of ``data.val.path`` exactly, image after image in the file's order
    (the val loader's), with labels in train's numbering (:data:`TRAIN_LABEL_OF_ID`). The
    images are 64×64 and so is the input, so input pixels are original pixels."""

    def __init__(self, val_json) -> None:
        super().__init__()
        data = json.loads(Path(val_json).read_text())
        self.objects = [
            [a for a in data["annotations"] if a["image_id"] == image["id"]]
            for image in data["images"]
        ]
        self.calls = 0
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, images, targets=None):
        if self.training:
            return {"shift": ((1 - self.w) ** 2).sum()}
        outputs = []
        for _ in images:
            objects = self.objects[self.calls % len(self.objects)]
            self.calls += 1
            xywh = torch.tensor([a["bbox"] for a in objects], dtype=torch.float32)
            boxes = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1)
            labels = torch.tensor([TRAIN_LABEL_OF_ID[a["category_id"]] for a in objects])
            outputs.append(Instances(boxes, torch.ones(len(objects)), labels, (64, 64)))
        return outputs


@register_model("coco_val_oracle")
def build_coco_oracle(config, num_classes: int) -> CocoOracle:
    """``model.name: coco_val_oracle``: a :class:`CocoOracle` of the config's val file."""
    assert num_classes == 3
    return CocoOracle(config.data.val.path)


def _coco_split(root, name, categories, objects):
    """A COCO file of 64×64 images, one per ``(category_id, bbox)`` list of ``objects``."""
    images, annotations = [], []
    (root / name).mkdir(parents=True)
    for index, image_objects in enumerate(objects):
        file_name = f"{index}.png"
        cv2.imwrite(str(root / name / file_name), np.full((64, 64, 3), 40 * index, np.uint8))
        images.append({"id": 10 + index, "file_name": file_name, "height": 64, "width": 64})
        for category_id, bbox in image_objects:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": 10 + index,
                    "category_id": category_id,
                    "bbox": bbox,
                    "area": bbox[2] * bbox[3],
                    "iscrowd": 0,
                }
            )
    path = root / f"{name}.json"
    data = {"images": images, "annotations": annotations, "categories": categories}
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def coco_config(tmp_path):
    """A config whose train file has categories 1, 3, 90 and whose val file lists 90 and 1."""
    train = _coco_split(
        tmp_path,
        "train",
        TRAIN_CATEGORIES,
        [[(1, [4, 4, 20, 20]), (3, [30, 30, 20, 25])], [(90, [10, 8, 30, 12])]],
    )
    val = _coco_split(
        tmp_path,
        "val",
        VAL_CATEGORIES,
        [[(90, [5, 6, 20, 18]), (1, [30, 28, 24, 30])], [(90, [12, 2, 16, 40])]],
    )
    path = tmp_path / "coco.yaml"
    path.write_text(
        "task: detect\ndevice: cpu\nmodel: {name: coco_val_oracle}\n"
        "train: {epochs: 1, warmup_epochs: 0, plots: false}\n"
        f"data: {{image_size: 64, batch_size: 2, workers: 0, cache: 'off', augment: [],\n"
        f"  train: {{path: {train}, images: {tmp_path / 'train'}}},\n"
        f"  val: {{path: {val}, images: {tmp_path / 'val'}}}}}\n"
    )
    yield path, val
    setup_logging()


def test_train_and_eval_on_a_coco_val_file_listing_some_train_categories(coco_config, tmp_path):
    """The val file's labels are numbered as train's and scored with train's category ids: a
    model predicting val's objects exactly in train's numbering scores mAP 1.0, in training
    and in ``cvkit eval`` of its checkpoint."""
    config, _ = coco_config
    run = tmp_path / "run"
    train_json, eval_json = tmp_path / "train.json", tmp_path / "eval.json"
    args = ["--cfg", str(config), "--out", str(run), "--json", str(train_json)]
    assert main(["train", *args]) == 0
    best = load_checkpoint(run / "weights" / "best.pt")
    assert best["classes"] == ["traffic light", "fire hydrant", "tooth brush"]
    assert best["category_ids"] == [1, 3, 90]
    weights = str(run / "weights" / "best.pt")
    args = ["--cfg", str(config), "--weights", weights, "--json", str(eval_json), "--no-plots"]
    assert main(["eval", *args]) == 0
    for metrics in (json.loads(train_json.read_text()), json.loads(eval_json.read_text())):
        assert metrics["mAP"] == pytest.approx(1.0)
        assert metrics["per_class_AP"] == {
            "traffic light": pytest.approx(1.0),
            "fire hydrant": None,  # no object in val
            "tooth brush": pytest.approx(1.0),
        }


@pytest.mark.parametrize(
    "category, message",
    [
        ({"id": 7, "name": "kite"}, "category 7 ('kite') is not a category of"),
        ({"id": 90, "name": "toothbrush"}, "category 90 is named 'toothbrush' here but"),
    ],
)
def test_train_and_eval_refuse_a_val_category_that_train_lacks(
    coco_config, tmp_path, capsys, category, message
):
    """Train refuses it naming the train split, eval naming the checkpoint, before any work."""
    config, val = coco_config
    run = tmp_path / "run"
    assert main(["train", "--cfg", str(config), "--out", str(run)]) == 0
    capsys.readouterr()
    data = json.loads(val.read_text())
    data["categories"].append(category)
    val.write_text(json.dumps(data))
    assert main(["train", "--cfg", str(config), "--out", str(tmp_path / "r2")]) == 2
    error = capsys.readouterr().err
    assert f"{val}: {message}" in error and "the train split" in error
    assert not (tmp_path / "r2" / "weights" / "last.pt").exists()
    weights = str(run / "weights" / "best.pt")
    assert main(["eval", "--cfg", str(config), "--weights", weights, "--no-plots"]) == 2
    error = capsys.readouterr().err
    assert f"{val}: {message}" in error and f"the checkpoint {weights}" in error
