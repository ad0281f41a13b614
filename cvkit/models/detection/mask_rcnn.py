"""Mask R-CNN: Faster R-CNN with a mask branch on the same FPN features.

``backbone → FPN → RPN → RoI box head`` exactly as :class:`FasterRCNN`, plus
:mod:`~cvkit.models.detection.mask_heads`: in training the positive RoIs of the box head's own
sample read a RoIAlign grid, and binary cross-entropy against their RoIAligned ground-truth
masks is added as ``roi_mask``; at inference the final detections read it, and each
detection's mask of its class is pasted into the image. The same composition as torchvision's
``MaskRCNN``, which it equals on the same weights.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from functools import partial

import torch
from torch import Tensor

from cvkit.config import Config
from cvkit.config.eval import EvalConfig
from cvkit.config.model import MaskRCNNConfig
from cvkit.models.backbones import Backbone
from cvkit.models.build import register_model
from cvkit.models.detection.faster_rcnn import FasterRCNN
from cvkit.models.detection.mask_heads import (
    MaskHead,
    MaskPredictor,
    mask_loss,
    paste_masks_in_image,
)
from cvkit.models.detection.roi_heads import pool_in_roi_precision, rois_from_padded
from cvkit.ops.roi import boxes_to_rois, multiscale_roi_align
from cvkit.structures import ImageBatch, Instances, Target


class MaskRCNN(FasterRCNN):
    """Mask R-CNN: backbone, FPN, RPN, RoI box head and RoI mask head.

    Args:
        backbone: any :class:`Backbone`; its selected stages (``out_features``) feed the FPN.
        num_classes: foreground classes (labels 0..C-1; background stays inside the heads).
        options: ``model.mask_rcnn`` (Faster R-CNN's options plus the mask branch's).
        inference: ``eval`` section, read when the eval forward runs.
        body_lr_mult, head_lr_mult: learning-rate multipliers of the backbone and the rest.
    """

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int,
        options: MaskRCNNConfig | None = None,
        inference: EvalConfig | None = None,
        body_lr_mult: float = 1.0,
        head_lr_mult: float = 1.0,
    ) -> None:
        options = options or MaskRCNNConfig()
        super().__init__(backbone, num_classes, options, inference, body_lr_mult, head_lr_mult)
        shapes = self.neck.output_shapes
        self.mask_pool = partial(
            multiscale_roi_align,
            output_size=options.mask_roi_size,
            strides=[shapes[name].stride for name in self.roi_levels],
            sampling_ratio=options.sampling_ratio,
            canonical_size=options.canonical_size,
            canonical_level=options.canonical_level,
        )
        self.mask_head = MaskHead(options.fpn_channels, options.mask_layers)
        self.mask_predictor = MaskPredictor(
            options.mask_layers[-1], options.mask_dim_reduced, num_classes + 1
        )

    def export_output_names(self, metadata: object) -> tuple[str, ...]:
        """The exported graph's outputs (the export contract): the padded detections
        ``boxes, scores, labels, num_dets`` and ``masks [B, K, M, M]``, each detection's mask
        probabilities of its class in the frame of its box (:meth:`padded_masks`)."""
        return ("boxes", "scores", "labels", "num_dets", "masks")

    def mask_logits(self, roi_features: Sequence[Tensor], boxes: Sequence[Tensor]) -> Tensor:
        """Per-class mask logits of RoIs.

        Args:
            roi_features: the FPN levels RoIs read, ``Tensor[B, C, H_l, W_l]`` each.
            boxes: per image, ``Tensor[k_i, 4]`` xyxy input pixels.

        Returns:
            ``Tensor[K, C + 1, 2r, 2r]`` (``r = mask_roi_size``; channel ``c + 1`` is class
            ``c``), RoIs in the order of ``torch.cat(boxes)``.
        """
        pooled = pool_in_roi_precision(self.mask_pool, roi_features, boxes_to_rois(boxes))
        return self.mask_predictor(self.mask_head(pooled))

    def padded_masks(
        self, features: OrderedDict[str, Tensor], boxes: Tensor, labels: Tensor
    ) -> Tensor:
        """Mask probabilities of padded detections, with fixed shapes (what the exported graph
        computes after its NMS).

        Args:
            features: :meth:`features` of the batch.
            boxes (Tensor[B, K, 4]): xyxy input pixels; padding rows may hold anything.
            labels (Tensor[B, K]): int64 classes 0..C-1 (padding rows any value in -1..C-1).

        Returns:
            ``Tensor[B, K, M, M]`` sigmoid probabilities of each row's class,
            ``M = 2 * mask_roi_size``, in the frame of its box.
        """
        batch, count = boxes.shape[:2]
        roi_features = [features[name] for name in self.roi_levels]
        logits = self.mask_logits(roi_features, rois_from_padded(boxes))
        side = logits.shape[-1]
        channel = (labels.reshape(-1, 1, 1, 1) + 1).expand(-1, 1, side, side)
        picked = logits.gather(1, channel)
        return picked.float().sigmoid().reshape(batch, count, side, side)

    def forward(
        self, images: Tensor | ImageBatch, targets: list[Target] | None = None
    ) -> dict[str, Tensor] | list[Instances]:
        """Losses in training mode, detections with masks in eval mode.

        Args:
            images (Tensor[B, 3, H, W] or ImageBatch): normalized images.
            targets: training only; one :class:`~cvkit.structures.Target` per image with
                ``boxes`` [N, 4] xyxy input pixels, ``labels`` [N] and ``masks`` [N, h, w]
                (0/1, the image's input pixels, dense or as
                :class:`~cvkit.structures.CroppedMasks`; ``data.instance_masks: true``
                provides them).

        Returns:
            training: ``{"rpn_cls", "rpn_box", "roi_cls", "roi_box", "roi_mask"}`` scalar
            losses; eval: one :class:`~cvkit.structures.Instances` per image with ``boxes``
            [K, 4] xyxy input pixels, ``scores``, ``labels`` and ``masks`` float32 [K, h, w],
            each detection's probabilities pasted into its image of size ``(h, w)``.

        Raises:
            ValueError: training without one Target per image, or a Target without masks.
        """
        batch = ImageBatch.of(images)
        features = self.features(batch.tensor)
        roi_features = [features[name] for name in self.roi_levels]
        if not self.training:
            return self.add_masks(roi_features, self.detect(features, batch))
        if targets is None or len(targets) != len(batch):
            raise ValueError("MaskRCNN in training mode needs one Target per image")
        if any(target.masks is None for target in targets):
            raise ValueError(
                "MaskRCNN in training mode needs Target.masks (set data.instance_masks: true)"
            )
        proposals, losses = self.rpn(list(features.values()), batch, targets)
        rois, labels, codes, matched = self.roi_heads.sample_matched(proposals.per_image(), targets)
        losses.update(self.roi_heads.sampled_loss(roi_features, rois, labels, codes))
        positives = [image_rois[: m.numel()] for image_rois, m in zip(rois, matched, strict=True)]
        losses["roi_mask"] = mask_loss(
            self.mask_logits(roi_features, positives),
            positives,
            [target.masks for target in targets],
            [target.labels for target in targets],
            matched,
        )
        return losses

    def add_masks(
        self, roi_features: Sequence[Tensor], detections: list[Instances]
    ) -> list[Instances]:
        """``detections`` with ``masks`` float32 [K, h, w]: each box's mask probabilities of
        its class, pasted into its image (:func:`paste_masks_in_image`)."""
        logits = self.mask_logits(roi_features, [d.boxes for d in detections])
        labels = torch.cat([d.labels for d in detections]) + 1
        probabilities = logits[torch.arange(labels.numel(), device=labels.device), labels]
        per_image = probabilities.float().sigmoid().split([len(d) for d in detections])
        for found, masks in zip(detections, per_image, strict=True):
            found.masks = paste_masks_in_image(masks, found.boxes, found.image_size)
        return detections


@register_model("mask_rcnn")
def build_mask_rcnn(config: Config, num_classes: int) -> MaskRCNN:
    """The Mask R-CNN that ``model:`` describes (``backbone``, ``out_features``, ``mask_rcnn``
    options); stages up to ``model.freeze_at`` are frozen."""
    return MaskRCNN.from_config(config, num_classes, config.model.mask_rcnn)
