"""Sigmoid focal loss (Lin et al. 2017, RetinaNet), under torchvision's name and signature.

Binary cross-entropy on logits, scaled down for examples the model already gets right: each
term is multiplied by ``(1 - p_t) ** gamma``, where ``p_t`` is the predicted probability of the
true label, and optionally weighted by ``alpha`` for positives and ``1 - alpha`` for negatives.
Unlike torchvision's, it cannot be compiled with TorchScript (``torch.jit.script``).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from cvkit.ops.boxes import BoxError
from cvkit.ops.iou import _reduce


def sigmoid_focal_loss(
    inputs: Tensor,
    targets: Tensor,
    alpha: float = 0.25,
    gamma: float = 2,
    reduction: str = "none",
) -> Tensor:
    """Focal loss of independent binary predictions (one logit per class and anchor, say).

    Args:
        inputs (Tensor[...]): logits, any shape, floating dtype.
        targets (Tensor[...]): labels of the same shape and dtype as ``inputs``: 1 for positive,
            0 for negative (soft labels in between are accepted).
        alpha: weight of the positive term in ``[0, 1]`` (negatives get ``1 - alpha``), or
            ``-1`` for no weighting.
        gamma: focusing exponent; ``0`` with ``alpha=-1`` gives plain binary cross-entropy.
        reduction: ``"none"`` (``Tensor[...]``, the shape of ``inputs``), ``"mean"`` or
            ``"sum"`` (``Tensor[]``). The mean of an empty input is 0, as for the IoU losses
            (torchvision's focal loss returns NaN there).

    Returns:
        The loss per element, or its mean or sum; differentiable in ``inputs``.

    Raises:
        BoxError (a ``ValueError``): ``alpha`` outside ``[0, 1]`` and not ``-1``, or an
            unknown ``reduction`` (the message starts with ``Invalid``, as torchvision's).
    """
    if alpha != -1 and not 0 <= alpha <= 1:
        raise BoxError(f"Invalid alpha={alpha}: use a value in [0, 1], or -1 for no weighting")
    probs = inputs.sigmoid()
    # 1 - p_t: the probability the model gives to the wrong label (p for a negative target,
    # 1 - p for a positive one), written so that soft targets interpolate between the two.
    miss = probs + targets - 2 * probs * targets
    loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none") * miss**gamma
    if alpha >= 0:
        loss = loss * (targets * alpha + (1 - targets) * (1 - alpha))
    return _reduce(loss, reduction)
