"""A classifier trained on an ImageFolder scores the same through the exported runtime as
through torch: same val accuracy and confusion matrix, and ``cvkit predict`` gives the same
labels from the ``.pt`` and from the ``.onnx``.

The reference for the checkpoint is the torch evaluation path (``ClassifyTask.evaluate`` over
the ImageFolder val loader); the runtime side never touches torch, so the two agree only if the
dataset's pre-processing is the runtime's.
"""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import cvkit
from cvkit.cli import main
from cvkit.config import Config
from cvkit.engine.checkpoint import load_checkpoint
from cvkit.engine.tasks import get_task
from cvkit.engine.tasks.classify import plot_best_confusion
from cvkit.export.commands import export_checkpoint
from cvkit.models.classification.metrics import confusion_matrix
from cvkit.models.loading import load_model

# Class -> dominant RGB channel; images of several sizes and aspect ratios, so the letterbox
# (placement and padding) matters.
CLASSES = {"blue": 2, "green": 1, "red": 0}
CONFIG = Path(__file__).resolve().parents[2] / "configs" / "classify_resnet.yaml"
SIZES = [(24, 40), (40, 24), (30, 30), (18, 50)]


def write_image_folder(root, per_class, seed):
    """``root/<class>/<i>.png``: noisy images whose dominant channel is the class's."""
    rng = np.random.default_rng(seed)
    for name, channel in CLASSES.items():
        (root / name).mkdir(parents=True)
        for index in range(per_class):
            height, width = SIZES[index % len(SIZES)]
            rgb = rng.integers(0, 120, (height, width, 3), np.uint8)
            rgb[..., channel] = rng.integers(90, 256, (height, width), np.uint8)
            cv2.imwrite(str(root / name / f"{index}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """``(run folder, val folder)`` of a classifier trained for 6 epochs on a tiny folder."""
    tmp = tmp_path_factory.mktemp("classify_runtime")
    train = write_image_folder(tmp / "train", 6, seed=0)
    val = write_image_folder(tmp / "val", 5, seed=1)
    overrides = [
        "data.batch_size=6",
        "data.workers=0",
        f"data.train.path={train}",
        f"data.val.path={val}",
        "data.mean=[0.4,0.45,0.5]",
        "data.std=[0.3,0.25,0.2]",
        "train.epochs=6",
        "train.plots=false",
        "device=cpu",
    ]
    run = tmp / "run"
    assert main(["train", "--cfg", str(CONFIG), "--set", *overrides,
                 "--out", str(run)]) == 0  # fmt: skip
    return run, val


def test_runtime_accuracy_on_the_val_folder_equals_the_checkpoints(trained):
    run, _ = trained
    weights = run / "weights" / "best.pt"
    checkpoint = load_checkpoint(weights)
    task = get_task("classify")(Config.model_validate(checkpoint["config"]))
    dataset = task.build_dataset("val")
    model = load_model(checkpoint)
    loader = task.build_loader(dataset, train=False)
    metrics = task.evaluate(model, loader, torch.device("cpu"))
    with torch.no_grad():
        torch_probabilities = torch.cat([model(images).softmax(1) for images, _ in loader])

    onnx = export_checkpoint(weights).path
    runtime = cvkit.load(onnx, device="cpu")
    paths = [path for path, _ in dataset.files]
    results = runtime.predict(paths)
    predicted = torch.tensor([result.label for result in results])
    labels = torch.tensor(dataset.labels)
    runtime_matrix = confusion_matrix(predicted, labels, len(dataset.classes))

    assert list(runtime.classes) == dataset.classes == sorted(CLASSES)
    # accuracies are multiples of 1 / 15: equal up to float rounding means equal
    assert int((predicted == labels).sum()) / len(labels) == pytest.approx(
        metrics["top1"], abs=1e-9
    )
    assert torch.equal(runtime_matrix, task.confusion)
    # the same input image by image, not just the same argmax: the ImageFolder val samples are
    # the runtime's pre-processing of each file
    runtime_probabilities = np.stack([result.probabilities for result in results])
    np.testing.assert_allclose(runtime_probabilities, torch_probabilities.numpy(), atol=1e-5)


def test_cvkit_predict_gives_the_same_labels_from_pt_and_onnx(trained, tmp_path):
    run, val = trained
    weights = run / "weights" / "best.pt"
    onnx = weights.with_suffix(".onnx")
    if not onnx.exists():
        export_checkpoint(weights)
    labels = {}
    for model in (weights, onnx):
        out = tmp_path / model.suffix[1:]
        assert main(["predict", str(val / "red"), str(val / "blue"), "--weights", str(model),
                     "--out", str(out)]) == 0  # fmt: skip
        records = json.loads((out / "predictions.json").read_text())
        labels[model.suffix] = [(record["image"], record["label"]) for record in records]
    assert len(labels[".pt"]) == 10
    assert labels[".pt"] == labels[".onnx"]


def test_the_best_checkpoints_confusion_matrix_is_drawn_into_the_run(trained):
    run, _ = trained
    path, metrics = plot_best_confusion(run)
    assert path == run / "plots" / "confusion_matrix.png"
    assert cv2.imread(str(path)) is not None
    # reference: the validation that chose best.pt during training
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert metrics["top1"] == pytest.approx(max(row["val/top1"] for row in rows))
