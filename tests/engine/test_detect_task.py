"""The detection task: boxes map back to original pixels, COCO mAP, training through the Trainer."""

import math

import pytest
import torch
from engine_toys import OracleDetector, ToyDetectionDataset, detection_collate, toy_config
from torch.utils.data import DataLoader

from cvkit.engine.checkpoint import load_checkpoint
from cvkit.engine.rundir import RunDir
from cvkit.engine.tasks import get_task
from cvkit.engine.tasks.detect import DetectTask
from cvkit.engine.trainer import Trainer
from cvkit.errors import ConfigError
from cvkit.geometry import Geometry
from cvkit.structures import Instances


def loader(dataset, batch_size=3):
    return DataLoader(dataset, batch_size=batch_size, collate_fn=detection_collate)


def test_boxes_map_back_with_scale_and_offset():
    detection = Instances(
        torch.tensor([[12.0, 23.0, 52.0, 63.0], [-5.0, 0.0, 70.0, 40.0]]),
        torch.tensor([0.9, 0.4]),
        torch.tensor([1, 0]),
        (64, 64),
    )
    geometry = Geometry(orig_size=(200, 100), scale=(0.5, 0.25), offset=(2.0, 3.0))
    mapped = detection.to_original(geometry)
    # x: (12 - 2) / 0.5 = 20, (52 - 2) / 0.5 = 100; y: (23 - 3) / 0.25 = 80, (63 - 3) / 0.25 = 240
    # then clipped to width 100 / height 200
    expected = torch.tensor([[20.0, 80.0, 100.0, 200.0], [0.0, 0.0, 100.0, 148.0]])
    torch.testing.assert_close(mapped.boxes, expected)
    assert torch.equal(mapped.labels, detection.labels) and mapped.image_size == (200, 100)


def test_perfect_detections_score_map_1_only_after_mapping_back(monkeypatch):
    dataset = ToyDetectionDataset()
    task = get_task("detect")(toy_config())
    assert isinstance(task, DetectTask) and task.best_metric == "mAP"
    model = OracleDetector(dataset)
    with torch.no_grad():
        model.w.fill_(1.0)
    model.eval()
    metrics = task.evaluate(model, loader(dataset), torch.device("cpu"))
    assert metrics["mAP"] == pytest.approx(1.0) and metrics["mAP50"] == pytest.approx(1.0)
    assert metrics["AP/circle"] == pytest.approx(1.0) and metrics["AP/square"] == pytest.approx(1.0)
    # the same boxes left in network-input pixels miss the original-pixel ground truth
    monkeypatch.setattr(Instances, "to_original", lambda detection, geometry: detection)
    unmapped = task.evaluate(model, loader(dataset), torch.device("cpu"))
    assert unmapped["mAP"] < 0.5


def test_training_a_detector_through_the_trainer_raises_map(tmp_path):
    dataset = ToyDetectionDataset()
    config = toy_config(
        "train.epochs=3",
        "train.momentum=0",
        "train.lr=0.15",
        "task=detect",
        "train.scheduler=constant",
    )
    task = get_task("detect")(config)
    run = RunDir(tmp_path / "run")
    for folder in (run.root, run.weights, run.plots):
        folder.mkdir(parents=True)
    model = OracleDetector(dataset)
    trainer = Trainer(
        config,
        task,
        model,
        loader(dataset, 2),
        loader(dataset),
        run=run,
        device=torch.device("cpu"),
    )
    assert trainer.classes == ["circle", "square"] and trainer.category_ids == [4, 9]
    best = trainer.fit()
    history = [r["val/mAP"] for r in trainer.history.rows]
    assert history == sorted(history) and history[-1] > history[0]
    assert best["mAP"] == history[-1] and math.isfinite(trainer.history.rows[-1]["train/shift"])
    checkpoint = load_checkpoint(run.best)
    assert checkpoint["category_ids"] == [4, 9] and checkpoint["metrics"]["mAP"] == best["mAP"]


def test_pretrained_initializes_the_detector_backbone(tmp_path):
    from cvkit.models.backbones import create_backbone

    source = create_backbone("resnet18_tiny", out_features=["layer2", "layer3", "layer4"])
    path = tmp_path / "backbone.pth"
    torch.save(source.state_dict(), path)
    overrides = ["model.name=ssd", "model.backbone=resnet18_tiny", f"model.pretrained={path}"]
    model = DetectTask(toy_config(*overrides)).build_model(num_classes=3)
    loaded = model.backbone.state_dict()
    for name, value in source.state_dict().items():
        assert torch.equal(loaded[name], value), name
    with pytest.raises(ConfigError, match="has no backbone"):
        DetectTask(toy_config("model.name=toy_oracle", f"model.pretrained={path}")).build_model(2)
