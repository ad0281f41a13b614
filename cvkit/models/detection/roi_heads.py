"""The RoI box head of Fast / Faster R-CNN: pool each region, classify it, refine its box per class.

Each proposal reads a fixed ``roi_size × roi_size`` grid from the feature level that matches
its size (:func:`cvkit.ops.roi.multiscale_roi_align`, or RoI pooling for Fast R-CNN); two fully
connected layers (:class:`TwoMLPHead`) feed a classifier over ``C + 1`` classes (0 is
background) and one set of box offsets per class (:class:`FastRCNNPredictor`).

Training adds the ground-truth boxes to the proposals, matches them at IoU 0.5, samples a
quarter positives, and returns cross-entropy plus smooth-L1 (β = 1/9) on the positives' own
class offsets, divided by the number of sampled RoIs — torchvision's ``fastrcnn_loss``.
Inference returns per-class candidates ``boxes [B, P, C, 4]`` and ``scores [B, P, C]`` for
:func:`~cvkit.models.detection.postprocess.select_detections` or an exported graph's NMS.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cvkit.models.detection.rpn import SMOOTH_L1_BETA, Proposals, clip_per_image, match_and_sample
from cvkit.ops.coder import decode_boxes, encode_boxes, stds_from_weights
from cvkit.ops.roi import boxes_to_rois
from cvkit.structures import Target

MIN_BOX_SIZE = 1e-2
"""Final boxes narrower or lower than this (pixels) are dropped, as torchvision does."""

RoIPooler = Callable[[Sequence[Tensor], Tensor], Tensor]
"""``pool(features, rois [K, 5]) -> Tensor[K, C, r, r]`` with rois ``(image, x1, y1, x2, y2)``."""


class TwoMLPHead(nn.Module):
    """Flatten the pooled grid, then two fully connected layers with ReLU (``fc6``, ``fc7``:
    torchvision's names)."""

    def __init__(self, in_features: int, representation_size: int) -> None:
        super().__init__()
        self.fc6 = nn.Linear(in_features, representation_size)
        self.fc7 = nn.Linear(representation_size, representation_size)

    def forward(self, pooled: Tensor) -> Tensor:
        """``Tensor[K, C, r, r]`` → ``Tensor[K, representation_size]``."""
        return F.relu(self.fc7(F.relu(self.fc6(pooled.flatten(1)))))


class FastRCNNPredictor(nn.Module):
    """Class logits ``[K, C + 1]`` (``cls_score``) and per-class offsets ``[K, (C + 1) * 4]``
    (``bbox_pred``), background first."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.cls_score = nn.Linear(in_features, num_classes + 1)
        self.bbox_pred = nn.Linear(in_features, (num_classes + 1) * 4)

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """``Tensor[K, D]`` → ``(logits [K, C + 1], offsets [K, (C + 1) * 4])``."""
        return self.cls_score(features), self.bbox_pred(features)


def rois_from_padded(boxes: Tensor) -> Tensor:
    """``boxes [B, P, 4]`` → RoIs ``[B * P, 5]`` ``(image_index, x1, y1, x2, y2)``, image-major
    (export-friendly: no per-image Python loop)."""
    batch, count = boxes.shape[:2]
    index = torch.arange(batch, device=boxes.device, dtype=boxes.dtype)
    index = index[:, None, None].expand(batch, count, 1)
    return torch.cat([index, boxes], dim=2).flatten(0, 1)


def pool_in_roi_precision(pool: RoIPooler, features: Sequence[Tensor], rois: Tensor) -> Tensor:
    """``pool(features, rois)`` computed in the dtype of ``rois``, returned in the features'.

    A float16 network (``cvkit export --half``) keeps its proposals float32 (the RPN decodes
    and selects them in float32), so the features are read in float32 here rather than the
    RoIs rounded to float16: at 512 px float16 coordinates are off by up to 0.25 px, and box
    areas above 65504 px² (sides over ~256 px) overflow, which would send large boxes to the
    wrong FPN level. Equal dtypes (the float32 model) add no cast.

    Args:
        pool: the RoI pooler.
        features: ``Tensor[B, C, H_l, W_l]`` per level, any floating dtype.
        rois (Tensor[K, 5]): ``(image_index, x1, y1, x2, y2)`` input pixels.

    Returns:
        ``Tensor[K, C, r, r]`` of ``features[0]``'s dtype.
    """
    pooled = pool([level.to(rois.dtype) for level in features], rois)
    return pooled.to(features[0].dtype)


class RoIBoxHead(nn.Module):
    """Pooling, box head and predictor; sampling and losses in training.

    Args:
        pool: the RoI pooler (multi-scale RoIAlign for Faster R-CNN, RoIPool for Fast R-CNN).
        box_head: pooled grid → ``[K, D]`` features.
        predictor: ``[K, D]`` → logits and per-class offsets.
        num_classes: foreground classes C.
        box_weights: box-coder weights ``(wx, wy, ww, wh)``.
        fg_iou_threshold, bg_iou_threshold: a proposal at IoU ≥ fg is positive, below bg
            negative, in between ignored.
        batch_size_per_image, positive_fraction: the sampled RoIs per image.
    """

    def __init__(
        self,
        pool: RoIPooler,
        box_head: nn.Module,
        predictor: nn.Module,
        num_classes: int,
        box_weights: Sequence[float] = (10.0, 10.0, 5.0, 5.0),
        fg_iou_threshold: float = 0.5,
        bg_iou_threshold: float = 0.5,
        batch_size_per_image: int = 512,
        positive_fraction: float = 0.25,
    ) -> None:
        super().__init__()
        self.pool = pool
        self.box_head = box_head
        self.box_predictor = predictor
        self.num_classes = num_classes
        self.box_stds = stds_from_weights(box_weights)
        self.fg_iou_threshold = fg_iou_threshold
        self.bg_iou_threshold = bg_iou_threshold
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction

    def predict(self, features: Sequence[Tensor], rois: Tensor) -> tuple[Tensor, Tensor]:
        """``rois [K, 5]`` → logits ``[K, C + 1]`` and offsets ``[K, C + 1, 4]`` (pooled in the
        RoIs' precision, :func:`pool_in_roi_precision`)."""
        pooled = pool_in_roi_precision(self.pool, features, rois)
        logits, deltas = self.box_predictor(self.box_head(pooled))
        return logits, deltas.reshape(deltas.shape[0], -1, 4)

    def sample(
        self, proposals: list[Tensor], targets: list[Target]
    ) -> tuple[list[Tensor], Tensor, Tensor]:
        """Training RoIs per image: proposals plus ground truth, matched and sampled.

        Returns:
            ``(rois per image [k_i, 4], labels [K] int64 (0 = background, else class + 1),
            box codes [K, 4] of each RoI's matched ground truth)``, ``K = sum(k_i)``; the codes
            of background RoIs are zero and never read.
        """
        rois, labels, codes, _ = self.sample_matched(proposals, targets)
        return rois, labels, codes

    def sample_matched(
        self, proposals: list[Tensor], targets: list[Target]
    ) -> tuple[list[Tensor], Tensor, Tensor, list[Tensor]]:
        """:meth:`sample` plus, per image, the ground-truth index ``int64 [p_i]`` matched by
        each positive RoI; the positives are the first ``p_i`` of that image's RoIs (what a
        mask head trains on)."""
        sampled_rois, labels, codes, positive_matches = [], [], [], []
        for image_proposals, target in zip(proposals, targets, strict=True):
            gt = target.boxes.to(image_proposals.dtype)
            rois = torch.cat([image_proposals, gt])
            matched, pos, neg = match_and_sample(
                rois,
                gt,
                (self.fg_iou_threshold, self.bg_iou_threshold),
                self.batch_size_per_image,
                self.positive_fraction,
            )
            picked = torch.cat([pos, neg])
            image_labels = torch.zeros_like(picked)
            image_codes = rois.new_zeros((picked.numel(), 4))
            if pos.numel():
                image_labels[: pos.numel()] = target.labels[matched[pos]] + 1
                image_codes[: pos.numel()] = encode_boxes(
                    gt[matched[pos]], rois[pos], stds=self.box_stds
                )
            sampled_rois.append(rois[picked])
            labels.append(image_labels)
            codes.append(image_codes)
            positive_matches.append(matched[pos])
        return sampled_rois, torch.cat(labels), torch.cat(codes), positive_matches

    def loss(
        self, features: Sequence[Tensor], proposals: list[Tensor], targets: list[Target]
    ) -> dict[str, Tensor]:
        """``{"roi_cls": cross-entropy (mean over sampled RoIs), "roi_box": smooth-L1 of the
        positives' own-class offsets, summed and divided by the number of sampled RoIs}``.

        Args:
            features: ``Tensor[B, C, H_l, W_l]`` per level the pooler reads.
            proposals: one ``Tensor[P_i, 4]`` xyxy input pixels per image (detached).
            targets: one :class:`~cvkit.structures.Target` per image.
        """
        rois, labels, codes = self.sample(proposals, targets)
        return self.sampled_loss(features, rois, labels, codes)

    def sampled_loss(
        self, features: Sequence[Tensor], rois: list[Tensor], labels: Tensor, codes: Tensor
    ) -> dict[str, Tensor]:
        """:meth:`loss` of RoIs already drawn by :meth:`sample` (same arguments and results)."""
        logits, deltas = self.predict(features, boxes_to_rois(rois))
        cls = F.cross_entropy(logits.float(), labels)
        positive = torch.nonzero(labels > 0).squeeze(1)
        box = F.smooth_l1_loss(
            deltas[positive, labels[positive]].float(),
            codes[positive],
            beta=SMOOTH_L1_BETA,
            reduction="sum",
        )
        return {"roi_cls": cls, "roi_box": box / max(1, labels.numel())}

    def candidates(
        self,
        features: Sequence[Tensor],
        proposals: Proposals,
        image_sizes: Sequence[tuple[int, int]],
    ) -> tuple[Tensor, Tensor]:
        """Per-class boxes and scores of every proposal slot (padding scores 0).

        Args:
            features: ``Tensor[B, C, H_l, W_l]`` per level the pooler reads.
            proposals: padded proposals ``[B, P, 4]`` with their counts.
            image_sizes: ``(h, w)`` of each image; boxes are clipped to it.

        Returns:
            ``boxes [B, P, C, 4]`` xyxy input pixels and ``scores [B, P, C]`` softmax
            probabilities without the background column; padding slots and boxes smaller
            than :data:`MIN_BOX_SIZE` score 0.
        """
        batch, count = proposals.boxes.shape[:2]
        logits, deltas = self.predict(features, rois_from_padded(proposals.boxes))
        scores = logits.float().softmax(-1)[:, 1:].reshape(batch, count, -1)
        deltas = deltas[:, 1:].float().reshape(batch, count, -1, 4)
        boxes = decode_boxes(deltas, proposals.boxes[:, :, None, :], stds=self.box_stds)
        boxes = clip_per_image(boxes, image_sizes)
        widths, heights = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
        keep = (widths >= MIN_BOX_SIZE) & (heights >= MIN_BOX_SIZE) & proposals.valid()[..., None]
        return boxes, scores * keep
