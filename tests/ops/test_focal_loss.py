"""sigmoid_focal_loss against torchvision's as the reference (values and gradients for every
reduction, alpha and gamma), against binary cross-entropy where it must reduce to it, and its
errors."""

import pytest
import torch
import torch.nn.functional as F
import torchvision.ops as tv

import cvkit.ops as cv


def _logits_and_targets(soft: bool, seed: int = 0):
    """``Tensor[6, 40]`` float64 logits from confidently wrong to confidently right, and
    targets: binary, or soft labels in [0, 1]."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(6, 40, generator=gen, dtype=torch.float64) * 6
    if soft:
        targets = torch.rand(6, 40, generator=gen, dtype=torch.float64)
    else:
        targets = torch.randint(0, 2, (6, 40), generator=gen).to(torch.float64)
    return logits, targets


def _loss_and_grad(fn, logits, targets, **kwargs):
    inputs = logits.clone().requires_grad_()
    loss = fn(inputs, targets, **kwargs)
    weights = torch.randn(loss.shape, generator=torch.Generator().manual_seed(1), dtype=loss.dtype)
    (grad,) = torch.autograd.grad((loss * weights).sum(), inputs)
    return loss.detach(), grad


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("alpha, gamma", [(0.25, 2), (-1, 0), (0.0, 2), (1.0, 1.5), (0.6, 0)])
@pytest.mark.parametrize("soft", [False, True])
def test_focal_loss_matches_torchvision(reduction, alpha, gamma, soft):
    logits, targets = _logits_and_targets(soft)
    kwargs = {"alpha": alpha, "gamma": gamma, "reduction": reduction}
    got, got_grad = _loss_and_grad(cv.sigmoid_focal_loss, logits, targets, **kwargs)
    want, want_grad = _loss_and_grad(tv.sigmoid_focal_loss, logits, targets, **kwargs)
    assert got.shape == want.shape == ((6, 40) if reduction == "none" else ())
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got_grad, want_grad)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_focal_loss_defaults_and_float32_match_torchvision(reduction):
    logits, targets = (t.float() for t in _logits_and_targets(soft=False, seed=2))
    got = cv.sigmoid_focal_loss(logits, targets, reduction=reduction)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, tv.sigmoid_focal_loss(logits, targets, reduction=reduction))


def test_focal_loss_without_focusing_is_binary_cross_entropy():
    logits, targets = _logits_and_targets(soft=False, seed=3)
    for reduction in ["none", "mean", "sum"]:
        got, got_grad = _loss_and_grad(
            cv.sigmoid_focal_loss, logits, targets, alpha=-1, gamma=0, reduction=reduction
        )
        want, want_grad = _loss_and_grad(
            F.binary_cross_entropy_with_logits, logits, targets, reduction=reduction
        )
        torch.testing.assert_close(got, want)
        torch.testing.assert_close(got_grad, want_grad)


def test_focal_loss_errors_are_value_errors_as_in_torchvision():
    logits, targets = _logits_and_targets(soft=False)
    for fn in (cv.sigmoid_focal_loss, tv.sigmoid_focal_loss):
        with pytest.raises(ValueError, match="Invalid"):
            fn(logits, targets, 0.25, 2, "xyz")
        with pytest.raises(ValueError, match="Invalid"):
            fn(logits, targets, alpha=1.5)
    with pytest.raises(ValueError, match="reduction='xyz'"):
        cv.sigmoid_focal_loss(logits, targets, reduction="xyz")


def test_focal_loss_of_empty_input():
    empty = torch.zeros(0, 3)
    assert cv.sigmoid_focal_loss(empty, empty).shape == (0, 3)
    assert cv.sigmoid_focal_loss(empty, empty, reduction="sum").item() == 0
    # Documented difference: the mean of nothing is 0, not torchvision's NaN.
    assert cv.sigmoid_focal_loss(empty, empty, reduction="mean").item() == 0
