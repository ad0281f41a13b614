"""Fast style transfer: the ``style`` task trains, exports to ONNX with dynamic batch/H/W, and
the torch-free Stylizer and ``cvkit predict`` return images of the input's size."""

import json

import cv2
import numpy as np
import onnxruntime as ort
import pytest
import torch

from cvkit.cli import main
from cvkit.config import Config
from cvkit.config.export import ExportConfig
from cvkit.engine.checkpoint import load_checkpoint
from cvkit.engine.tasks import get_task
from cvkit.engine.tasks.style import ContentImages
from cvkit.errors import ConfigError, DatasetError
from cvkit.export.onnx import export_model
from cvkit.logs import setup_logging
from cvkit.models.loading import load_model
from cvkit.models.style import TransformerNet
from cvkit.runtime import Stylizer

torch.set_num_threads(2)


def _write(path, image):
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return path


def _smooth(rng, height, width):
    """A smooth random RGB image (an upsampled 4x4 grid), uint8 [H, W, 3]."""
    coarse = rng.uniform(0, 255, (4, 4, 3)).astype(np.float32)
    return (
        cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
        .clip(0, 255)
        .astype(np.uint8)
    )


@pytest.fixture
def run(tmp_path):
    rng = np.random.default_rng(0)
    content = tmp_path / "content"
    content.mkdir()
    for index in range(6):
        _write(content / f"{index}.png", _smooth(rng, 40, 48))
    stripes = np.zeros((48, 48, 3), np.uint8)
    stripes[:, ::6] = (255, 40, 0)
    stripes[::6] = (0, 60, 255)
    style = _write(tmp_path / "style.png", stripes)
    config = tmp_path / "style.yaml"
    config.write_text(
        "task: style\ndevice: cpu\n"
        f"model: {{name: style, style: {{image: {style}, channels: 8, residual_blocks: 1, "
        "loss_width_mult: 0.25, style_weight: 1000.0, tv_weight: 0.1}}\n"
        f"data: {{image_size: 32, batch_size: 2, workers: 0, train: {{path: {content}}}}}\n"
        "train: {epochs: 3, optimizer: adamw, lr: 0.01, weight_decay: 0.0, warmup_epochs: 0, "
        "scheduler: constant, amp: 'off', plots: false}\n"
        "export: {after_train: true, dynamic: true}\n"
    )
    out = tmp_path / "run"
    assert main(["train", "--cfg", str(config), "--out", str(out)]) == 0
    yield out
    setup_logging()


def test_style_task_trains_exports_and_predicts(run, tmp_path):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # training lowers the validation loss
    assert rows[-1]["val/loss"] < rows[0]["val/loss"]
    weights = run / "weights" / "best.pt"
    photo = _write(tmp_path / "photo.jpg", _smooth(np.random.default_rng(1), 27, 35))
    out = tmp_path / "predicted"
    assert main(["predict", "--weights", str(weights), str(photo), "--out", str(out)]) == 0
    stylised = cv2.imread(str(out / "photo.png"))
    assert stylised.shape == (27, 35, 3)

    # the runtime on the exported file returns uint8 of the input's size, equal to torch
    runtime = Stylizer(run / "weights" / "best.onnx", "cpu")
    image = cv2.cvtColor(cv2.imread(str(photo)), cv2.COLOR_BGR2RGB)
    results = runtime.predict([image, image[:20, :30], image])
    assert [r.image.shape for r in results] == [(27, 35, 3), (20, 30, 3), (27, 35, 3)]
    assert all(r.image.dtype == np.uint8 for r in results)
    model = load_model(load_checkpoint(weights)).eval()
    with torch.no_grad():
        expected = model(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255)
    expected = (expected[0].permute(1, 2, 0).numpy() * 255).round()
    assert np.abs(results[0].image.astype(float) - expected).max() <= 1
    np.testing.assert_array_equal(results[0].image, results[2].image)
    # cvkit predict's PNG of the checkpoint is the same picture
    assert np.abs(cv2.cvtColor(stylised, cv2.COLOR_BGR2RGB) - expected).max() <= 1


@pytest.mark.parametrize("size", [(32, 40), (45, 37)])
@pytest.mark.parametrize("batch", [1, 3])
def test_onnx_equals_torch_at_any_size_and_batch(exported, size, batch):
    path, model = exported
    images = torch.rand(batch, 3, *size, generator=torch.Generator().manual_seed(batch))
    with torch.no_grad():
        expected = model(images).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: images.numpy()})
    assert got.shape == (batch, 3, *size)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    model = TransformerNet(channels=8, residual_blocks=2).eval()
    # non-trivial instance-norm affine parameters, so a wrong mapping shows
    for module in model.modules():
        if isinstance(module, torch.nn.InstanceNorm2d):
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    config = Config.model_validate({"task": "style", "data": {"image_size": 32}})
    metadata = get_task("style").export_metadata(config, ["stylized"])
    path = tmp_path_factory.mktemp("onnx") / "style.onnx"
    export_model(model, path, metadata, ExportConfig(dynamic=True), batch_size=2)
    return path, model


def test_missing_style_image_and_content_folder_are_named(tmp_path):
    task = get_task("style")(Config.model_validate({"task": "style"}))
    with pytest.raises(ConfigError, match=r"data\.train\.path"):
        task.build_dataset("train")
    with pytest.raises(ConfigError, match=r"model\.style\.image"):
        task.perceptual_loss(torch.device("cpu"))
    with pytest.raises(DatasetError, match="no image files"):
        ContentImages(tmp_path, 32, train=True)
