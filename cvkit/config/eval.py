"""The ``eval:`` section: how predictions are filtered and scored."""

from typing import Literal

from pydantic import Field

from cvkit.config.base import Section


class EvalConfig(Section):
    """Score and NMS thresholds used at inference and evaluation.

    ``coco_backend`` picks the COCO mAP implementation: ``faster`` (faster-coco-eval, C++) or
    ``pycocotools`` (the reference); both give the same numbers.
    """

    score_threshold: float = Field(0.01, ge=0, le=1)
    iou_threshold: float = Field(0.5, ge=0, le=1)
    max_det: int = Field(100, gt=0)
    coco_backend: Literal["faster", "pycocotools"] = "faster"
