"""Backbones: feature shapes/strides, gradients, torchvision weight compatibility, bad files."""

import pytest
import torch
from torchvision.models.feature_extraction import create_feature_extractor

from cvkit.errors import CheckpointError, ConfigError
from cvkit.models.backbones import create_backbone, list_backbones, scale_channels

torch.set_num_threads(2)

# name -> {stage: (channels, side at 64x64 input, side at 224x224 input, stride)}, computed by
# hand from each architecture's kernel/stride/padding arithmetic.
EXPECTED = {
    "resnet18": {
        "stem": (64, 16, 56, 4),
        "layer1": (64, 16, 56, 4),
        "layer2": (128, 8, 28, 8),
        "layer3": (256, 4, 14, 16),
        "layer4": (512, 2, 7, 32),
    },
    "resnet50": {
        "stem": (64, 16, 56, 4),
        "layer1": (256, 16, 56, 4),
        "layer2": (512, 8, 28, 8),
        "layer3": (1024, 4, 14, 16),
        "layer4": (2048, 2, 7, 32),
    },
}
EXPECTED["vgg11_bn"] = {
    "conv1": (64, 64, 224, 1),
    "conv2": (128, 32, 112, 2),
    "conv3": (256, 16, 56, 4),
    "conv4": (512, 8, 28, 8),
    "conv5": (512, 4, 14, 16),
    "pool5": (512, 2, 7, 32),
}
# 11x11/4 pad 2 then 3x3/2 pools: 64 -> 15 -> 7 -> 3 -> 1 and 224 -> 55 -> 27 -> 13 -> 6.
EXPECTED["alexnet"] = {
    "conv1": (64, 15, 55, 4),
    "conv2": (192, 7, 27, 8),
    "conv5": (256, 3, 13, 16),
    "pool5": (256, 1, 6, 32),
}
EXPECTED["nin"] = {
    "block1": (96, 15, 55, 4),
    "block2": (256, 7, 27, 8),
    "block3": (384, 3, 13, 16),
    "pool3": (384, 1, 6, 32),
}
EXPECTED["nin_bn"] = EXPECTED["nin"]
# ceil-mode pools: 64 -> 32 -> 16 -> 8 -> 4 -> 2.
EXPECTED["googlenet"] = {
    "stem": (192, 16, 56, 4),
    "inception3": (480, 8, 28, 8),
    "inception4": (832, 4, 14, 16),
    "inception5": (1024, 2, 7, 32),
}
# conv1 is padded (size kept, then pooled), conv2 is not: 64 -> 32 -> 28 -> 14.
EXPECTED["lenet"] = {"conv1": (6, 32, 112, 2), "conv2": (16, 14, 54, 4)}
EXPECTED["lenet_classic"] = EXPECTED["lenet"]
# The tiny variant has a quarter of the channels at the same resolutions.
EXPECTED["resnet18_tiny"] = {k: (c // 4, *rest) for k, (c, *rest) in EXPECTED["resnet18"].items()}

# cvkit stage -> torchvision graph node whose output it must equal after loading the weights.
# VGG-16 and AlexNet are compared logit for logit in test_transfer.py.
TORCHVISION_NODES = {
    "resnet18": {"layer2": "layer2", "layer4": "layer4"},
    "resnet50": {"stem": "maxpool", "layer4": "layer4"},
    "googlenet": {"stem": "conv3", "inception4": "inception4e", "inception5": "inception5b"},
}
TINY = ["resnet18_tiny", "resnet34_tiny", "resnet50_tiny", "vgg11_bn_tiny", "vgg11_tiny"]
TINY += ["alexnet_tiny", "googlenet_tiny", "nin_tiny", "nin_bn_tiny", "lenet", "lenet_classic"]


@pytest.mark.parametrize("name", sorted(EXPECTED))
@pytest.mark.parametrize("size", [64, 224])
def test_feature_shapes_and_strides(name, size):
    stages = EXPECTED[name]
    backbone = create_backbone(name, out_features=list(stages)).eval()
    with torch.no_grad():
        features = backbone(torch.randn(1, 3, size, size))
    assert list(features) == list(stages)
    column = 1 if size == 64 else 2
    for stage, expected in stages.items():
        assert tuple(features[stage].shape) == (1, expected[0], expected[column], expected[column])
        assert backbone.channels[stage] == expected[0]
        assert backbone.strides[stage] == expected[3]


@pytest.mark.parametrize("name", TINY)
def test_forward_backward_reaches_every_parameter(name):
    backbone = create_backbone(name, out_features=None)
    (out,) = backbone(torch.randn(2, 3, 64, 64)).values()
    out.square().mean().backward()
    missing = [n for n, p in backbone.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing


def test_default_output_is_last_stage_and_stops_early():
    backbone = create_backbone("resnet18_tiny")
    assert list(backbone(torch.randn(1, 3, 64, 64))) == ["layer4"]
    backbone.set_out_features(["layer2"])
    calls = []
    backbone.layer3.register_forward_hook(lambda *_: calls.append(1))
    assert list(backbone(torch.randn(1, 3, 64, 64))) == ["layer2"]
    assert not calls


def test_out_features_are_returned_in_stage_order():
    backbone = create_backbone("resnet18_tiny", out_features=["layer4", "layer2"])
    assert list(backbone.channels) == ["layer2", "layer4"]


def test_unknown_stage_and_backbone_are_config_errors():
    with pytest.raises(ConfigError, match="layer9"):
        create_backbone("resnet18_tiny", out_features=["layer9"])
    with pytest.raises(ConfigError, match="resnet18_tiny"):
        create_backbone("resnet19")


def test_width_mult_scales_channels():
    assert scale_channels(64, 1.0) == 64 and scale_channels(6, 1.0) == 6
    assert scale_channels(64, 0.5) == 32 and scale_channels(64, 0.01) == 8
    backbone = create_backbone("resnet18", width_mult=0.5, out_features=["layer4"])
    assert backbone.channels == {"layer4": 256}
    tiny = create_backbone("resnet18_tiny", width_mult=0.5, out_features=["layer4"])
    assert tiny.channels == {"layer4": 64}


@pytest.mark.filterwarnings("ignore:NOTE. The nodes obtained by tracing")
@pytest.mark.parametrize("name", sorted(TORCHVISION_NODES))
def test_torchvision_weights_give_identical_features(name, torchvision_file):
    reference, path = torchvision_file(name)
    nodes = TORCHVISION_NODES[name]
    backbone = create_backbone(name, pretrained=path, out_features=list(nodes)).eval()
    extractor = create_feature_extractor(reference, return_nodes=list(nodes.values()))
    image = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        ours = backbone(image)
        theirs = extractor(image)
    for stage, node in nodes.items():
        torch.testing.assert_close(ours[stage], theirs[node], rtol=0, atol=0)


def test_grey_input_adapts_pretrained_stem(torchvision_file):
    _, path = torchvision_file("resnet18")
    grey = create_backbone("resnet18", pretrained=path, in_channels=1).eval()
    rgb = create_backbone("resnet18", pretrained=path).eval()
    image = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(grey(image)["layer4"], rgb(image.expand(1, 3, 64, 64))["layer4"])


def test_missing_corrupt_and_mismatched_files_raise_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        create_backbone("resnet18_tiny", pretrained=tmp_path / "absent.pth")
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match=r"corrupt\.pth"):
        create_backbone("resnet18_tiny", pretrained=corrupt)
    truncated = tmp_path / "truncated.pth"
    torch.save(create_backbone("resnet18_tiny").state_dict(), truncated)
    truncated.write_bytes(truncated.read_bytes()[:2000])
    with pytest.raises(CheckpointError, match=r"truncated\.pth"):
        create_backbone("resnet18_tiny", pretrained=truncated)
    other = tmp_path / "resnet34_tiny.pth"
    torch.save(create_backbone("resnet34_tiny").state_dict(), other)
    with pytest.raises(CheckpointError, match="unexpected"):
        create_backbone("resnet18_tiny", pretrained=other)
    with pytest.raises(CheckpointError, match="shape"):
        create_backbone("resnet34", pretrained=other)


def test_registry_lists_the_families():
    names = set(list_backbones())
    families = ["resnet18", "resnet34", "resnet50", "alexnet", "googlenet", "nin", "lenet"]
    families += [f"vgg{d}{bn}" for d in (11, 13, 16, 19) for bn in ("", "_bn")]
    assert {*families, "lenet_classic", "nin_bn", "resnet18_tiny", "vgg16_bn_tiny"} <= names
