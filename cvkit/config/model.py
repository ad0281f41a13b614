"""The ``model:`` section: which architecture to build and on which backbone."""

from pathlib import Path
from typing import Literal

from pydantic import Field

from cvkit.config.base import Section


class SSDConfig(Section):
    """Options of the SSD detector (``model.ssd``).

    The head reads the backbone outputs named in ``features`` (all of them when unset), then
    ``extra_blocks`` blocks each halve the resolution of the last map. Every level gets
    ``len(anchor_sizes[level]) + len(anchor_ratios) - 1`` anchors per cell; sizes are fractions
    of the input size, and when ``anchor_sizes`` is unset level ``k`` of ``L`` gets
    ``[s_k, sqrt(s_k * s_k+1)]`` with ``s_k`` spaced linearly from ``min_scale`` to ``max_scale``.
    """

    features: list[str] | None = None
    extra_blocks: int = Field(2, ge=0)
    extra_channels: int = Field(256, gt=0, description="output channels of every extra block")
    anchor_sizes: list[list[float]] | None = None
    min_scale: float = Field(0.2, gt=0, le=1)
    max_scale: float = Field(0.9, gt=0)
    anchor_ratios: list[float] = Field(default_factory=lambda: [1.0, 2.0, 0.5], min_length=1)
    iou_threshold: float = Field(0.5, gt=0, le=1, description="anchor/ground-truth match IoU")
    neg_pos_ratio: float = Field(3.0, gt=0, description="hard negatives per positive anchor")
    box_loss: Literal["smooth_l1", "l1"] = "smooth_l1"
    box_loss_weight: float = Field(1.0, ge=0)
    variances: tuple[float, float] = (0.1, 0.2)
    topk_candidates: int = Field(400, gt=0, description="candidates per image kept before NMS")


class ModelConfig(Section):
    """Architecture, backbone and initial weights.

    ``num_classes`` is taken from the dataset when left unset.
    """

    name: str = "ssd"
    backbone: str = "resnet18"
    num_classes: int | None = Field(None, gt=0)
    pretrained: Path | None = None
    width_mult: float = Field(1.0, gt=0)
    ssd: SSDConfig = Field(default_factory=SSDConfig)
