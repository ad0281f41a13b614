"""An anchor-free, multi-scale YOLO (the YOLOv8 recipe) on any cvkit backbone.

The backbone's stages (strides 8, 16 and 32 with ``out_features: [layer2, layer3, layer4]``)
feed a PAN neck (:mod:`cvkit.models.necks.pan`). At every cell centre of every level (an
anchor *point*), a decoupled head predicts class logits (sigmoid, no background) and, in a
separate branch, the distances to the four box sides as distributions over ``reg_max + 1``
bins (:mod:`cvkit.models.detection.yolo_loss`). Training assigns ground truth with the
task-aligned assigner (:mod:`cvkit.models.detection.yolo_assign`) and weighs BCE classes,
CIoU and DFL. Sizes ``n``, ``s`` and ``m`` scale the neck and head width and the CSP depth.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from cvkit.config import Config
from cvkit.config.eval import EvalConfig
from cvkit.config.model import YOLOConfig
from cvkit.models.backbones import Backbone
from cvkit.models.build import register_model
from cvkit.models.detection.base import Detector
from cvkit.models.detection.yolo_assign import task_aligned_assign
from cvkit.models.detection.yolo_loss import (
    box_losses,
    class_loss,
    distances_to_boxes,
    expected_distances,
)
from cvkit.models.necks import backbone_shapes, build_neck
from cvkit.models.necks.pan import conv_bn_silu
from cvkit.structures import ImageBatch, Instances, Target

# (width, depth) multipliers of the neck/head channels (base 256) and CSP depth (base 3)
SIZES = {"n": (0.25, 0.34), "s": (0.5, 0.34), "m": (0.75, 0.67)}


def anchor_points(
    grids: list[tuple[int, int]], strides: list[int], device: torch.device
) -> tuple[Tensor, Tensor]:
    """Cell centres of every level, levels in order, rows then columns.

    Returns:
        points (Tensor[N, 2]): (x, y) in input pixels; strides (Tensor[N]): each point's stride.
    """
    points, point_strides = [], []
    for (rows, cols), stride in zip(grids, strides, strict=True):
        ys = (torch.arange(rows, device=device, dtype=torch.float32) + 0.5) * stride
        xs = (torch.arange(cols, device=device, dtype=torch.float32) + 0.5) * stride
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack([grid_x, grid_y], -1).reshape(-1, 2))
        point_strides.append(torch.full((rows * cols,), float(stride), device=device))
    return torch.cat(points), torch.cat(point_strides)


class DecoupledHead(nn.Module):
    """Per level: a class branch and a box branch, each two 3×3 conv-BN-SiLU and a 1×1.

    Args:
        channels: input channels of every level.
        num_levels: feature levels.
        num_classes: class logits per point.
        reg_max: last bin of each side's distance distribution.
        prior: initial class probability (the class bias is ``log(prior / (1 − prior))``).
    """

    def __init__(
        self, channels: int, num_levels: int, num_classes: int, reg_max: int, prior: float = 0.01
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.bins = reg_max + 1

        def branch(out_channels: int) -> nn.Module:
            return nn.Sequential(
                conv_bn_silu(channels, channels, 3),
                conv_bn_silu(channels, channels, 3),
                nn.Conv2d(channels, out_channels, 1),
            )

        self.classes = nn.ModuleList(branch(num_classes) for _ in range(num_levels))
        self.boxes = nn.ModuleList(branch(4 * self.bins) for _ in range(num_levels))
        for level in self.classes:
            nn.init.constant_(level[-1].bias, math.log(prior / (1 - prior)))

    def forward(self, features: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Class logits ``Tensor[B, N, C]`` and box logits ``Tensor[B, N, 4, reg_max + 1]`` of
        every point, levels in order, rows then columns."""
        logits, boxes = [], []
        for x, classify, regress in zip(features, self.classes, self.boxes, strict=True):
            logits.append(classify(x).flatten(2).transpose(1, 2))
            box = regress(x).flatten(2).transpose(1, 2)
            boxes.append(box.unflatten(-1, (4, self.bins)))
        return torch.cat(logits, 1), torch.cat(boxes, 1)


