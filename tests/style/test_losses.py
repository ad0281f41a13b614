"""Gram matrix, content/style/TV losses against hand-computed values; Gatys optimisation."""

import pytest
import torch
import torch.nn.functional as F

from cvkit.errors import ConfigError
from cvkit.style.gatys import GatysOptions, preserve_colour, stylize
from cvkit.style.losses import (
    PerceptualLoss,
    build_loss_network,
    content_loss,
    gram_matrix,
    style_loss,
    total_variation,
)

torch.set_num_threads(2)


def test_gram_matrix_by_hand():
    # C=2 channels of H=1, W=2: F = [[1, 2], [3, 4]], F Fᵀ = [[5, 11], [11, 25]], / (2*1*2)
    features = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]]])
    expected = torch.tensor([[[1.25, 2.75], [2.75, 6.25]]])
    torch.testing.assert_close(gram_matrix(features), expected)


def test_losses_by_hand():
    features = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]]])
    target = torch.zeros(1, 2, 1, 2)
    # mean of 1, 4, 9, 16
    assert float(content_loss(features, target)) == pytest.approx(7.5)
    # Gram [[1.25, 2.75], [2.75, 6.25]] against zeros:
    # squares 1.5625 + 2 * 7.5625 + 39.0625 = 55.75, mean over 4 entries
    zero_gram = torch.zeros(1, 2, 2)
    assert float(style_loss([features], [zero_gram])) == pytest.approx(55.75 / 4)
    # two layers add up
    assert float(style_loss([features, features], [zero_gram, zero_gram])) == pytest.approx(
        2 * 55.75 / 4
    )
    # 2x2 image [[0, 1], [3, 5]]: vertical diffs 3, 4 → mean 12.5; horizontal 1, 2 → 2.5
    image = torch.tensor([[[[0.0, 1.0], [3.0, 5.0]]]])
    assert float(total_variation(image)) == pytest.approx(15.0)


@pytest.fixture(scope="module")
def network():
    torch.manual_seed(0)
    return build_loss_network(None, depth=19, width_mult=0.25)


def _image(seed, size=32):
    return torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_one_step_lowers_the_total_loss(network):
    content, style = _image(1), _image(2)
    loss = PerceptualLoss(network, [style], style_weight=1e3, tv_weight=1.0)
    target = loss.content_features(content)
    before = sum(loss(content, target).values())
    for optimizer in ("lbfgs", "adam"):
        options = GatysOptions(steps=1, optimizer=optimizer, progress=False)
        result = stylize(content, loss, options)
        after = sum(loss(result.image, target).values())
        assert float(after) < float(before), optimizer
        assert result.history[0]["total"] == pytest.approx(float(before), rel=1e-5)


def test_lbfgs_does_not_depend_on_the_scale_of_the_loss(network):
    # the same objective times 1e-4 must take the same path (L-BFGS's absolute thresholds
    # would otherwise stall it on small, mean-reduced losses)
    content, style = _image(8), _image(9)
    results = []
    for factor in (1.0, 1e-4):
        loss = PerceptualLoss(
            network,
            [style],
            content_weight=factor,
            style_weight=1e3 * factor,
            tv_weight=factor,
        )
        results.append(stylize(content, loss, GatysOptions(steps=6, progress=False)))
    moved = float((results[0].image - content).abs().max())
    apart = float((results[0].image - results[1].image).abs().max())
    assert apart < 0.05 * moved  # rounding differences only, against a clear change
    for result in results:
        assert result.history[-1]["total"] < 0.9 * result.history[0]["total"]


def test_content_only_run_converges_to_the_content_image(network):
    # a smooth image (random 4x4 upsampled): what a shallow random network can pin down
    coarse = torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(3))
    content = F.interpolate(coarse, size=(32, 32), mode="bicubic").clamp(0, 1)
    loss = PerceptualLoss(network, [], content_layer="relu1_2", style_weight=0.0)
    options = GatysOptions(steps=80, init="noise", progress=False)
    result = stylize(content, loss, options)
    start = torch.rand(content.shape, generator=torch.Generator().manual_seed(0))
    error = (result.image - content).abs().mean()
    assert float(error) < 0.02 < 0.3 < float((start - content).abs().mean())
    assert result.history[-1]["total"] < 1e-2 * result.history[0]["total"]


def test_coarse_to_fine_and_intermediate_saves(network, tmp_path):
    content, style = _image(4, 48), _image(5)
    loss = PerceptualLoss(network, [style, content], style_blend=[2.0, 1.0], style_weight=1e3)
    options = GatysOptions(steps=2, levels=2, save_every=2, save_dir=tmp_path, progress=False)
    result = stylize(content, loss, options)
    assert result.image.shape == content.shape
    assert [row["level"] for row in result.history] == [0, 0, 1, 1]
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "level0_step0002.png",
        "level1_step0002.png",
    ]


def test_preserve_colour_keeps_the_content_chroma_and_the_result_luminance():
    # values in 0.4..0.6, so the mix stays inside 0..1 (no clipping)
    stylised, content = _image(6) * 0.2 + 0.4, _image(7) * 0.2 + 0.4
    mixed = preserve_colour(stylised, content)
    weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    torch.testing.assert_close((mixed * weights).sum(1), (stylised * weights).sum(1))
    # chroma: Cb, Cr are the differences from luminance, scaled
    luma_c, luma_m = (content * weights).sum(1), (mixed * weights).sum(1)
    torch.testing.assert_close(mixed[:, 2] - luma_m, content[:, 2] - luma_c, atol=2e-6, rtol=0)
    torch.testing.assert_close(mixed[:, 0] - luma_m, content[:, 0] - luma_c, atol=2e-6, rtol=0)


def test_bad_style_settings_are_named(network):
    with pytest.raises(ConfigError, match="style-weights"):
        PerceptualLoss(network, [_image(1)], style_blend=[1.0, 2.0])
    with pytest.raises(ConfigError, match="style image"):
        PerceptualLoss(network, [])
    with pytest.raises(ConfigError, match="optimizer"):
        GatysOptions(optimizer="sgd")
