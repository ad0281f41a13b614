"""A model declares its own export (graph, output names) in a test file and exports through
``cvkit export`` with no edit to ``cvkit/``.

The toy detector adds an ``embedding [B, D]`` output beside the padded detections. References:
the eager model's embedding and detections on the same pre-processed images.
"""

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from cvkit.cli import main
from cvkit.config import config_to_dict, load_config
from cvkit.engine.checkpoint import save_checkpoint
from cvkit.errors import ExportError
from cvkit.export.onnx import DetectorGraph, export_inputs
from cvkit.geometry import fit, normalize
from cvkit.models.build import build_model, register_model
from cvkit.models.detection.postprocess import select_detections
from cvkit.runtime import Detector, OnnxModel
from cvkit.structures import ImageBatch

CLASSES = ["a", "b"]
SIZE = 32
STRIDE = 8


class EmbeddingDetector(nn.Module):
    """One box per cell of a stride-8 grid (deltas and class scores from a 1x1 head) and a
    mean-pooled image embedding, exported as a fifth output."""

    def __init__(self, num_classes: int, score_threshold: float) -> None:
        super().__init__()
        self.body = nn.Conv2d(3, 8, 3, stride=STRIDE, padding=1)
        self.head = nn.Conv2d(8, 4 + num_classes, 1)
        centers = (torch.arange(SIZE // STRIDE, dtype=torch.float32) + 0.5) * STRIDE
        cy, cx = torch.meshgrid(centers, centers, indexing="ij")
        middle = torch.stack([cx, cy, cx, cy], -1).reshape(-1, 4)
        self.register_buffer("anchors", middle + torch.tensor([-6.0, -6.0, 6.0, 6.0]))
        self.score_threshold = score_threshold

    def embedding(self, images: Tensor) -> Tensor:
        return self.body(images).relu().mean((2, 3))

    def candidates(self, images: Tensor) -> tuple[Tensor, Tensor]:
        out = self.head(self.body(images).relu()).flatten(2).transpose(1, 2)
        return self.anchors + 4 * out[..., :4], out[..., 4:].sigmoid()

    def forward(self, images):
        batch = ImageBatch.of(images)
        boxes, scores = self.candidates(batch.tensor)
        return select_detections(
            boxes, scores, batch.image_sizes, self.score_threshold, 0.5, 100, 10_000
        )

    def export_graph(self, metadata, options) -> nn.Module:
        detections = DetectorGraph(
            self, options.nms, metadata.score_threshold, metadata.iou_threshold, metadata.max_det
        )
        return EmbeddingGraph(detections)

    def export_output_names(self, metadata) -> tuple[str, ...]:
        detections = ("boxes", "scores", "labels", "num_dets")
        return (*(detections if metadata.nms_in_graph else detections[:2]), "embedding")


class EmbeddingGraph(nn.Module):
    """The detector's graph, then its embedding."""

    def __init__(self, detections: DetectorGraph) -> None:
        super().__init__()
        self.detections = detections
        self.model = detections.model

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        return (*self.detections(images), self.model.embedding(images))


@register_model("toy_embedding_detector")
def build_embedding_detector(config, num_classes):
    return EmbeddingDetector(num_classes, config.eval.score_threshold)


@pytest.fixture(autouse=True)
def _keep_logging_off_captured_streams(monkeypatch):
    monkeypatch.setattr("cvkit.export.commands.setup_logging", lambda: None)


@pytest.mark.parametrize("nms", [True, False])
def test_a_model_declaring_an_extra_output_exports_through_the_cli(nms, tmp_path):
    config = load_config(
        None,
        [
            "model.name=toy_embedding_detector",
            f"data.image_size={SIZE}",
            "data.resize=resize",
            "eval.score_threshold=0.3",
        ],
    )
    torch.manual_seed(0)
    model = build_model(config, len(CLASSES)).eval()
    checkpoint = {"model": model.state_dict(), "config": config_to_dict(config), "ema": None}
    weights = save_checkpoint({**checkpoint, "classes": CLASSES}, tmp_path / "toy.pt")
    flags = [] if nms else ["--no-nms"]
    assert main(["export", "--weights", str(weights), "--dynamic", *flags]) == 0
    path = tmp_path / "toy.onnx"
    session = OnnxModel(path, "cpu")
    assert session.output_names == list(model.export_output_names(session.metadata))
    assert session.output_names[-1] == "embedding"

    rng = np.random.default_rng(1)
    pictures = [rng.integers(0, 256, (SIZE + 8 * i, SIZE, 3), dtype=np.uint8) for i in range(3)]
    placed = [fit(picture, (SIZE, SIZE), "resize") for picture in pictures]
    batch = normalize(np.stack([canvas for canvas, _ in placed]), config.data.mean, config.data.std)
    with torch.no_grad():
        embedding = model.embedding(torch.from_numpy(batch)).numpy()
        expected = model(torch.from_numpy(batch))
    np.testing.assert_allclose(session.run(batch)["embedding"], embedding, atol=1e-5)
    got = Detector(path, providers="cpu").predict(pictures)
    assert sum(len(found) for found in expected) > 0
    for detections, want, (_, geometry) in zip(got, expected, placed, strict=True):
        want = want.to_original(geometry)
        np.testing.assert_array_equal(detections.labels, want.labels)
        np.testing.assert_allclose(detections.boxes, want.boxes, atol=1e-3)
        np.testing.assert_allclose(detections.scores, want.scores, atol=1e-5)


def test_a_declared_input_may_not_take_the_images_name():
    class Clashing(nn.Module):
        def export_inputs(self, images):
            return {"images": (images, {0: "batch"})}

    with pytest.raises(ExportError, match="named other than 'images'"):
        export_inputs(Clashing(), torch.zeros(1, 3, 8, 8))
