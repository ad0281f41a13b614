"""The ``eval:`` section: how predictions are filtered and scored."""

from pydantic import Field

from cvkit.config.base import Section


class EvalConfig(Section):
    """Score and NMS thresholds used at inference and evaluation."""

    score_threshold: float = Field(0.01, ge=0, le=1)
    iou_threshold: float = Field(0.5, ge=0, le=1)
    max_det: int = Field(100, gt=0)
