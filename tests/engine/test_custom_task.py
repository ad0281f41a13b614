"""A task defined in this file only (no edit to cvkit/) trains, evaluates, exports and runs in
the torch-free runtime: the task registry owns the whole life of a task.

The task, ``brightness``, regresses the mean brightness of an image; its model is registered
with ``register_model`` together with the pydantic class of its own ``model.toy_brightness``
section, its runtime predictor with ``register_predictor``.
"""

import json

import numpy as np
import pytest
import torch
from pydantic import Field
from torch import nn
from torch.utils.data import DataLoader, Dataset

import cvkit
from cvkit.cli import main
from cvkit.config import load_config
from cvkit.config.base import Section
from cvkit.engine.checkpoint import load_checkpoint
from cvkit.engine.tasks import Task, get_task, register_task
from cvkit.errors import ConfigError
from cvkit.geometry import normalize
from cvkit.logs import setup_logging
from cvkit.models.build import register_model
from cvkit.models.loading import load_model
from cvkit.runtime import load_predictor
from cvkit.runtime.predictors import Predictor, register_predictor

SIZE = 16


class BrightnessImages(Dataset):
    """Flat-colour noisy RGB images ``uint8 [S, S, 3]``; target: mean pixel value / 255."""

    def __init__(self, count: int, seed: int) -> None:
        self.classes = ["brightness"]
        rng = np.random.default_rng(seed)
        levels = rng.uniform(20, 235, count)
        noise = rng.integers(-15, 16, (count, SIZE, SIZE, 3))
        self.images = (levels[:, None, None, None] + noise).clip(0, 255).astype(np.uint8)
        self.targets = self.images.reshape(count, -1).mean(1).astype(np.float32) / 255

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.images[index], self.targets[index]


@register_task("brightness")
class BrightnessTask(Task):
    """Mean squared error for training; ``neg_mae`` (higher is better) for validation."""

    best_metric = "neg_mae"

    def build_dataset(self, split):
        return BrightnessImages(48 if split == "train" else 16, seed=0 if split == "train" else 1)

    def build_loader(self, dataset, train, distributed=False):
        data = self.config.data

        def collate(batch):
            images = np.stack([image for image, _ in batch])
            targets = torch.tensor([target for _, target in batch])
            return torch.from_numpy(normalize(images, data.mean, data.std)), targets

        return DataLoader(dataset, batch_size=8, shuffle=train, collate_fn=collate)

    def loss(self, model, batch):
        images, targets = batch
        return {"mse": nn.functional.mse_loss(model(images)[:, 0], targets)}

    def evaluate(self, model, loader, device):
        errors = []
        with torch.no_grad():
            for batch in loader:
                images, targets = self.to_device(batch, device)
                errors.append((model(images)[:, 0] - targets).abs())
        return {"neg_mae": -float(torch.cat(errors).mean())}


class BrightnessOptions(Section):
    """The model's own config section, ``model.toy_brightness``."""

    hidden: int = Field(4, gt=0, description="width of the hidden layer")


@register_model("toy_brightness", options=BrightnessOptions)
def build_brightness_model(config, num_classes):
    """Global average pool → linear → ReLU → linear: ``[B, 3, H, W]`` → ``[B, 1]``."""
    hidden = config.model.toy_brightness.hidden
    return nn.Sequential(
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(3, hidden),
        nn.ReLU(),
        nn.Linear(hidden, num_classes),
    )


@register_predictor("brightness")
class BrightnessPredictor(Predictor):
    """The runtime side: one float per image."""

    task = "brightness"

    def _postprocess(self, outputs, geometries):
        return [float(value) for value in outputs["logits"][:, 0]]


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "brightness.yaml"
    path.write_text(
        "task: brightness\ndevice: cpu\n"
        "model:\n  name: toy_brightness\n  toy_brightness: {hidden: 6}\n"
        f"data: {{image_size: {SIZE}, resize: resize}}\n"
        "train: {epochs: 30, lr: 0.05, momentum: 0.9, warmup_epochs: 0, scheduler: constant}\n"
        "export: {after_train: true, dynamic: true}\n"
    )
    yield path
    setup_logging()  # detach the run folder's log file


def test_a_task_from_a_test_file_trains_evaluates_exports_and_runs(config_file, tmp_path):
    assert get_task("brightness") is BrightnessTask
    run = tmp_path / "run"
    assert main(["train", "--cfg", str(config_file), "--out", str(run)]) == 0
    best = load_checkpoint(run / "weights" / "best.pt")
    # the model's own section went through its options class into the run and the checkpoint
    assert best["config"]["model"]["toy_brightness"] == {"hidden": 6}
    assert best["model"]["2.weight"].shape == (6, 3)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # training helps: the best epoch's error is below the first epoch's and small
    assert best["metrics"]["neg_mae"] > rows[0]["val/neg_mae"]
    assert best["metrics"]["neg_mae"] > -0.05

    onnx_path = run / "weights" / "best.onnx"
    assert onnx_path.is_file()
    runtime = load_predictor(onnx_path, "cpu")
    assert isinstance(runtime, BrightnessPredictor) and runtime.metadata.task == "brightness"
    assert runtime.classes == ("brightness",) and runtime.metadata.input_size == (SIZE, SIZE)

    val = BrightnessImages(16, seed=1)
    predicted = np.array(runtime.predict(list(val.images)))
    model = load_model(load_checkpoint(run / "weights" / "best.pt"))
    data = best["config"]["data"]
    with torch.no_grad():
        batch = torch.from_numpy(normalize(val.images, data["mean"], data["std"]))
        expected = model(batch)[:, 0].numpy()
    np.testing.assert_allclose(predicted, expected, atol=1e-5)
    # the runtime reproduces the checkpoint's validation metric
    assert -np.abs(predicted - val.targets).mean() == pytest.approx(
        best["metrics"]["neg_mae"], abs=1e-5
    )
    # and cvkit.load picks the same predictor from the file's metadata
    assert cvkit.load(onnx_path).predict(val.images[0]) == pytest.approx(predicted[0], abs=1e-6)


def test_the_models_section_is_validated_by_its_options_class(config_file):
    config = load_config(config_file)
    assert config.model.toy_brightness == BrightnessOptions(hidden=6)
    # absent, the named model's section takes its defaults
    assert load_config(None, ["model.name=toy_brightness"]).model.toy_brightness.hidden == 4
    with pytest.raises(ConfigError, match=r"'model\.toy_brightness\.hiden'.*allowed keys: hidden"):
        load_config(config_file, ["model.toy_brightness.hiden=8"])
    with pytest.raises(
        ConfigError, match=r"model\.toy_brightness\.hidden: Input should be greater"
    ):
        load_config(config_file, ["model.toy_brightness.hidden=0"])
    with pytest.raises(ConfigError, match=r"unknown key 'model\.toy_brightnes' in model"):
        load_config(config_file, ["model.toy_brightnes.hidden=8"])
