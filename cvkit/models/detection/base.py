"""What every cvkit detector shares: its backbone, class count, inference settings and the
body/head learning-rate split.

A detector subclasses :class:`Detector`, builds its neck and heads in ``__init__`` and
implements the contract of ``docs/extending.md``: ``forward(images, targets)`` (losses in
training, :class:`~cvkit.structures.Instances` per image in eval) and ``candidates(images)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from cvkit.config import Config
from cvkit.config.eval import EvalConfig
from cvkit.models.backbones import Backbone, create_backbone
from cvkit.models.detection.postprocess import select_detections
from cvkit.models.transfer import body_head_groups
from cvkit.structures import Instances


class Detector(nn.Module):
    """Base of cvkit's detectors.

    Args:
        backbone: any :class:`Backbone`, stored as ``self.backbone`` (the "body" group).
        num_classes: foreground classes (labels 0..C-1; a background slot stays inside).
        inference: ``eval`` section (score threshold, NMS IoU, detections per image); the
            eval forward reads ``self.inference`` when it runs, so evaluation can replace it.
        body_lr_mult, head_lr_mult: learning-rate multipliers of the backbone and the rest.
    """

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int,
        inference: EvalConfig | None = None,
        body_lr_mult: float = 1.0,
        head_lr_mult: float = 1.0,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.num_classes = num_classes
        self.inference = inference or EvalConfig()
        self.body_lr_mult = body_lr_mult
        self.head_lr_mult = head_lr_mult

    @classmethod
    def from_config(cls, config: Config, num_classes: int, options: Any) -> Detector:
        """``cls(backbone, num_classes, options, config.eval, body_lr_mult, head_lr_mult)``
        with the backbone of :func:`detector_backbone` and ``options`` the detector's own
        ``model.<name>`` section (subclasses take their arguments in this order)."""
        cfg = config.model
        return cls(
            detector_backbone(config),
            num_classes,
            options,
            config.eval,
            cfg.body_lr_mult,
            cfg.head_lr_mult,
        )

    def select(
        self, boxes: Tensor, scores: Tensor, image_sizes: Sequence[tuple[int, int]]
    ) -> list[Instances]:
        """The eval output from pre-NMS candidates, with the inference settings read now.

        Args:
            boxes: ``[B, N, 4]`` (shared by the classes) or ``[B, N, C, 4]`` (per class) xyxy
                input pixels.
            scores: ``[B, N, C]`` class scores.
            image_sizes: ``(height, width)`` of each image (detections are clipped to it).

        Returns:
            One :class:`~cvkit.structures.Instances` per image:
            :func:`~cvkit.models.detection.postprocess.select_detections` at
            ``self.inference`` (score threshold, NMS IoU, ``max_det``) and the detector's
            ``self.options.topk_candidates``.
        """
        return select_detections(
            boxes,
            scores,
            image_sizes,
            self.inference.score_threshold,
            self.inference.iou_threshold,
            self.inference.max_det,
            self.options.topk_candidates,
        )

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Body (backbone) and head (everything else) groups with their ``lr_mult``."""
        return body_head_groups(self, self.body_lr_mult, self.head_lr_mult)


def detector_backbone(config: Config) -> Backbone:
    """The backbone ``model:`` names (``backbone``, ``out_features``, ``width_mult``,
    ``in_channels``) with its first ``freeze_at`` stages frozen; ``model.pretrained`` is applied
    later by the training task."""
    cfg = config.model
    backbone = create_backbone(
        cfg.backbone,
        out_features=cfg.out_features,
        width_mult=cfg.width_mult,
        in_channels=cfg.in_channels,
    )
    backbone.freeze(cfg.freeze_at)
    return backbone
