"""FCN: output shapes, exact upsampling arithmetic, bilinear initialization, registration."""

from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cvkit.config import load_config
from cvkit.errors import ConfigError
from cvkit.eval.segmentation import SegmentationEvaluator
from cvkit.models.backbones import Backbone, StageInfo, create_backbone
from cvkit.models.build import build_model
from cvkit.models.segmentation import FCN, bilinear_kernel, upsampling_layer
from cvkit.ops.transposed import transposed_output_size

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {
        variant: FCN(create_backbone("resnet18_tiny"), num_classes=3, variant=variant).eval()
        for variant in ("32s", "16s", "8s")
    }


@pytest.mark.parametrize("variant", ["32s", "16s", "8s"])
@pytest.mark.parametrize("size", [(64, 64), (96, 64), (65, 65), (33, 47), (1, 70)])
def test_logits_have_the_input_size(models, variant, size):
    with torch.no_grad():
        logits = models[variant](torch.randn(2, 3, *size))
    assert logits.shape == (2, 3, *size)


@pytest.mark.parametrize(
    ("variant", "factors"), [("32s", [32]), ("16s", [2, 16]), ("8s", [2, 2, 8])]
)
def test_upsampling_follows_the_size_rule(models, variant, factors):
    model = models[variant]
    assert [layer.stride[0] for layer in model.upsample] == factors
    captured = []
    hooks = [
        layer.register_forward_hook(lambda _m, i, o: captured.append((i[0].shape, o.shape)))
        for layer in model.upsample
    ]
    with torch.no_grad():
        model(torch.randn(1, 3, 75, 50))  # padded to 96 x 64 inside
    for hook in hooks:
        hook.remove()
    for layer, (inp, out) in zip(model.upsample, captured, strict=True):
        (k, _), (s, _), (p, _) = layer.kernel_size, layer.stride, layer.padding
        assert k == 2 * p + s
        assert out[2:] == tuple(transposed_output_size(n, k, s, p) for n in inp[2:])
        assert out[2:] == (inp[2] * s, inp[3] * s)
    assert captured[-1][1][2:] == (96, 64)


@pytest.mark.parametrize("factor", [2, 4, 8, 32])
def test_bilinear_init_equals_bilinear_resize_in_the_interior(factor):
    torch.manual_seed(factor)
    image = torch.rand(1, 3, 6, 5)
    with torch.no_grad():
        upsampled = upsampling_layer(3, factor)(image)
    resized = F.interpolate(image, scale_factor=factor, mode="bilinear", align_corners=False)
    assert upsampled.shape == resized.shape
    border = factor // 2
    inner = (slice(None), slice(None), slice(border, -border), slice(border, -border))
    torch.testing.assert_close(upsampled[inner], resized[inner])
    assert not torch.allclose(upsampled, resized)  # the border does differ: zeros vs clamping


def test_bilinear_kernel_values():
    kernel = bilinear_kernel(2, 2, 4)
    profile = torch.tensor([0.25, 0.75, 0.75, 0.25])
    torch.testing.assert_close(kernel[0, 0], torch.outer(profile, profile))
    assert torch.equal(kernel[0, 1], torch.zeros(4, 4))  # channels do not mix
    odd = bilinear_kernel(1, 1, 3)[0, 0]
    torch.testing.assert_close(odd[1], torch.tensor([0.5, 1.0, 0.5]))


def test_skip_scores_start_at_zero(models):
    model = models["8s"]
    for score in model.skip_scores:
        assert not score.weight.any() and not score.bias.any()
    assert model.backbone.out_features == ["layer2", "layer3", "layer4"]


