"""The region proposal network (RPN) of Faster R-CNN, exportable with a dynamic batch.

A small convolutional head slides over every FPN level and scores each anchor
(:func:`cvkit.ops.anchors.grid_anchors`) as object or not, with four box offsets. Proposals
are the ``pre_nms_top_n`` best anchors of each level, decoded, clipped to their image, NMS'd
separately per level and cut to the ``post_nms_top_n`` best of the image — the selection of
torchvision's ``RegionProposalNetwork``, written with fixed shapes: every image gets a
``[P, 4]`` block of proposals (best first) and a count of how many are real, through
:func:`cvkit.ops.nms.batched_nms_padded` (one ONNX ``NonMaxSuppression``), so the same code
runs eagerly, in training and inside an exported graph at any batch size.

Training matches anchors to ground truth (:func:`cvkit.ops.matching.threshold_match`, low-quality
matches kept), samples a balanced set (:func:`cvkit.ops.matching.balanced_sample`) and returns
binary cross-entropy on objectness plus smooth-L1 (β = 1/9) on the positives' offsets, both
as torchvision computes them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops.misc import Conv2dNormActivation

from cvkit.config.model import RPNConfig
from cvkit.errors import ConfigError
from cvkit.models.detection.ssd import flatten_level
from cvkit.ops.anchors import grid_anchors
from cvkit.ops.boxes import clip_boxes
from cvkit.ops.coder import decode_boxes, encode_boxes
from cvkit.ops.iou import box_iou
from cvkit.ops.matching import BACKGROUND, balanced_sample, threshold_match
from cvkit.ops.nms import batched_nms_padded
from cvkit.structures import ImageBatch, Target

SMOOTH_L1_BETA = 1.0 / 9.0
"""torchvision's smooth-L1 β for the RPN and RoI box losses."""


