"""The multibox loss of single-shot detectors: cross-entropy with hard negative mining.

Anchors matched to a ground-truth box are positives; of the rest, only the ``neg_pos_ratio``
hardest per positive (highest cross-entropy, :func:`cvkit.ops.matching.hard_negative_mask`)
are trained, so the thousands of easy background anchors do not swamp the few objects. Both
terms are divided by the number of positives in the batch.
"""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor

from cvkit.ops.matching import hard_negative_mask


def multibox_loss(
    logits: Tensor,
    deltas: Tensor,
    cls_targets: Tensor,
    box_targets: Tensor,
    neg_pos_ratio: float = 3.0,
    box_loss: Literal["smooth_l1", "l1"] = "smooth_l1",
) -> dict[str, Tensor]:
    """Classification and box losses of a batch of anchor predictions.

    Args:
        logits (Tensor[B, A, C + 1]): class scores, column 0 is background.
        deltas (Tensor[B, A, 4]): predicted box offsets.
        cls_targets (Tensor[B, A]): int64, 0 for background, ``label + 1`` for a positive.
        box_targets (Tensor[B, A, 4]): encoded offsets of the matched boxes (read at positives).
        neg_pos_ratio: hard negatives per positive.
        box_loss: ``smooth_l1`` (beta 1) or ``l1`` on the offsets.

    Returns:
        ``{"cls": Tensor[], "box": Tensor[]}``, both summed over anchors and divided by the
        number of positives in the batch (at least 1).
    """
    ce = F.cross_entropy(logits.flatten(0, 1), cls_targets.flatten(), reduction="none")
    ce = ce.view_as(cls_targets)
    positive = cls_targets > 0
    trained = positive | hard_negative_mask(ce, positive, neg_pos_ratio)
    num_pos = positive.sum().clamp(min=1)
    regress = F.smooth_l1_loss if box_loss == "smooth_l1" else F.l1_loss
    box = regress(deltas[positive], box_targets[positive], reduction="sum")
    return {"cls": (ce * trained).sum() / num_pos, "box": box / num_pos}
