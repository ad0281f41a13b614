"""R-CNN's stages: warped crops, the per-class SVMs with hard-negative mining, the box regressors,
and the SVM stage fitted through the Trainer and carried by the checkpoint.

References: a hand computation of bilinear warping (a linear ramp is interpolated exactly), the
SVM's own margins on every feature it was trained on, a known linear offset map, and the
detections of the trained model against those of the model rebuilt from its checkpoint.
"""

from pathlib import Path

import numpy as np
import pytest
import torch

from cvkit.config.model import RCNNConfig
from cvkit.models.detection.rcnn import (
    UNTRAINED_BIAS,
    fit_box_regressor,
    fit_svm_with_hard_negatives,
    warp_regions,
)

CONFIG = str(Path(__file__).resolve().parents[2] / "configs" / "rcnn.yaml")


def _ramp(height: int, width: int) -> torch.Tensor:
    """``[1, 3, H, W]``: channel 0 holds each pixel centre's x, channel 1 its y, channel 2 ones
    (pixel ``i`` covers ``[i, i + 1)``, so its centre is ``i + 0.5``)."""
    xs = torch.arange(width, dtype=torch.float32) + 0.5
    ys = torch.arange(height, dtype=torch.float32) + 0.5
    return torch.stack(
        [xs.expand(height, width), ys[:, None].expand(height, width), torch.ones(height, width)]
    )[None]


def test_warp_regions_equals_a_hand_computed_bilinear_warp():
    images = torch.cat([_ramp(60, 80), 2 * _ramp(60, 80)])
    rois = torch.tensor([[0, 20.0, 18.0, 44.0, 30.0], [1, 30.0, 20.0, 50.0, 40.0]])
    crop, padding = 16, 4
    crops = warp_regions(images, rois, crop, padding)
    assert crops.shape == (2, 3, crop, crop)
    for index, (image, x1, y1, x2, y2) in enumerate(rois.tolist()):
        # widened about the centre so the box fills the inner crop - 2 * padding pixels
        grow = crop / (crop - 2 * padding)
        cx, cy, half_w, half_h = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2, (y2 - y1) / 2
        left, top = cx - grow * half_w, cy - grow * half_h
        step_x, step_y = 2 * grow * half_w / crop, 2 * grow * half_h / crop
        centres = torch.arange(crop) + 0.5
        factor = 1.0 + image  # image 1 holds twice the ramp
        want_x = factor * (left + centres * step_x)
        want_y = factor * (top + centres * step_y)
        torch.testing.assert_close(crops[index, 0], want_x.expand(crop, crop))
        torch.testing.assert_close(crops[index, 1], want_y[:, None].expand(crop, crop))
        torch.testing.assert_close(crops[index, 2], torch.full((crop, crop), factor))
    # the box itself fills the inner pixels: column `padding` is the first inside x1 = 20
    step = 24 / (crop - 2 * padding)
    assert crops[0, 0, 0, padding].item() == pytest.approx(20 + step / 2)
    assert crops[0, 0, 0, crop - padding - 1].item() == pytest.approx(44 - step / 2)


def test_warp_regions_refuses_padding_that_leaves_no_box():
    with pytest.raises(ValueError, match="context_padding 8 leaves no room"):
        warp_regions(torch.zeros(1, 3, 8, 8), torch.tensor([[0, 0, 0, 4.0, 4.0]]), 16, 8)


