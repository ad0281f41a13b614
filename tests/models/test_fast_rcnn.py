"""Fast R-CNN: RoI max pooling over external proposals on one shared map, the multi-task loss.

References: torchvision's ``roi_pool`` on the same map for the pooled grids, the model's own
candidates through :func:`select_detections` for the eval forward, and the training loss on
four synthetic images, which must fall when the model overfits them.
"""

import numpy as np
import pytest
import torch
import torchvision

from cvkit.config import Config
from cvkit.data.synthetic import synthetic_records
from cvkit.errors import ExportError
from cvkit.geometry import Geometry, normalize
from cvkit.models.build import build_model
from cvkit.models.detection.fast_rcnn import FastRCNN, pad_proposals
from cvkit.models.detection.postprocess import select_detections
from cvkit.structures import Instances, Target

SIZE = 96
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _config(**fast_rcnn) -> Config:
    options = {
        "representation_size": 64,
        "batch_size_per_image": 32,
        "proposals": {"min_size": 4, "max_proposals": 300},
        **fast_rcnn,
    }
    return Config.model_validate(
        {
            "task": "detect",
            "model": {
                "name": "fast_rcnn",
                "backbone": "resnet18_tiny",
                "out_features": ["layer3"],
                "fast_rcnn": options,
            },
            "data": {"mean": MEAN, "std": STD},
        }
    )


def synthetic_batch(count: int, size: int = SIZE) -> tuple[torch.Tensor, list[Target]]:
    """``count`` synthetic images normalized with ``MEAN``/``STD`` and their targets."""
    records, _ = synthetic_records(count, image_size=size, seed=1)
    pixels = np.stack([sample.image for sample in records.samples])
    images = torch.from_numpy(normalize(pixels, MEAN, STD))
    targets = [
        Target(
            torch.from_numpy(sample.boxes),
            torch.from_numpy(sample.labels),
            Geometry((size, size), (1.0, 1.0)),
        )
        for sample in records.samples
    ]
    return images, targets


@pytest.fixture(scope="module")
def data():
    return synthetic_batch(4)


def _model(**options) -> FastRCNN:
    torch.manual_seed(0)
    model = build_model(_config(**options), num_classes=3)
    assert isinstance(model, FastRCNN)
    return model


def test_roi_pooling_equals_torchvision_roi_pool_on_the_shared_map(data):
    images, _ = data
    model = _model().eval()
    rois = torch.tensor([[0, 4.0, 8.0, 60.0, 50.0], [1, 30.0, 10.0, 90.0, 94.0]])
    with torch.no_grad():
        feature = model.features(images[:2])
        got = model.roi_heads.pool([feature], rois)
    assert model.stride == 16 and feature.shape[-1] == SIZE // 16
    torch.testing.assert_close(got, torchvision.ops.roi_pool(feature, rois, 7, 1 / 16))


def test_fast_rcnn_follows_the_detector_contract(data):
    images, targets = data
    model = _model()
    model.train()
    losses = model(images[:2], targets[:2])
    assert set(losses) == {"roi_cls", "roi_box"}
    sum(losses.values()).backward()
    assert model.backbone.layer3[0].conv1.weight.grad.abs().sum() > 0
    assert model.roi_heads.box_predictor.bbox_pred.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        proposals = model.proposer(images[:2])
        boxes, scores = model.candidates(images[:2])
        detections = model(images[:2])
    most = max(len(p) for p in proposals)
    assert boxes.shape == (2, most, 3, 4) and scores.shape == (2, most, 3)
    for index, image_proposals in enumerate(proposals):
        assert torch.all(scores[index, len(image_proposals) :] == 0)
    expected = select_detections(boxes, scores, [(SIZE, SIZE)] * 2, 0.01, 0.5, 100, 1000)
    for got, want in zip(detections, expected, strict=True):
        assert isinstance(got, Instances) and len(got) > 0
        torch.testing.assert_close(got.boxes, want.boxes)
        assert (got.boxes >= 0).all() and (got.boxes <= SIZE).all()


def test_given_proposals_replace_the_proposer(data, monkeypatch):
    images, _ = data
    model = _model().eval()
    with torch.no_grad():
        searched = model.proposer(images[:2])
        expected = model.candidates(images[:2])

        def no_search(batch):
            raise AssertionError("the proposer ran although proposals were given")

        monkeypatch.setattr(model, "proposer", no_search)
        given = model.candidates(images[:2], [p.double() for p in searched])
        few = model.candidates(images[:2], [searched[0][:3], searched[1][:5]])
    torch.testing.assert_close(given, expected)
    assert few[0].shape[1] == 5 and torch.all(few[1][0, 3:] == 0)


