"""Filter grids of hand-set kernels, and feature maps equal to forward hooks and direct
computation."""

import numpy as np
import pytest
import torch
from torch import nn

from cvkit.errors import InputError
from cvkit.insight.features import feature_grid, module_outputs, stage_outputs
from cvkit.insight.filters import filter_grid, find_conv
from cvkit.models.backbones import create_backbone


def cell(grid, row, column, size, padding=1):
    """The pixels of grid cell (row, column) for cells of ``size`` pixels."""
    y, x = padding + row * (size + padding), padding + column * (size + padding)
    return grid[y : y + size, x : x + size]


def test_filter_grid_of_hand_set_kernels():
    conv = nn.Conv2d(3, 3, 2, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0] = torch.tensor([[0.0, 1.0], [2.0, 4.0]])  # red ramp, min 0, max 4
        conv.weight[1] = -1.0  # constant filter: grey
        conv.weight[2, 2, 1, 0] = 3.0  # one blue cell on zeros
    grid = filter_grid(conv.weight, scale=3, columns=2)
    assert grid.shape == (1 + 2 * (6 + 1), 1 + 2 * (6 + 1), 3)
    first = cell(grid, 0, 0, 6)
    expected_red = np.array([[0, 1], [2, 4]]) / 4 * 255
    np.testing.assert_array_equal(first[..., 0], np.kron(expected_red, np.ones((3, 3))).round())
    assert (first[..., 1:] == 0).all()  # green and blue are 0 = the filter's minimum
    assert (cell(grid, 0, 1, 6) == 128).all()  # 0.5 * 255 rounded
    third = cell(grid, 1, 0, 6)
    assert (third[3:, :3, 2] == 255).all() and third.sum() == 255 * 9
    assert (grid[0] == 255).all() and (cell(grid, 1, 1, 6) == 255).all()  # padding, empty slot


def test_filter_grid_of_single_channel_filters_is_the_channel_mean_in_grey():
    weight = torch.zeros(1, 2, 1, 2)
    weight[0, 0] = torch.tensor([[1.0, 3.0]])  # mean over the 2 channels: [0.5, 1.5]
    grid = filter_grid(weight, scale=1, padding=0)
    np.testing.assert_array_equal(grid[0], [[0, 0, 0], [255, 255, 255]])


def test_find_conv_default_and_bad_name():
    model = nn.Sequential(nn.ReLU(), nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 1))
    assert find_conv(model) == ("1", model[1])
    assert find_conv(model, "2")[1] is model[2]
    with pytest.raises(InputError, match="'0': not a Conv2d"):
        find_conv(model, "0")


def test_feature_maps_equal_forward_hooks_and_the_stage_outputs():
    torch.manual_seed(0)
    backbone = create_backbone("resnet18_tiny", out_features=["layer2", "layer3"]).eval()
    images = torch.randn(2, 3, 64, 64)
    # a forward hook written here, on the same modules
    seen = {}
    handles = [
        getattr(backbone, name).register_forward_hook(
            lambda m, i, o, name=name: seen.setdefault(name, o.detach())
        )
        for name in ("layer1", "layer2")
    ]
    with torch.no_grad():
        returned = backbone(images)
    for handle in handles:
        handle.remove()
    maps = module_outputs(backbone, ["layer1", "layer2", "conv1"], lambda: backbone(images))
    torch.testing.assert_close(maps["layer1"], seen["layer1"], rtol=0, atol=0)
    torch.testing.assert_close(maps["layer2"], returned["layer2"], rtol=0, atol=0)
    torch.testing.assert_close(maps["conv1"], backbone.conv1(images).detach(), rtol=0, atol=0)
    assert not backbone.conv1._forward_hooks  # hooks removed
    stages = stage_outputs(backbone, images)
    assert list(stages) == backbone.stage_names
    torch.testing.assert_close(stages["layer2"], returned["layer2"], rtol=0, atol=0)
    torch.testing.assert_close(stages["layer3"], returned["layer3"], rtol=0, atol=0)
    with pytest.raises(InputError, match="layer9"):
        module_outputs(backbone, ["layer9"], lambda: backbone(images))


def test_feature_grid_shows_the_most_active_channels_scaled():
    feature = torch.zeros(3, 2, 2)
    feature[1] = torch.tensor([[0.0, 1.0], [2.0, 3.0]])  # most active
    feature[2] = -5.0
    grid = feature_grid(feature, channels=1, scale=1)
    from matplotlib import colormaps

    expected = colormaps["viridis"](np.array([[0, 1 / 3], [2 / 3, 1]]))[..., :3] * 255
    np.testing.assert_array_equal(grid, expected.round())  # one map: no padding