class YOLO(Detector):
    """Anchor-free YOLO: backbone, PAN neck, decoupled head, task-aligned training.

    Args:
        backbone: any :class:`Backbone`; its selected stages (two or more) feed the neck.
        num_classes: foreground classes (labels 0..C-1).
        options: ``model.yolo`` (size, bins, assigner and loss settings).
        inference: ``eval`` section (score threshold, NMS IoU, detections per image).
        body_lr_mult, head_lr_mult: learning-rate multipliers of the backbone and the rest.
    """

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int,
        options: YOLOConfig | None = None,
        inference: EvalConfig | None = None,
        body_lr_mult: float = 1.0,
        head_lr_mult: float = 1.0,
    ) -> None:
        super().__init__(backbone, num_classes, inference, body_lr_mult, head_lr_mult)
        self.options = options or YOLOConfig()
        width, depth = SIZES[self.options.size]
        channels = max(16, round(256 * width / 8) * 8)
        self.neck = build_neck(
            "pan", backbone_shapes(backbone), channels=channels, depth=max(1, round(3 * depth))
        )
        self.strides = [shape.stride for shape in self.neck.output_shapes.values()]
        self.head = DecoupledHead(channels, len(self.strides), num_classes, self.options.reg_max)

    def predict(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Raw outputs of ``Tensor[B, 3, H, W]`` images: class logits ``[B, N, C]``, box logits
        ``[B, N, 4, reg_max + 1]``, anchor points ``[N, 2]`` (x, y pixels) and their strides
        ``[N]``."""
        features = list(self.neck(self.backbone(images)).values())
        logits, box_logits = self.head(features)
        grids = [tuple(f.shape[-2:]) for f in features]
        points, strides = anchor_points(grids, self.strides, images.device)
        return logits.float(), box_logits.float(), points, strides

    def candidates(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Every anchor point's box and class scores.

        Args:
            images (Tensor[B, 3, H, W]): normalized images.

        Returns:
            boxes (Tensor[B, N, 4]): (x1, y1, x2, y2) in input pixels, clipped to the image;
            scores (Tensor[B, N, C]): sigmoid class probabilities.
        """
        logits, box_logits, points, strides = self.predict(images)
        boxes = distances_to_boxes(points, expected_distances(box_logits), strides)
        height, width = images.shape[-2], images.shape[-1]
        # clipped by broadcasting, no reshape: see YOLOv1.candidates
        limits = boxes.new_tensor([width, height, width, height])
        return torch.minimum(boxes.clamp(min=0), limits), logits.sigmoid()

    def forward(
        self, images: Tensor | ImageBatch, targets: list[Target] | None = None
    ) -> dict[str, Tensor] | list[Instances]:
        """Losses in training mode (``{"cls", "iou", "dfl"}``, each times its weight in
        ``model.yolo``), one :class:`~cvkit.structures.Instances` per image (xyxy input pixels)
        in eval mode. ``images`` is ``Tensor[B, 3, H, W]`` or an ImageBatch; ``targets`` one
        :class:`~cvkit.structures.Target` per image (``boxes`` [N, 4] xyxy input pixels,
        ``labels`` [N])."""
        batch = ImageBatch.of(images)
        images = batch.tensor
        if not self.training:
            boxes, scores = self.candidates(images)
            return self.select(boxes, scores, batch.image_sizes)
        if targets is None or len(targets) != len(images):
            raise ValueError("YOLO in training mode needs one Target per image")
        return self.losses(*self.predict(images), targets)

    def losses(
        self,
        logits: Tensor,
        box_logits: Tensor,
        points: Tensor,
        strides: Tensor,
        targets: list[Target],
    ) -> dict[str, Tensor]:
        """Assign each image's ground truth, then BCE on every (point, class), CIoU and DFL on
        the positives, all divided by the sum of the soft class targets (at least 1)."""
        pred_boxes = distances_to_boxes(points, expected_distances(box_logits), strides)
        options = self.options
        assigned = [
            task_aligned_assign(
                image_logits.detach().sigmoid(),
                image_boxes.detach(),
                points,
                target.boxes,
                target.labels,
                options.topk,
                options.alpha,
                options.beta,
            )
            for image_logits, image_boxes, target in zip(logits, pred_boxes, targets, strict=True)
        ]
        target_scores = torch.stack([a.scores for a in assigned])
        positive = torch.stack([a.positive for a in assigned])
        target_boxes = torch.stack([a.boxes for a in assigned])
        normalizer = target_scores.sum().clamp(min=1)
        image, point = torch.nonzero(positive, as_tuple=True)
        boxes = box_losses(
            box_logits[image, point],
            pred_boxes[image, point],
            target_boxes[image, point],
            points[point],
            strides[point],
            target_scores[image, point].sum(-1),
            normalizer,
        )
        return {
            "cls": class_loss(logits, target_scores, normalizer) * options.cls_weight,
            "iou": boxes["iou"] * options.iou_weight,
            "dfl": boxes["dfl"] * options.dfl_weight,
        }

    @property
    def size_divisibility(self) -> int:
        """The coarsest level's stride: every level's grid is whole."""
        return max(self.strides)


@register_model("yolo")
def build_yolo(config: Config, num_classes: int) -> YOLO:
    """The YOLO that ``model:`` describes: ``backbone``, ``out_features`` (strides 8/16/32 in
    the recipe) and the ``model.yolo`` options."""
    return YOLO.from_config(config, num_classes, config.model.yolo)