def test_one_proposal_tensor_per_image_is_required(data):
    images, targets = data
    model = _model()
    with pytest.raises(ValueError, match="1 proposal tensors for 2 images"):
        model(images[:2], targets[:2], proposals=[torch.zeros(3, 4)])
    with pytest.raises(ValueError, match="one Target per image"):
        model(images[:2], targets[:1])


def test_pad_proposals_marks_the_real_rows():
    padded = pad_proposals([torch.ones(2, 4), torch.zeros(0, 4), torch.ones(3, 4)])
    assert padded.boxes.shape == (3, 3, 4)
    assert padded.count.tolist() == [2, 0, 3]
    assert padded.valid().sum(1).tolist() == [2, 0, 3]


@pytest.mark.filterwarnings("ignore")
def test_tracing_without_proposals_fails_clearly(data):
    images, _ = data
    model = _model().eval()
    with pytest.raises(ExportError, match="pass the proposals as an input"):
        torch.jit.trace(lambda x: model.candidates(x)[1], images[:1])


def _overfit(steps: int) -> list[float]:
    images, targets = synthetic_batch(4)
    model = _model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    history = []
    for _ in range(steps):
        losses = model(images, targets)
        loss = sum(losses.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(float(loss.detach()))
    assert model.proposer.cache.computed == 4  # searched once, then read from the cache
    return history


def test_loss_falls_within_a_dozen_steps_on_four_images():
    history = _overfit(12)
    assert np.mean(history[-3:]) < 0.7 * np.mean(history[:3]), history


@pytest.mark.slow
def test_loss_decreases_when_overfitting_four_images():
    history = _overfit(40)
    assert np.mean(history[-5:]) < 0.45 * np.mean(history[:5]), history


@pytest.mark.filterwarnings("ignore")
def test_exported_with_proposals_as_an_input_each_image_equals_torch_alone(tmp_path):
    """Traced at batch 2 with the proposals as a second, padded input; run at batch 1, 3 and
    5 with as many proposal rows as each batch needs, one image left without a detection."""
    import onnxruntime

    from cvkit.config.export import ExportConfig
    from cvkit.export.onnx import DetectorGraph

    images, _ = synthetic_batch(5)
    model = _model(topk_candidates=200).eval()
    proposals = model.proposer(images)
    with torch.no_grad():
        best = [
            float(model(image[None], proposals=[boxes])[0].scores.max())
            for image, boxes in zip(images, proposals, strict=True)
        ]
    low, next_low = sorted(best)[:2]
    threshold = (low + next_low) / 2  # the image with the lowest best score detects nothing
    model.inference = model.inference.model_copy(
        update={"score_threshold": threshold, "max_det": 20}
    )
    graph = DetectorGraph(model, True, threshold, model.inference.iou_threshold, 20, 200).eval()
    outputs = ["boxes", "scores", "labels", "num_dets"]
    path = tmp_path / "fast_rcnn.onnx"
    with torch.no_grad():
        torch.onnx.export(
            graph,
            (images[:2], pad_proposals(proposals[:2]).boxes),
            str(path),
            dynamo=False,
            opset_version=ExportConfig().opset,
            input_names=["images", "proposals"],
            output_names=outputs,
            dynamic_axes={
                "images": {0: "batch"},
                "proposals": {0: "batch", 1: "proposals"},
                **{name: {0: "batch"} for name in outputs},
            },
        )
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        alone = [
            model(image[None], proposals=[boxes])[0]
            for image, boxes in zip(images, proposals, strict=True)
        ]
    assert sum(len(detections) == 0 for detections in alone) == 1
    for chosen in ([3], [4, 0, 2], [1, 2, 3, 4, 0]):
        padded = pad_proposals([proposals[i] for i in chosen]).boxes
        boxes, scores, labels, counts = session.run(
            None, {"images": images[chosen].numpy(), "proposals": padded.numpy()}
        )
        for row, index in enumerate(chosen):
            want, count = alone[index], int(counts[row])
            assert count == len(want)
            np.testing.assert_allclose(boxes[row, :count], want.boxes.numpy(), atol=1e-4)
            np.testing.assert_allclose(scores[row, :count], want.scores.numpy(), atol=1e-5)
            np.testing.assert_array_equal(labels[row, :count], want.labels.numpy())


def test_padded_proposals_of_the_wrong_shape_are_refused(data):
    images, _ = data
    model = _model().eval()
    with pytest.raises(ValueError, match=r"padded proposals must be \[2, P, 4\]"):
        model.candidates(images[:2], torch.zeros(3, 5, 4))