class _ShallowBackbone(Backbone):
    """Two stages at strides 2 and 4: too shallow for a stride-16 skip."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, 2, 1)
        self.b = nn.Conv2d(4, 4, 3, 2, 1)
        self._set_stages([(StageInfo("a", 4, 2), [self.a]), (StageInfo("b", 4, 4), [self.b])])

    def iter_stages(self, x):
        x = self.a(x)
        yield "a", x
        yield "b", self.b(x)


def test_backbone_without_the_needed_stride_is_a_config_error():
    with pytest.raises(ConfigError, match="needs a stage at stride 16"):
        FCN(_ShallowBackbone(), 3, variant="16s")
    logits = FCN(_ShallowBackbone(), 3, variant="32s")(torch.randn(1, 3, 10, 9))
    assert logits.shape == (1, 3, 10, 9)
    assert isinstance(_ShallowBackbone()(torch.zeros(1, 3, 8, 8)), OrderedDict)


def test_registered_as_fcn_and_built_from_the_config():
    config = load_config(
        "configs/fcn.yaml", ["model.backbone=resnet18_tiny", "model.fcn.variant=16s"]
    )
    model = build_model(config, num_classes=4)
    assert isinstance(model, FCN)
    assert model.variant == "16s" and model.num_classes == 4
    groups = model.parameter_groups()
    assert [g["name"] for g in groups] == ["body", "head"]
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def _toy_batch():
    """Four 64×64 images: a bright square (class 1) and a dark bar (class 2) on grey (class 0)."""
    generator = torch.Generator().manual_seed(0)
    images = torch.zeros(4, 3, 64, 64)
    masks = torch.zeros(4, 64, 64, dtype=torch.int64)
    for index in range(4):
        y, x = torch.randint(4, 30, (2,), generator=generator).tolist()
        images[index, :, y : y + 24, x : x + 24] = 1.0
        masks[index, y : y + 24, x : x + 24] = 1
        row = 50 - 8 * (index % 2)
        images[index, :, row : row + 8, 8:56] = -1.0
        masks[index, row : row + 8, 8:56] = 2
    masks[:, :2] = 255  # an ignored strip
    return images, masks


def _miou(model, images, masks):
    evaluator = SegmentationEvaluator(3)
    with torch.no_grad():
        evaluator.update(model(images).argmax(1), masks)
    return evaluator.compute()["mIoU"]


@pytest.mark.slow
def test_overfitting_four_images_drives_miou_up():
    torch.manual_seed(0)
    model = FCN(create_backbone("resnet18_tiny"), num_classes=3, variant="8s")
    images, masks = _toy_batch()
    before = _miou(model.eval(), images, masks)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(60):
        loss = F.cross_entropy(model(images), masks, ignore_index=255)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = _miou(model.eval(), images, masks)
    assert before < 0.5
    assert after > 0.8


def test_onnx_export_with_dynamic_batch_and_size_matches_torch(tmp_path):
    from cvkit.config.export import ExportConfig
    from cvkit.data.transforms import fit_to_input
    from cvkit.export.onnx import export_model
    from cvkit.runtime import ModelMetadata, OnnxModel, Segmenter

    torch.manual_seed(0)
    model = FCN(create_backbone("resnet18_tiny"), num_classes=3, variant="8s")
    with torch.no_grad():  # non-trivial BatchNorm statistics and skip weights
        model.train()(torch.randn(4, 3, 64, 64) * 2 + 0.5)
        for score in model.skip_scores:
            score.weight.normal_(0, 0.1)
    model.eval()
    metadata = ModelMetadata(task="segment", classes=("bg", "disc", "bar"), input_size=(64, 64))
    path = tmp_path / "fcn.onnx"
    export_model(model, path, metadata, ExportConfig(dynamic=True))
    session = OnnxModel(path, "cpu")
    for batch, height, width in [(1, 64, 64), (3, 45, 77)]:
        images = torch.randn(batch, 3, height, width)
        with torch.no_grad():
            expected = model(images).numpy()
        got = session.run(images.numpy())["logits"]
        assert got.shape == (batch, 3, height, width)
        np.testing.assert_allclose(got, expected, atol=1e-4)
        assert (got.argmax(1) == expected.argmax(1)).mean() > 0.999

    # The runtime's masks at the original size equal the torch pipeline's: letterbox, model,
    # crop the padding, bilinear resize of the logits, arg-max.
    rng = np.random.default_rng(0)
    originals = [rng.integers(0, 256, size, dtype=np.uint8) for size in [(70, 120, 3), (90, 90, 3)]]
    results = Segmenter(path, providers="cpu").predict(originals)
    mean, std = np.array(metadata.mean) * 255, np.array(metadata.std) * 255
    for original, result in zip(originals, results, strict=True):
        fitted, (sx, sy) = fit_to_input(original, 64, "letterbox")
        tensor = torch.from_numpy(((fitted - mean) / std).astype(np.float32)).permute(2, 0, 1)
        with torch.no_grad():
            logits = model(tensor[None])
        height, width = original.shape[:2]
        valid = logits[:, :, : round(height * sy), : round(width * sx)]
        resized = F.interpolate(valid, size=(height, width), mode="bilinear", align_corners=False)
        expected_mask = resized[0].argmax(0).numpy()
        assert result.mask.shape == (height, width)
        assert (result.mask == expected_mask).mean() > 0.999