def _separable(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Positives far along axis 0, many easy negatives far on the other side and a few hard
    ones near the positives (still separable); scaled to a mean norm of 20 as fit_stage does."""
    rng = np.random.default_rng(seed)

    def cloud(count: int, along: float) -> np.ndarray:
        points = rng.normal(0, 1, (count, 16))
        points[:, 0] = along
        return points

    positives = cloud(20, 6.0)
    negatives = np.concatenate([cloud(1900, -6.0), cloud(100, 1.5)])
    scale = 20 / np.linalg.norm(np.concatenate([positives, negatives]), axis=1).mean()
    return positives * scale, negatives * scale


def test_the_svm_separates_the_features_it_was_trained_on():
    positives, negatives = _separable()
    options = RCNNConfig(initial_negatives=2)
    fit = fit_svm_with_hard_negatives(positives, negatives, options)
    assert (positives @ fit.weight + fit.bias > 0).all()
    assert (negatives @ fit.weight + fit.bias < 0).all()
    # round 1 saw 2 negatives per positive; mining grew the set, then found nothing new
    assert fit.cache_sizes[0] == 40 and fit.cache_sizes[-1] > 40 and fit.converged


def test_hard_negative_mining_adds_the_negatives_scoring_above_the_threshold():
    positives, negatives = _separable()
    options = RCNNConfig(initial_negatives=2)
    first = fit_svm_with_hard_negatives(
        positives, negatives, options.model_copy(update={"mining_rounds": 1})
    )
    initial = np.sort(np.random.default_rng(0).choice(len(negatives), 40, replace=False))
    scores = negatives @ first.weight + first.bias
    hard = np.setdiff1d(np.nonzero(scores > options.hard_negative_score)[0], initial)
    assert first.hard_added == [len(hard)] and len(hard) > 0
    # the hard ones near the positives are among them: round 1 rarely drew them
    assert np.isin(np.arange(1900, 2000), hard).mean() > 0.9
    full = fit_svm_with_hard_negatives(positives, negatives, options)
    kept = initial[scores[initial] >= options.easy_negative_score]
    assert full.cache_sizes[1] == len(np.union1d(kept, hard))


def test_a_class_without_positives_never_scores():
    fit = fit_svm_with_hard_negatives(np.zeros((0, 4)), np.ones((5, 4)))
    assert fit.bias == UNTRAINED_BIAS and not fit.weight.any()
    with pytest.raises(ValueError, match="no negatives"):
        fit_svm_with_hard_negatives(np.ones((3, 4)), np.zeros((0, 4)))


def test_box_regressor_recovers_a_known_linear_offset_map():
    rng = np.random.default_rng(1)
    features = rng.normal(0, 1, (400, 12))
    weight, bias = rng.normal(0, 0.1, (4, 12)), np.array([0.1, -0.2, 0.05, 0.3])
    offsets = features @ weight.T + bias
    got_weight, got_bias = fit_box_regressor(features, offsets, alpha=1e-6)
    np.testing.assert_allclose(got_weight, weight, atol=1e-6)
    np.testing.assert_allclose(got_bias, bias, atol=1e-6)
    # the penalty shrinks the weights, not the intercept
    shrunk, _ = fit_box_regressor(features, offsets, alpha=1e4)
    assert np.abs(shrunk).sum() < 0.1 * np.abs(weight).sum()
    empty_weight, empty_bias = fit_box_regressor(np.zeros((0, 12)), np.zeros((0, 4)), 1.0)
    assert empty_weight.shape == (4, 12) and not empty_weight.any() and not empty_bias.any()


TINY = {
    "data.synthetic.num_train": 4,
    "data.synthetic.num_val": 2,
    "data.synthetic.image_size": 64,
    "data.image_size": 64,
    "data.batch_size": 4,
    "data.workers": 0,
    "train.epochs": 1,
    "train.val_every": 1,
    "train.threads": 1,
    "device": "cpu",
    "model.rcnn.crop_size": 32,
    "model.rcnn.batch_size_per_image": 16,
    "model.rcnn.proposals.max_proposals": 100,
}


def test_fit_stage_runs_in_training_and_the_checkpoint_carries_the_svms(tmp_path):
    import cvkit
    from cvkit.engine.callbacks import Callback
    from cvkit.engine.checkpoint import load_checkpoint
    from cvkit.logs import setup_logging
    from cvkit.models.loading import load_model

    class KeepModel(Callback):
        def on_train_end(self, trainer, result):
            self.trainer = trainer

    keep = KeepModel()
    try:
        run = cvkit.train(
            CONFIG,
            out=tmp_path / "run",
            callbacks=[keep],
            **{"data.cache_dir": str(tmp_path / "cache")},
            **TINY,
        )
    finally:
        setup_logging()  # detach the run folder's log file
    trained = keep.trainer.model.eval()
    assert bool(trained.fitted) and trained.svm_weight.abs().sum() > 0
    raw = torch.load(run.last, map_location="cpu", weights_only=True)
    for name in ("svm_weight", "svm_bias", "box_weight", "box_bias", "feature_scale", "fitted"):
        torch.testing.assert_close(raw["model"][name], getattr(trained, name), rtol=0, atol=0)
    reloaded = load_model(load_checkpoint(run.last))
    images = next(iter(keep.trainer.val_loader))[0]
    with torch.no_grad():
        expected, got = trained(images), reloaded(images)
    assert sum(len(d) for d in expected) > 0
    for want, have in zip(expected, got, strict=True):
        torch.testing.assert_close(have.boxes, want.boxes, rtol=0, atol=0)
        torch.testing.assert_close(have.scores, want.scores, rtol=0, atol=0)
        torch.testing.assert_close(have.labels, want.labels, rtol=0, atol=0)
    # refitting on the images in order (the Trainer's loader was shuffled) gives the same SVMs,
    # up to float rounding: the Trainer fitted them with the model in channels-last layout
    trainer = keep.trainer
    before = trained.svm_weight.clone()
    trained.fit_stage(trainer.task.build_loader(trainer.train_loader.dataset, train=False), "cpu")
    torch.testing.assert_close(trained.svm_weight, before, rtol=0, atol=1e-5)


def _rcnn_config(**overrides):
    from cvkit.config import Config

    return Config.model_validate(
        {
            "task": "detect",
            "model": {
                "name": "rcnn",
                "backbone": "resnet18_tiny",
                "out_features": ["layer4"],
                "rcnn": {"crop_size": 32, "context_padding": 4, "batch_size_per_image": 8},
            },
            **overrides,
        }
    )


def test_rcnn_fine_tunes_a_softmax_and_refuses_to_detect_before_its_svms_are_fitted():
    from cvkit.errors import ConfigError
    from cvkit.geometry import Geometry
    from cvkit.models.build import build_model
    from cvkit.structures import Target

    torch.manual_seed(0)
    model = build_model(_rcnn_config(), num_classes=3)
    images = torch.randn(2, 3, 64, 64)
    proposals = [torch.tensor([[0.0, 0.0, 30.0, 30.0], [10.0, 10.0, 60.0, 50.0]])] * 2
    target = Target(
        torch.tensor([[8.0, 8.0, 58.0, 50.0]]), torch.tensor([2]), Geometry((64, 64), (1, 1))
    )
    model.train()
    losses = model(images, [target, target], proposals=proposals)
    assert set(losses) == {"finetune_cls"}
    losses["finetune_cls"].backward()
    assert model.backbone.layer4[0].conv1.weight.grad.abs().sum() > 0
    model.eval()
    with pytest.raises(RuntimeError, match="not fitted yet"):
        model(images, proposals=proposals)
    with pytest.raises(ConfigError, match=r"train\.ema"):
        build_model(_rcnn_config(train={"ema": True}), num_classes=3)


def test_context_padding_too_wide_for_the_crop_is_a_config_error():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="context_padding 16 leaves no room"):
        RCNNConfig(crop_size=32, context_padding=16)
