"""SSD, the single-shot multibox detector, on any cvkit backbone.

The backbone's selected stages plus ``extra_blocks`` blocks that each halve the resolution of
the last map form the feature levels. At every cell of every level, ``n + m - 1`` anchors
(``n`` sizes, ``m`` ratios; :mod:`cvkit.ops.anchors`) each get class logits (background + C
classes) and four box offsets from a 3×3 convolution. Training matches anchors to ground truth
(:mod:`cvkit.ops.matching`), encodes the offsets with the SSD variances (:mod:`cvkit.ops.coder`)
and applies :func:`~cvkit.models.detection.losses.multibox_loss` (hard negatives 3:1).
Inference decodes every anchor (:meth:`SSD.candidates`) and runs class-aware NMS.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from cvkit.config import Config
from cvkit.config.eval import EvalConfig
from cvkit.config.model import SSDConfig
from cvkit.errors import ConfigError
from cvkit.models.backbones import Backbone
from cvkit.models.build import register_model
from cvkit.models.detection.base import Detector
from cvkit.models.detection.losses import multibox_loss
from cvkit.models.necks import backbone_shapes, build_neck
from cvkit.ops.anchors import default_ssd_sizes, ssd_anchors
from cvkit.ops.boxes import clip_boxes
from cvkit.ops.coder import decode_boxes, encode_boxes, stds_from_variances
from cvkit.ops.iou import box_iou
from cvkit.ops.matching import greedy_assign_batched
from cvkit.structures import ImageBatch, Instances, Target


def flatten_level(output: Tensor, columns: int) -> Tensor:
    """``Tensor[B, A * columns, H, W]`` → ``Tensor[B, H * W * A, columns]`` (cell-major)."""
    return output.permute(0, 2, 3, 1).reshape(output.shape[0], -1, columns)


class SSDHead(nn.Module):
    """One class predictor and one box predictor (3×3 convolutions) per feature level.

    Args:
        in_channels: channels of each level.
        anchors_per_cell: anchors at every cell of each level.
        num_classes: foreground classes; the logits get one more column (background, index 0).
    """

    def __init__(
        self, in_channels: Sequence[int], anchors_per_cell: Sequence[int], num_classes: int
    ) -> None:
        super().__init__()
        self.num_logits = num_classes + 1
        pairs = list(zip(in_channels, anchors_per_cell, strict=True))
        self.classifiers = nn.ModuleList(
            nn.Conv2d(c, a * self.num_logits, 3, padding=1) for c, a in pairs
        )
        self.regressors = nn.ModuleList(nn.Conv2d(c, a * 4, 3, padding=1) for c, a in pairs)

    def forward(self, features: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """Predictions of every anchor, levels concatenated in order.

        Returns:
            logits (Tensor[B, A, C + 1]) and box offsets (Tensor[B, A, 4]), anchors ordered
            level, row, column, anchor.
        """
        logits = [
            flatten_level(conv(x), self.num_logits)
            for conv, x in zip(self.classifiers, features, strict=True)
        ]
        deltas = [
            flatten_level(conv(x), 4) for conv, x in zip(self.regressors, features, strict=True)
        ]
        return torch.cat(logits, 1), torch.cat(deltas, 1)


def level_anchor_sizes(options: SSDConfig, num_levels: int) -> list[list[float]]:
    """Anchor sizes (fractions of the input height) of each level.

    ``options.anchor_sizes`` when given, else the SSD paper's rule
    (:func:`~cvkit.ops.anchors.default_ssd_sizes` from ``min_scale`` to ``max_scale``).

    Raises:
        ConfigError: ``anchor_sizes`` does not have one non-empty list per level.
    """
    if options.anchor_sizes is None:
        return default_ssd_sizes(num_levels, options.min_scale, options.max_scale)
    if len(options.anchor_sizes) != num_levels or not all(options.anchor_sizes):
        raise ConfigError(
            f"model.ssd.anchor_sizes: needs one non-empty list per feature level "
            f"({num_levels}: model.out_features + model.ssd.extra_blocks), "
            f"got {options.anchor_sizes}"
        )
    return [list(sizes) for sizes in options.anchor_sizes]


class SSD(Detector):
    """Single-shot multibox detector.

    Args:
        backbone: any :class:`Backbone`; all of its selected stages feed the head.
        num_classes: foreground classes (labels 0..C-1; the background slot stays inside).
        options: ``model.ssd`` (extra blocks, anchors, matching and loss settings).
        inference: ``eval`` section (score threshold, NMS IoU, detections per image).
        body_lr_mult: learning-rate multiplier of the backbone's parameters.
        head_lr_mult: learning-rate multiplier of the extra blocks and predictors.
    """

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int,
        options: SSDConfig | None = None,
        inference: EvalConfig | None = None,
        body_lr_mult: float = 1.0,
        head_lr_mult: float = 1.0,
    ) -> None:
        super().__init__(backbone, num_classes, inference, body_lr_mult, head_lr_mult)
        self.options = options or SSDConfig()
        # the neck keeps the name ``extras`` and its blocks ``0``, ``1``, ...: checkpoints load
        self.extras = build_neck(
            "ssd_extras",
            backbone_shapes(backbone),
            num_blocks=self.options.extra_blocks,
            channels=self.options.extra_channels,
        )
        channels = [shape.channels for shape in self.extras.output_shapes.values()]
        self.anchor_sizes = level_anchor_sizes(self.options, len(channels))
        self.anchor_ratios = list(self.options.anchor_ratios)
        self.box_stds = stds_from_variances(self.options.variances)
        anchors_per_cell = [len(sizes) + len(self.anchor_ratios) - 1 for sizes in self.anchor_sizes]
        self.head = SSDHead(channels, anchors_per_cell, num_classes)
        self._anchor_cache: dict[tuple[Any, ...], Tensor] = {}

    def features(self, images: Tensor) -> list[Tensor]:
        """Feature maps of every level, finest first: backbone stages, then extra blocks.

        ``Tensor[B, 3, H, W]`` → one ``Tensor[B, C_l, ~H / s_l, ~W / s_l]`` per level ``l``, with
        channels and strides as ``self.extras.output_shapes``.
        """
        return list(self.extras(self.backbone(images)).values())

    def anchors(self, features: Sequence[Tensor], image_size: tuple[int, int]) -> Tensor:
        """Anchors of every level, in the head's order.

        Args:
            features: the level maps (only their sizes and device are used).
            image_size: (height, width) of the input images in pixels.

        Returns:
            Tensor[A, 4]: float32 (x1, y1, x2, y2) in input pixels.
        """
        grids = tuple(tuple(f.shape[-2:]) for f in features)
        key = (grids, image_size, features[0].device)
        if key not in self._anchor_cache:
            anchors = ssd_anchors(grids, self.anchor_sizes, self.anchor_ratios, image_size)
            self._anchor_cache = {key: anchors.to(features[0].device)}
        return self._anchor_cache[key]

    def predict(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Raw head outputs: logits [B, A, C + 1], offsets [B, A, 4] and anchors [A, 4]."""
        features = self.features(images)
        logits, deltas = self.head(features)
        return logits, deltas, self.anchors(features, tuple(images.shape[-2:]))

    def candidates(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Decoded pre-NMS predictions of every anchor.

        Args:
            images (Tensor[B, 3, H, W]): normalized images.

        Returns:
            boxes (Tensor[B, A, 4]): (x1, y1, x2, y2) in input pixels, clipped to the image;
            scores (Tensor[B, A, C]): class probabilities in [0, 1], no background column.
        """
        logits, deltas, anchors = self.predict(images)
        boxes = decode_boxes(deltas.float(), anchors, stds=self.box_stds)
        boxes = clip_boxes(boxes, tuple(images.shape[-2:]))
        return boxes, logits.float().softmax(-1)[..., 1:]

    def forward(
        self, images: Tensor | ImageBatch, targets: list[Target] | None = None
    ) -> dict[str, Tensor] | list[Instances]:
        """Losses in training mode, detections in eval mode.

        Args:
            images (Tensor[B, 3, H, W] or ImageBatch): normalized images; an
                :class:`~cvkit.structures.ImageBatch` of smaller images padded into the batch
                clips each image's detections to its own size. SSD's anchors are fractions of
                the input size, so it is trained and run on one fixed (letterboxed) size.
            targets: training only; one :class:`~cvkit.structures.Target` per image
                (``boxes`` Tensor[N, 4] xyxy input pixels, ``labels`` Tensor[N] int64 in 0..C-1).

        Returns:
            training: ``{"cls": Tensor[], "box": Tensor[]}``;
            eval: one :class:`~cvkit.structures.Instances` per image (``boxes [K, 4]`` xyxy
            input pixels, ``scores [K]``, ``labels [K]``).
        """
        batch = ImageBatch.of(images)
        images = batch.tensor
        if not self.training:
            boxes, scores = self.candidates(images)
            return self.select(boxes, scores, batch.image_sizes)
        if targets is None or len(targets) != len(images):
            raise ValueError("SSD in training mode needs one Target per image")
        return self.losses(*self.predict(images), targets)

    def losses(
        self, logits: Tensor, deltas: Tensor, anchors: Tensor, targets: list[Target]
    ) -> dict[str, Tensor]:
        """Matching and the multibox loss of :meth:`predict`'s outputs.

        Args:
            logits (Tensor[B, A, C + 1]), deltas (Tensor[B, A, 4]), anchors (Tensor[A, 4]):
                :meth:`predict`'s outputs.
            targets: one :class:`~cvkit.structures.Target` per image.

        Returns:
            ``{"cls": Tensor[], "box": Tensor[]}`` (the box term weighted by
            ``box_loss_weight``).
        """
        cls_targets, box_targets = self.match(anchors, targets)
        losses = multibox_loss(
            logits,
            deltas,
            cls_targets,
            box_targets,
            self.options.neg_pos_ratio,
            self.options.box_loss,
        )
        losses["box"] = losses["box"] * self.options.box_loss_weight
        return losses

    def match(self, anchors: Tensor, targets: list[Target]) -> tuple[Tensor, Tensor]:
        """Training targets of every anchor.

        Args:
            anchors (Tensor[A, 4]): xyxy pixels.
            targets: one :class:`~cvkit.structures.Target` per image (``boxes`` [N, 4] xyxy
                pixels, ``labels`` [N]).

        Returns:
            cls_targets (Tensor[B, A]) int64: 0 background, ``label + 1`` for a matched anchor;
            box_targets (Tensor[B, A, 4]): encoded offsets to the matched box (anchors without
            a match encode themselves, and the loss never reads them).
        """
        batch, num_anchors = len(targets), len(anchors)
        counts = [len(target.boxes) for target in targets]
        most = max(counts, default=0)
        if most == 0:
            classes = torch.zeros(batch, num_anchors, dtype=torch.int64, device=anchors.device)
            matched = anchors.expand(batch, num_anchors, 4)
            return classes, encode_boxes(matched, anchors, stds=self.box_stds)
        # every image's boxes padded to the largest count: one IoU matrix and one batched
        # greedy assignment for the batch (padded columns get IoU -1 and never match)
        boxes = anchors.new_zeros(batch, most, 4)
        labels = torch.zeros(batch, most, dtype=torch.int64, device=anchors.device)
        real = torch.zeros(batch, most, dtype=torch.bool, device=anchors.device)
        for row, (target, count) in enumerate(zip(targets, counts, strict=True)):
            boxes[row, :count] = target.boxes
            labels[row, :count] = target.labels
            real[row, :count] = True
        iou = box_iou(anchors, boxes.view(-1, 4)).view(num_anchors, batch, most).transpose(0, 1)
        iou = iou.masked_fill(~real[:, None, :], -1.0)
        assigned = greedy_assign_batched(iou, self.options.iou_threshold)
        found = assigned >= 0
        index = assigned.clamp(min=0)
        classes = torch.where(found, labels.gather(1, index) + 1, 0)
        picked = boxes.gather(1, index[..., None].expand(-1, -1, 4))
        matched = torch.where(found[..., None], picked, anchors)
        return classes, encode_boxes(matched, anchors, stds=self.box_stds)

    @property
    def size_divisibility(self) -> int:
        """The coarsest level's stride: pad images to a multiple of it
        (:meth:`~cvkit.structures.ImageBatch.from_tensors`) so every level's grid is whole."""
        return max(shape.stride for shape in self.extras.output_shapes.values())


@register_model("ssd")
def build_ssd(config: Config, num_classes: int) -> SSD:
    """The SSD that ``model:`` describes: ``backbone``, ``out_features``, ``ssd`` options.

    Stages up to ``model.freeze_at`` are frozen; ``model.pretrained`` is applied by the
    training task, not here. Thresholds for inference come from the ``eval:`` section.
    """
    return SSD.from_config(config, num_classes, config.model.ssd)
