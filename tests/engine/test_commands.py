"""``cvkit train`` / ``cvkit eval`` end to end on the toy detector: JSON metrics, resume."""

import json
import math

import pytest
from engine_toys import ToyDetectionDataset, detection_collate
from torch.utils.data import DataLoader

from cvkit.cli import main
from cvkit.engine import commands
from cvkit.engine.checkpoint import load_checkpoint
from cvkit.engine.tasks.detect import DetectTask
from cvkit.logs import setup_logging


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
