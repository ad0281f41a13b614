"""The mask branch of Mask R-CNN: head, training targets, loss and paste-back into the image.

Each RoI reads a ``14 × 14`` grid from its FPN level; :class:`MaskHead` (four 3×3 conv + ReLU)
and :class:`MaskPredictor` (2×2 stride-2 transposed conv, ReLU, 1×1 conv) turn it into one
``28 × 28`` logit map per foreground class. Module and parameter names are torchvision's
(``MaskRCNNHeads``, ``MaskRCNNPredictor``), so weights load across both ways.

Training targets are the ground-truth masks resampled onto each positive RoI by RoIAlign
(:func:`project_masks_on_boxes`); the loss is binary cross-entropy on the channel of the RoI's
ground-truth class (:func:`mask_loss`). At inference :func:`paste_masks_in_image` resizes each
RoI-resolution mask into its box in image pixels. All three follow torchvision's
``roi_heads`` functions of the same names; the torch-free twin of the paste-back is
:func:`cvkit.runtime.masks.paste_masks`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cvkit.ops.roi import roi_align
from cvkit.structures import CroppedMasks

MASK_THRESHOLD = 0.5
"""Probability above which a pasted mask pixel belongs to the instance."""


class MaskHead(nn.Sequential):
    """3×3 conv + ReLU blocks (``"<i>.0"`` convolutions, as torchvision's ``MaskRCNNHeads``).

    Args:
        in_channels: channels of the pooled RoI features.
        layers: output channels of each block (torchvision: four of 256).
    """

    def __init__(self, in_channels: int, layers: Sequence[int]) -> None:
        blocks = []
        for channels in layers:
            blocks.append(
                nn.Sequential(nn.Conv2d(in_channels, channels, 3, padding=1), nn.ReLU(inplace=True))
            )
            in_channels = channels
        super().__init__(*blocks)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)


class MaskPredictor(nn.Sequential):
    """``[K, C_in, r, r]`` → per-class mask logits ``[K, num_classes, 2r, 2r]``
    (``conv5_mask`` transposed conv, ``relu``, ``mask_fcn_logits``: torchvision's names).

    Args:
        in_channels: channels of the mask head's output.
        dim_reduced: channels after the transposed convolution.
        num_classes: output maps; cvkit passes its foreground classes plus the background slot,
            so channel ``c + 1`` is class ``c`` as in torchvision.
    """

    def __init__(self, in_channels: int, dim_reduced: int, num_classes: int) -> None:
        super().__init__(
            OrderedDict(
                [
                    ("conv5_mask", nn.ConvTranspose2d(in_channels, dim_reduced, 2, 2)),
                    ("relu", nn.ReLU(inplace=True)),
                    ("mask_fcn_logits", nn.Conv2d(dim_reduced, num_classes, 1)),
                ]
            )
        )
        for name, parameter in self.named_parameters():
            if "weight" in name:
                nn.init.kaiming_normal_(parameter, mode="fan_out", nonlinearity="relu")


def project_masks_on_boxes(
    gt_masks: Tensor | CroppedMasks, boxes: Tensor, matched: Tensor, resolution: int
) -> Tensor:
    """Crop and resample each RoI's matched ground-truth mask to ``resolution²``.

    Args:
        gt_masks (Tensor[G, H, W] or CroppedMasks): one image's instance masks (0/1, any
            dtype), input pixels. Cropped masks are made dense only for the matched ground
            truths (the same masks, so the same targets bit for bit).
        boxes (Tensor[K, 4]): RoIs ``(x1, y1, x2, y2)`` in the same pixels.
        matched (Tensor[K]): int64 index into ``gt_masks`` of each RoI's ground truth.
        resolution: side of the target grid (28).

    Returns:
        Tensor[K, resolution, resolution] float soft targets in [0, 1] (RoIAlign with adaptive
        sampling, unaligned: torchvision's targets).
    """
    if isinstance(gt_masks, CroppedMasks):
        used = torch.unique(matched)
        gt_masks = gt_masks.to_dense(used.tolist())
        matched = torch.searchsorted(used, matched)
    rois = torch.cat([matched.to(boxes)[:, None], boxes], dim=1)
    return roi_align(gt_masks[:, None].to(boxes), rois, resolution)[:, 0]


def mask_loss(
    mask_logits: Tensor,
    boxes: Sequence[Tensor],
    gt_masks: Sequence[Tensor | CroppedMasks],
    gt_labels: Sequence[Tensor],
    matched: Sequence[Tensor],
) -> Tensor:
    """Binary cross-entropy of each positive RoI's logits on its ground-truth class channel.

    Args:
        mask_logits (Tensor[K, C + 1, M, M]): logits of the positive RoIs, images in order
            (channel 0 is the unused background).
        boxes: per image, the positive RoIs ``Tensor[p_i, 4]`` xyxy input pixels.
        gt_masks: per image, ``Tensor[G_i, H, W]`` instance masks in input pixels (or
            :class:`~cvkit.structures.CroppedMasks` of them).
        gt_labels: per image, ``int64 [G_i]`` classes 0..C-1.
        matched: per image, ``int64 [p_i]`` ground-truth index of each positive RoI.

    Returns:
        Scalar mean over all ``K × M × M`` pixels; zero (still connected to the logits) when
        there are no positives.
    """
    resolution = mask_logits.shape[-1]
    labels = torch.cat([lab[idx] + 1 for lab, idx in zip(gt_labels, matched, strict=True)])
    targets = torch.cat(
        [
            project_masks_on_boxes(m, b, i, resolution)
            for m, b, i in zip(gt_masks, boxes, matched, strict=True)
        ]
    )
    if targets.numel() == 0:
        return mask_logits.sum() * 0
    picked = mask_logits[torch.arange(labels.numel(), device=labels.device), labels]
    return F.binary_cross_entropy_with_logits(picked.float(), targets)


def paste_masks_in_image(
    masks: Tensor, boxes: Tensor, image_size: tuple[int, int], padding: int = 1
) -> Tensor:
    """Resize each RoI-resolution mask into its box of an ``image_size`` canvas.

    The mask is padded by ``padding`` zero pixels and its box widened by the same fraction
    (so edges fade to 0 outside the box); the box corners are truncated to integers and the
    mask resized bilinearly (half-pixel centres) onto ``x1..x2``, ``y1..y2`` inclusive —
    torchvision's ``paste_masks_in_image``.

    Args:
        masks (Tensor[K, M, M]): probabilities (or any values) per detection.
        boxes (Tensor[K, 4]): ``(x1, y1, x2, y2)`` in the canvas's pixels.
        image_size: ``(h, w)`` of the canvas.
        padding: zero pixels added around each mask before resizing.

    Returns:
        Tensor[K, h, w] of ``masks``' dtype, zero outside each (clipped) box.
    """
    height, width = image_size
    side = masks.shape[-1]
    padded = F.pad(masks, (padding,) * 4)
    scale = (side + 2 * padding) / side
    centres = (boxes[:, :2] + boxes[:, 2:]) * 0.5
    halves = (boxes[:, 2:] - boxes[:, :2]) * 0.5 * scale
    corners = torch.cat([centres - halves, centres + halves], dim=1).to(torch.int64).tolist()
    canvas = masks.new_zeros((masks.shape[0], height, width))
    for slot, mask, (x1, y1, x2, y2) in zip(canvas, padded, corners, strict=True):
        box_w, box_h = max(x2 - x1 + 1, 1), max(y2 - y1 + 1, 1)
        resized = F.interpolate(
            mask[None, None], size=(box_h, box_w), mode="bilinear", align_corners=False
        )[0, 0]
        left, right = max(x1, 0), min(x2 + 1, width)
        top, bottom = max(y1, 0), min(y2 + 1, height)
        if left < right and top < bottom:
            slot[top:bottom, left:right] = resized[top - y1 : bottom - y1, left - x1 : right - x1]
    return canvas