class RPNHead(nn.Module):
    """3×3 convolution + ReLU shared by all levels, then 1×1 objectness and 1×1 box offsets.

    Parameter names and initialization (normal, std 0.01, zero bias) are torchvision's
    ``RPNHead``, so its weights load one to one (``conv.0.0``, ``cls_logits``, ``bbox_pred``).

    Args:
        in_channels: channels of every level.
        num_anchors: anchors per cell (the same on every level).
    """

    def __init__(self, in_channels: int, num_anchors: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            Conv2dNormActivation(in_channels, in_channels, kernel_size=3, norm_layer=None)
        )
        self.cls_logits = nn.Conv2d(in_channels, num_anchors, kernel_size=1)
        self.bbox_pred = nn.Conv2d(in_channels, num_anchors * 4, kernel_size=1)
        for layer in self.modules():
            if isinstance(layer, nn.Conv2d):
                nn.init.normal_(layer.weight, std=0.01)
                nn.init.zeros_(layer.bias)

    def forward(self, features: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Per level ``l``: objectness ``[B, A, H_l, W_l]`` and offsets ``[B, 4A, H_l, W_l]``."""
        objectness, deltas = [], []
        for feature in features:
            hidden = self.conv(feature)
            objectness.append(self.cls_logits(hidden))
            deltas.append(self.bbox_pred(hidden))
        return objectness, deltas


class Proposals(NamedTuple):
    """Padded proposals of a batch (best first per image).

    Attributes:
        boxes: ``float32 [B, P, 4]`` (x1, y1, x2, y2) input pixels; rows from ``count`` on are
            zero padding.
        scores: ``float32 [B, P]`` objectness probabilities (0 on padding).
        count: ``int64 [B]`` real proposals per image.
    """

    boxes: Tensor
    scores: Tensor
    count: Tensor

    def valid(self) -> Tensor:
        """``bool [B, P]``: True on real proposals."""
        positions = torch.arange(self.boxes.shape[1], device=self.boxes.device)
        return positions[None, :] < self.count[:, None]

    def per_image(self) -> list[Tensor]:
        """The real proposals of each image, ``Tensor[count_i, 4]``."""
        return [boxes[: int(count)] for boxes, count in zip(self.boxes, self.count, strict=True)]


def clip_per_image(boxes: Tensor, image_sizes: Sequence[tuple[int, int]]) -> Tensor:
    """Clip ``boxes [B, ..., 4]`` (xyxy pixels) of image ``b`` to ``image_sizes[b]`` ``(h, w)``.

    One size for the whole batch (always the case in an exported graph) clips in one call.
    """
    if len(set(image_sizes)) == 1:
        return clip_boxes(boxes, image_sizes[0])
    return torch.stack(
        [
            clip_boxes(image_boxes, size)
            for image_boxes, size in zip(boxes, image_sizes, strict=True)
        ]
    )


def match_and_sample(
    boxes: Tensor,
    gt: Tensor,
    thresholds: tuple[float, float],
    num_samples: int,
    positive_fraction: float,
    allow_low_quality_matches: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """Match ``boxes [A, 4]`` to ground truth ``gt [G, 4]`` (xyxy) and draw a balanced sample.

    Args:
        thresholds: ``(fg_iou, bg_iou)`` of :func:`~cvkit.ops.matching.threshold_match`.
        num_samples, positive_fraction: as in :func:`~cvkit.ops.matching.balanced_sample`
            (the global torch generator draws, in torchvision's order).
        allow_low_quality_matches: keep each ground truth's best boxes as positives.

    Returns:
        ``(matched [A] int64 (gt index, or -1 background / -2 ignored), positive_idx [P],
        negative_idx [Q])``; no ground truth makes every box background.
    """
    if gt.numel():
        matched = threshold_match(box_iou(boxes, gt), *thresholds, allow_low_quality_matches)
    else:
        matched = torch.full_like(boxes[:, 0], BACKGROUND, dtype=torch.int64)
    pos, neg = balanced_sample(matched >= 0, matched == BACKGROUND, num_samples, positive_fraction)
    return matched, pos, neg


class RegionProposalNetwork(nn.Module):
    """Anchors, objectness + offsets, proposals and (in training) the RPN losses.

    Args:
        in_channels: channels of every input level (an FPN's ``out_channels``).
        num_levels: feature levels the RPN reads (one anchor-size list each).
        options: ``model.faster_rcnn.rpn``.

    Raises:
        ConfigError: ``anchor_sizes`` does not have one list per level, or levels would get
            different numbers of anchors per cell (the head is shared).
    """

    def __init__(self, in_channels: int, num_levels: int, options: RPNConfig | None = None):
        super().__init__()
        self.options = options or RPNConfig()
        sizes = self.options.anchor_sizes
        if len(sizes) != num_levels:
            raise ConfigError(
                f"model.faster_rcnn.rpn.anchor_sizes: needs one list per feature level "
                f"({num_levels}: the FPN levels plus pool), got {len(sizes)}: {sizes}"
            )
        if len({len(level) for level in sizes}) != 1:
            raise ConfigError(
                "model.faster_rcnn.rpn.anchor_sizes: every level needs the same number of sizes "
                f"(one RPN head is shared by all levels), got {sizes}"
            )
        self.num_anchors = len(sizes[0]) * len(self.options.anchor_ratios)
        self.head = RPNHead(in_channels, self.num_anchors)
        self._anchor_cache: dict[tuple[Any, ...], list[Tensor]] = {}

    def anchors(self, features: Sequence[Tensor], image_shape: tuple[int, int]) -> list[Tensor]:
        """Anchors of each level, ``Tensor[H_l * W_l * A, 4]`` xyxy input pixels, in the head's
        order (row, column, anchor); a level's stride is ``image_shape // (H_l, W_l)``."""
        grids = [tuple(int(s) for s in feature.shape[-2:]) for feature in features]
        key = (tuple(grids), tuple(image_shape), features[0].device)
        if key not in self._anchor_cache:
            strides = [(image_shape[0] // h, image_shape[1] // w) for h, w in grids]
            anchors = grid_anchors(
                grids,
                strides,
                self.options.anchor_sizes,
                self.options.anchor_ratios,
                device=features[0].device,
                rounded=True,
            )
            self._anchor_cache = {key: anchors}
        return self._anchor_cache[key]

    def forward(
        self,
        features: Sequence[Tensor],
        images: ImageBatch,
        targets: list[Target] | None = None,
    ) -> tuple[Proposals, dict[str, Tensor]]:
        """Proposals for every image, and the losses in training mode.

        Args:
            features: ``Tensor[B, C, H_l, W_l]`` per level, finest first.
            images: the padded batch (its tensor's size sets the strides; each image's own
                size clips its proposals).
            targets: training only, one :class:`~cvkit.structures.Target` per image.

        Returns:
            ``(Proposals, losses)``: ``losses`` is ``{"rpn_cls", "rpn_box"}`` in training, else
            empty.
        """
        objectness, deltas = self.head(features)
        anchors = self.anchors(features, tuple(images.tensor.shape[-2:]))
        objectness = [flatten_level(level, 1).squeeze(-1) for level in objectness]
        deltas = [flatten_level(level, 4) for level in deltas]
        proposals = self.propose(
            [level.detach() for level in objectness],
            [level.detach() for level in deltas],
            anchors,
            images.image_sizes,
        )
        if not self.training:
            return proposals, {}
        if targets is None or len(targets) != len(images):
            raise ValueError("the RPN in training mode needs one Target per image")
        losses = self.loss(
            torch.cat(objectness, 1), torch.cat(deltas, 1), torch.cat(anchors), targets
        )
        return proposals, losses

    def propose(
        self,
        objectness: Sequence[Tensor],
        deltas: Sequence[Tensor],
        anchors: Sequence[Tensor],
        image_sizes: Sequence[tuple[int, int]],
    ) -> Proposals:
        """Select proposals from per-level logits ``[B, A_l]``, offsets ``[B, A_l, 4]`` and
        anchors ``[A_l, 4]`` (fixed shapes throughout, see the module docstring)."""
        options = self.options
        pre_nms = options.pre_nms_top_n_train if self.training else options.pre_nms_top_n_test
        post_nms = options.post_nms_top_n_train if self.training else options.post_nms_top_n_test
        boxes, logits, levels = [], [], []
        for level, (level_logits, level_deltas, level_anchors) in enumerate(
            zip(objectness, deltas, anchors, strict=True)
        ):
            top_logits, index = level_logits.topk(min(pre_nms, level_logits.shape[1]), dim=1)
            top_deltas = torch.gather(level_deltas, 1, index.unsqueeze(-1).expand(-1, -1, 4))
            boxes.append(decode_boxes(top_deltas.float(), level_anchors[index]))
            logits.append(top_logits)
            levels.append(torch.full_like(index[0], level))
        boxes = clip_per_image(torch.cat(boxes, 1), image_sizes)
        scores = torch.cat(logits, 1).float().sigmoid()
        widths, heights = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
        scores = scores * ((widths >= options.min_size) & (heights >= options.min_size))
        # NMS per level: each proposal scores only in its own level's column.
        by_level = F.one_hot(torch.cat(levels), len(anchors)).to(scores.dtype) * scores[..., None]
        kept_boxes, kept_scores, _, count = batched_nms_padded(
            boxes, by_level, options.nms_threshold, 0.0, post_nms
        )
        return Proposals(kept_boxes, kept_scores, count)

    def loss(
        self, objectness: Tensor, deltas: Tensor, anchors: Tensor, targets: list[Target]
    ) -> dict[str, Tensor]:
        """RPN losses of all levels' predictions concatenated.

        Args:
            objectness (Tensor[B, A]): logits.
            deltas (Tensor[B, A, 4]): predicted offsets (unit box-coder weights).
            anchors (Tensor[A, 4]): xyxy pixels.
            targets: one per image (``boxes`` [N, 4] xyxy pixels).

        Returns:
            ``{"rpn_cls": BCE over the sampled anchors (mean), "rpn_box": smooth-L1 over the
            sampled positives, summed and divided by the number of sampled anchors}``.
        """
        options = self.options
        positives, negatives, box_losses = [], [], []
        for image, target in enumerate(targets):
            gt = target.boxes.to(anchors.dtype)
            matched, pos, neg = match_and_sample(
                anchors,
                gt,
                (options.fg_iou_threshold, options.bg_iou_threshold),
                options.batch_size_per_image,
                options.positive_fraction,
                allow_low_quality_matches=True,
            )
            positives.append(pos + image * len(anchors))
            negatives.append(neg + image * len(anchors))
            if pos.numel():
                codes = encode_boxes(gt[matched[pos]], anchors[pos])
                box_losses.append(
                    F.smooth_l1_loss(
                        deltas[image, pos].float(), codes, beta=SMOOTH_L1_BETA, reduction="sum"
                    )
                )
        positive, negative = torch.cat(positives), torch.cat(negatives)
        sampled = torch.cat([positive, negative])
        labels = torch.cat([torch.ones_like(positive), torch.zeros_like(negative)]).float()
        cls = F.binary_cross_entropy_with_logits(objectness.flatten()[sampled].float(), labels)
        box = sum(box_losses, deltas.new_zeros(())) / max(1, sampled.numel())
        return {"rpn_cls": cls, "rpn_box": box}
