"""VGG feature taps: named layers equal torchvision's ``vgg19().features`` at the same indices."""

import pytest
import torch
import torchvision

from cvkit.errors import ConfigError
from cvkit.models.backbones import create_backbone

torch.set_num_threads(2)

# torchvision vgg19().features indices, counted by hand from its layer list
# (conv, relu per convolution; a pool after each block of 2, 2, 4, 4, 4 convolutions).
TORCHVISION_INDEX = {
    "relu1_1": 1,
    "relu2_1": 6,
    "relu3_1": 11,
    "relu4_1": 20,
    "conv4_2": 21,
    "relu4_2": 22,
    "relu5_1": 29,
    "relu5_4": 35,
    "pool5": 36,
}


def test_vgg19_taps_equal_torchvision_features(tmp_path):
    torch.manual_seed(0)
    # torchvision's own vgg19 ``features`` builder (the 100M-parameter classifier is skipped
    # to keep the test fast; cvkit's loader ignores ``classifier.*`` keys anyway)
    features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["E"]).eval()
    path = tmp_path / "vgg19.pth"
    torch.save({f"features.{key}": value for key, value in features.state_dict().items()}, path)
    backbone = create_backbone("vgg19", pretrained=path).eval()
    image = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        got = backbone.taps(image, list(TORCHVISION_INDEX))
        expected = {}
        x = image
        for index, layer in enumerate(features):
            x = layer(x)
            # torchvision's ReLUs work in place too: copy before the next layer runs
            expected[index] = x.clone()
    assert list(got) == list(TORCHVISION_INDEX)  # layer order
    for name, index in TORCHVISION_INDEX.items():
        torch.testing.assert_close(got[name], expected[index], rtol=0, atol=0, msg=name)
    # the conv4_2 tap is the pre-activation (negative values survive the in-place ReLU)
    assert bool((got["conv4_2"] < 0).any())


def test_tap_names_cover_every_layer_and_bad_names_are_named():
    backbone = create_backbone("vgg16_bn_tiny")
    names = backbone.tap_names
    assert len(names) == len(backbone.features)
    assert names[:4] == ["conv1_1", "bn1_1", "relu1_1", "conv1_2"]
    assert names[-1] == "pool5" and "relu5_3" in names and "relu5_4" not in names
    with pytest.raises(ConfigError, match="relu9_9"):
        backbone.taps(torch.zeros(1, 3, 8, 8), ["relu1_1", "relu9_9"])


# torchvision's FX node names for these modules equal the module paths (each runs once)
RESNET_LAYERS = ["layer1.0.bn1", "layer2.1.bn2", "layer3", "layer4.0.downsample.1", "relu"]


def test_any_backbone_taps_equal_torchvision_feature_extraction(tmp_path):
    from torchvision.models.feature_extraction import create_feature_extractor

    torch.manual_seed(0)
    reference = torchvision.models.resnet18(num_classes=10).eval()
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    backbone = create_backbone("resnet18", pretrained=path).eval()
    assert set(RESNET_LAYERS) <= set(backbone.tap_names)
    image = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        got = backbone.taps(image, RESNET_LAYERS)
        expected = create_feature_extractor(reference, RESNET_LAYERS)(image)
        # torchvision's FX output of a node followed by an in-place ReLU is the post-ReLU
        # tensor, so the BatchNorm output is computed from torchvision's modules by hand
        stem = reference.maxpool(reference.relu(reference.bn1(reference.conv1(image))))
        block = reference.layer1[0]
        expected["layer1.0.bn1"] = block.bn1(block.conv1(stem))
    # the order the layers ran in, whatever order they were asked in
    assert list(got) == ["relu", "layer1.0.bn1", "layer2.1.bn2", "layer3", "layer4.0.downsample.1"]
    for name in RESNET_LAYERS:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-5, msg=name)
    # the BatchNorm output before the block's in-place ReLU: copied before the ReLU ran
    assert bool((got["layer1.0.bn1"] < 0).any())


def test_a_shared_module_and_unknown_layers_are_named():
    backbone = create_backbone("resnet18", width_mult=0.25).eval()
    image = torch.zeros(1, 3, 32, 32)
    with pytest.raises(ConfigError, match=r"layer1\.0\.relu.*more than once"):
        backbone.taps(image, ["layer1.0.relu"])
    with pytest.raises(ConfigError, match="layer9"):
        backbone.taps(image, ["layer9"])
