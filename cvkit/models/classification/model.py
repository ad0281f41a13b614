"""An image classifier: any backbone followed by a classifier head.

``ImageClassifier(images) -> logits``. The backbone's last stage feeds the head. Keys are
``backbone.*`` and ``head.*``; with the architecture's own head, a torchvision classifier's
state dict maps onto them one to one (see :mod:`cvkit.models.transfer`).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from cvkit.config import Config
from cvkit.models.backbones import Backbone, create_backbone
from cvkit.models.backbones.base import PoolLinearHead
from cvkit.models.build import register_model
from cvkit.models.transfer import body_head_groups


class ImageClassifier(nn.Module):
    """Backbone + head, trained with different learning rates for each.

    Args:
        backbone: any :class:`Backbone`; it is set to return only its last stage.
        head: maps ``Tensor[B, C, h, w]`` (the last stage) to logits ``Tensor[B, num_classes]``.
        body_lr_mult: learning-rate multiplier of the backbone's parameters.
        head_lr_mult: learning-rate multiplier of the head's parameters.
    """

    def __init__(
        self,
        backbone: Backbone,
        head: nn.Module,
        body_lr_mult: float = 1.0,
        head_lr_mult: float = 1.0,
    ) -> None:
        super().__init__()
        backbone.set_out_features(None)
        self.backbone = backbone
        self.head = head
        self.body_lr_mult = body_lr_mult
        self.head_lr_mult = head_lr_mult

    def forward(self, images: Tensor) -> Tensor:
        """``images (Tensor[B, 3, H, W])`` normalized → logits ``Tensor[B, num_classes]``."""
        (features,) = self.backbone(images).values()
        return self.head(features)

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Body and head parameter groups with their ``lr_mult`` (frozen ones dropped).

        Used by :func:`cvkit.engine.optim.build_optimizer`: each group trains at
        ``train.lr * lr_mult``.
        """
        return body_head_groups(self, self.body_lr_mult, self.head_lr_mult)


@register_model("classifier")
def build_classifier(config: Config, num_classes: int) -> ImageClassifier:
    """The classifier that ``model:`` describes (``backbone``, ``width_mult``, ``classifier``).

    Stages up to ``model.freeze_at`` are frozen. ``model.pretrained`` is applied by the
    classify task (:func:`cvkit.models.transfer.prepare_finetuning`), not here, so that
    rebuilding a model from its checkpoint never reads the original weights file.
    """
    cfg = config.model
    backbone = create_backbone(cfg.backbone, width_mult=cfg.width_mult, in_channels=cfg.in_channels)
    if cfg.classifier.head == "native":
        head = backbone.build_head(num_classes, cfg.classifier.dropout)
    else:
        channels = backbone.stage_info[backbone.stage_names[-1]].channels
        head = PoolLinearHead(channels, num_classes, cfg.classifier.dropout or 0.0)
    backbone.freeze(cfg.freeze_at)
    return ImageClassifier(backbone, head, cfg.body_lr_mult, cfg.head_lr_mult)
