"""Necks: FPN against torchvision's FeaturePyramidNetwork, declared output shapes against the
maps a forward returns, the registry, and SSD's extra blocks as a neck (same keys, weights and
outputs as the blocks SSD built itself before)."""

import hashlib
import re
from collections import OrderedDict

import pytest
import torch
from torch import nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from cvkit.config.model import SSDConfig
from cvkit.errors import ConfigError
from cvkit.models.backbones import create_backbone
from cvkit.models.detection.ssd import SSD
from cvkit.models.necks import (
    FPN,
    Neck,
    ShapeSpec,
    SSDExtras,
    backbone_shapes,
    build_neck,
    extra_block,
    list_necks,
    register_neck,
)

torch.set_num_threads(2)
STAGES = ["layer2", "layer3", "layer4"]


def tiny_backbone():
    return create_backbone("resnet18_tiny", out_features=STAGES).eval()


def torchvision_to_cvkit_fpn(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The documented mapping: ``inner_blocks.<i>.0.*`` → ``lateral.<i>.*``,
    ``layer_blocks.<i>.0.*`` → ``output.<i>.*``."""
    renames = {"inner_blocks": "lateral", "layer_blocks": "output"}
    return {
        re.sub(
            r"^(inner_blocks|layer_blocks)\.(\d+)\.0\.", lambda m: f"{renames[m[1]]}.{m[2]}.", key
        ): value
        for key, value in state.items()
    }


def fpn_pair(shapes: OrderedDict, out_channels: int, pool: bool) -> tuple[FPN, nn.Module]:
    """Our FPN holding the weights of a torchvision FPN whose biases are randomized too."""
    torch.manual_seed(0)
    reference = FeaturePyramidNetwork(
        [s.channels for s in shapes.values()],
        out_channels,
        extra_blocks=LastLevelMaxPool() if pool else None,
    ).eval()
    with torch.no_grad():
        for name, parameter in reference.named_parameters():
            if name.endswith("bias"):
                parameter.uniform_(-0.5, 0.5)
    ours = FPN(shapes, out_channels=out_channels, extra_max_pool=pool).eval()
    ours.load_state_dict(torchvision_to_cvkit_fpn(reference.state_dict()), strict=True)
    return ours, reference


@pytest.mark.parametrize("pool", [False, True])
def test_fpn_equals_torchvision_on_odd_non_square_levels(pool):
    shapes = OrderedDict(
        [("c3", ShapeSpec(8, 8)), ("c4", ShapeSpec(16, 16)), ("c5", ShapeSpec(24, 32))]
    )
    ours, reference = fpn_pair(shapes, 12, pool)
    generator = torch.Generator().manual_seed(1)
    sizes = [(25, 13), (13, 7), (7, 3)]  # odd: each coarser level is ceil(size / 2)
    features = OrderedDict(
        (name, torch.randn(2, s.channels, *size, generator=generator))
        for (name, s), size in zip(shapes.items(), sizes, strict=True)
    )
    with torch.no_grad():
        expected = reference(features)
        got = ours(features)
        from_list = ours(list(features.values()))
    assert list(got) == list(expected) == list(ours.output_shapes)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0)
        torch.testing.assert_close(from_list[name], expected[name], rtol=0, atol=0)
    if pool:
        assert got["pool"].shape[-2:] == (4, 2)


def test_fpn_equals_torchvision_on_a_backbone():
    backbone = tiny_backbone()
    ours, reference = fpn_pair(backbone_shapes(backbone), 16, True)
    with torch.no_grad():
        features = backbone(torch.randn(1, 3, 99, 61, generator=torch.Generator().manual_seed(2)))
        assert [tuple(f.shape[-2:]) for f in features.values()] == [(13, 8), (7, 4), (4, 2)]
        expected, got = reference(features), ours(features)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name])


def test_fpn_initialization_matches_torchvision():
    """Same seed, same weights: the same default draws, then the same re-initialization order."""
    shapes = OrderedDict(
        [("a", ShapeSpec(8, 4)), ("b", ShapeSpec(16, 8)), ("c", ShapeSpec(24, 16))]
    )
    torch.manual_seed(3)
    reference = FeaturePyramidNetwork([8, 16, 24], 12)
    torch.manual_seed(3)
    ours = FPN(shapes, out_channels=12)
    mapped = torchvision_to_cvkit_fpn(reference.state_dict())
    assert set(mapped) == set(ours.state_dict())
    for key, value in ours.state_dict().items():
        assert torch.equal(value, mapped[key]), key


@pytest.mark.parametrize(
    ("name", "options", "extra_names"),
    [
        ("fpn", {"out_channels": 24}, []),
        ("fpn", {"out_channels": 24, "extra_max_pool": True}, ["pool"]),
        ("ssd_extras", {"num_blocks": 2, "channels": 40}, ["extra0", "extra1"]),
    ],
)
def test_output_shapes_describe_the_forward(name, options, extra_names):
    backbone = tiny_backbone()
    neck = build_neck(name, backbone_shapes(backbone), **options).eval()
    assert list(neck.input_shapes) == STAGES
    assert list(neck.output_shapes) == STAGES + extra_names
    height, width = 128, 256  # divisible by every stride: sizes are exact
    with torch.no_grad():
        outputs = neck(backbone(torch.zeros(2, 3, height, width)))
    assert list(outputs) == list(neck.output_shapes)
    strides = [spec.stride for spec in neck.output_shapes.values()]
    assert strides == sorted(strides) and strides[:3] == [8, 16, 32]
    for level, spec in neck.output_shapes.items():
        assert outputs[level].shape == (
            2,
            spec.channels,
            height // spec.stride,
            width // spec.stride,
        )
    if name == "fpn":
        assert {spec.channels for spec in neck.output_shapes.values()} == {24}


def test_registry_lists_builds_and_rejects():
    assert {"fpn", "ssd_extras"} <= set(list_necks())
    shapes = OrderedDict([("x", ShapeSpec(8, 4))])
    assert isinstance(build_neck("ssd_extras", shapes, num_blocks=1), SSDExtras)
    with pytest.raises(ConfigError, match=r"unknown neck 'bifpn'.*fpn"):
        build_neck("bifpn", shapes)
    with pytest.raises(ConfigError, match=r"neck 'fpn'.*out_chanels"):
        build_neck("fpn", shapes, out_chanels=8)
    with pytest.raises(ConfigError, match=r"fpn: out_channels"):
        build_neck("fpn", shapes, out_channels=0)
    with pytest.raises(ValueError, match="registered twice"):
        register_neck("fpn")(FPN)


def test_neck_inputs_are_checked():
    shapes = OrderedDict([("fine", ShapeSpec(8, 4)), ("coarse", ShapeSpec(8, 8))])
    neck = FPN(shapes, out_channels=8)
    with pytest.raises(ValueError, match=r"missing input levels \['coarse'\]"):
        neck({"fine": torch.zeros(1, 8, 4, 4)})
    with pytest.raises(ValueError, match="expects 2 input levels"):
        neck([torch.zeros(1, 8, 4, 4)])
    with pytest.raises(ConfigError, match="finest first"):
        FPN(OrderedDict(reversed(shapes.items())))
    with pytest.raises(ConfigError, match="at least one input"):
        Neck({})


# The SSD of these options, built with seed 0 by the code before SSD's extras became a neck.
SSD_OPTIONS = {"extra_blocks": 2, "extra_channels": 32}
OLD_KEY_COUNT = 164
OLD_KEYS_SHA256 = "1e0802bc1f08821f8b9054f796e8fee59905e10fc9cdc0062c1b945e03ebb265"
OLD_WEIGHTED_SUM = 227504.14589186732  # sum over float tensors of (index + 1) * tensor.sum()
OLD_EXTRAS_KEYS = [
    f"extras.{block}.{layer}.{tensor}"
    for block in (0, 1)
    for layer, tensors in (
        (0, ["weight"]),
        (1, ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]),
        (3, ["weight"]),
        (4, ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]),
    )
    for tensor in tensors
]


def seeded_ssd() -> SSD:
    torch.manual_seed(0)
    return SSD(tiny_backbone(), 3, SSDConfig(**SSD_OPTIONS)).eval()


def test_ssd_state_dict_is_unchanged_by_the_neck():
    """Old checkpoints load: same keys, and the same seed gives the same weights."""
    state = seeded_ssd().state_dict()
    keys = list(state)
    assert len(keys) == OLD_KEY_COUNT
    assert hashlib.sha256("\n".join(keys).encode()).hexdigest() == OLD_KEYS_SHA256
    assert [k for k in keys if k.startswith("extras.")] == OLD_EXTRAS_KEYS
    weighted = sum(
        (index + 1) * value.double().sum().item()
        for index, value in enumerate(state.values())
        if value.is_floating_point()
    )
    assert weighted == pytest.approx(OLD_WEIGHTED_SUM, rel=1e-12)


def test_ssd_extras_equal_the_old_blocks():
    """The blocks SSD chained itself before (a ModuleList of ``extra_block``), same seed."""
    ssd = seeded_ssd()
    assert isinstance(ssd.extras, SSDExtras) and len(ssd.extras) == 2
    torch.manual_seed(0)
    backbone = tiny_backbone()
    width = SSD_OPTIONS["extra_channels"]
    old_extras = nn.ModuleList(
        [extra_block(backbone.channels["layer4"], width), extra_block(width, width)]
    ).eval()
    for key, value in old_extras.state_dict().items():
        assert torch.equal(ssd.extras.state_dict()[key], value)
    with torch.no_grad():
        images = torch.randn(2, 3, 96, 80, generator=torch.Generator().manual_seed(5))
        expected = list(backbone(images).values())
        for block in old_extras:
            expected.append(block(expected[-1]))
        got = ssd.features(images)
    assert len(got) == len(expected) == 5
    for level, reference in zip(got, expected, strict=True):
        assert torch.equal(level, reference)
