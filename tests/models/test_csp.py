"""CSPDarknet: stage shapes and strides per size, parameter counts against a closed-form count
from the width and depth multipliers, SPPF against brute-force parallel pools, and the YOLO
detector on it."""

import pytest
import torch
import torch.nn.functional as F

from cvkit.config import load_config
from cvkit.geometry import Geometry
from cvkit.models.backbones import create_backbone
from cvkit.models.backbones.cspdarknet import SPPF
from cvkit.models.build import build_model
from cvkit.structures import Target

STAGES = ["stem", "stage2", "stage3", "stage4", "stage5"]
# size -> (widths of the five stages, bottlenecks of stages 2..5), by hand: base widths 64, 128,
# 256, 512, 1024 (m caps 1024 at 768) times 0.25 / 0.5 / 0.75; base depths 3, 6, 6, 3 times
# 0.33 / 0.33 / 0.67, rounded.
SIZES = {
    "n": ((16, 32, 64, 128, 256), (1, 2, 2, 1)),
    "s": ((32, 64, 128, 256, 512), (1, 2, 2, 1)),
    "m": ((48, 96, 192, 384, 576), (2, 4, 4, 2)),
}


def _conv(cin: int, cout: int, kernel: int) -> int:
    """Parameters of conv (no bias) + BatchNorm (weight, bias)."""
    return cin * cout * kernel * kernel + 2 * cout


def _csp(channels: int, depth: int) -> int:
    half = channels // 2
    bottlenecks = depth * 2 * _conv(half, half, 3)
    return _conv(channels, 2 * half, 1) + bottlenecks + _conv((2 + depth) * half, channels, 1)


def _expected_parameters(widths, depths) -> int:
    total = _conv(3, widths[0], 3)
    for index, depth in enumerate(depths):
        total += _conv(widths[index], widths[index + 1], 3) + _csp(widths[index + 1], depth)
    last = widths[-1]
    return total + _conv(last, last // 2, 1) + _conv(2 * last, last, 1)  # SPPF


@pytest.mark.parametrize("size", sorted(SIZES))
def test_stage_shapes_strides_and_parameter_count(size):
    widths, depths = SIZES[size]
    backbone = create_backbone(f"cspdarknet_{size}", out_features=STAGES).eval()
    with torch.no_grad():
        features = backbone(torch.randn(1, 3, 72, 100))
    # 3x3 stride-2 convs with padding 1 halve rounding up: 72x100 -> 36x50 -> ... -> 3x4
    sides = [(36, 50), (18, 25), (9, 13), (5, 7), (3, 4)]
    assert [tuple(f.shape) for f in features.values()] == [
        (1, c, *hw) for c, hw in zip(widths, sides, strict=True)
    ]
    assert backbone.strides == dict(zip(STAGES, [2, 4, 8, 16, 32], strict=True))
    assert list(backbone.channels.values()) == list(widths)
    count = sum(p.numel() for p in backbone.parameters())
    assert count == _expected_parameters(widths, depths)


def test_width_mult_scales_on_top_of_the_size():
    backbone = create_backbone("cspdarknet_s", out_features=STAGES, width_mult=0.5)
    assert list(backbone.channels.values()) == list(SIZES["n"][0])
    count = sum(p.numel() for p in backbone.parameters())
    assert count == _expected_parameters(*SIZES["n"])


def _parallel_pool(x: torch.Tensor, kernel: int) -> torch.Tensor:
    """Stride-1 max over each ``kernel``-wide window (outside the map ignored), by shifting."""
    radius = kernel // 2
    padded = F.pad(x, (radius,) * 4, value=float("-inf"))
    height, width = x.shape[-2:]
    shifts = [
        padded[..., dy : dy + height, dx : dx + width]
        for dy in range(kernel)
        for dx in range(kernel)
    ]
    return torch.stack(shifts).amax(0)


def test_sppf_cascaded_pools_equal_parallel_pools_of_5_9_13():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 11, 7)  # smaller than the widest window: borders matter
    pyramid = SPPF(6, 6).pyramid(x)
    reference = torch.cat([x, *(_parallel_pool(x, k) for k in (5, 9, 13))], 1)
    assert torch.equal(pyramid, reference)


def test_yolo_on_cspdarknet_reads_strides_8_16_32_and_trains_every_parameter():
    torch.manual_seed(0)
    config = load_config(
        None,
        [
            "task=detect",
            "model.name=yolo",
            "model.backbone=cspdarknet_n",
            "model.out_features=[stage3,stage4,stage5]",
        ],
    )
    model = build_model(config, 2)
    assert model.strides == [8, 16, 32]
    images = torch.randn(1, 3, 64, 64)
    geometry = Geometry((64, 64), (1.0, 1.0))
    target = Target(torch.tensor([[8.0, 8.0, 40.0, 30.0]]), torch.tensor([1]), geometry)
    sum(model(images, [target]).values()).backward()
    missing = [n for n, p in model.backbone.named_parameters() if p.grad is None]
    assert not missing
    model.eval()
    with torch.no_grad():
        boxes, scores = model.candidates(images)
    assert boxes.shape == (1, 8 * 8 + 4 * 4 + 2 * 2, 4) and scores.shape == (1, 84, 2)
