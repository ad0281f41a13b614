"""YOLOv1 (Redmon et al., 2016): one S×S grid, regression straight to boxes.

The last backbone stage (stride ``s``) is the grid: an ``H×W`` input gives ``S_h×S_w = H/s ×
W/s`` cells. Every cell predicts ``B`` boxes ``(x, y, √w, √h, confidence)`` — ``x, y`` the
centre's offset inside the cell, ``√w, √h`` square roots of the size as fractions of the image,
all through a sigmoid — and one set of ``C`` class probabilities (softmax). A box's class score
is ``confidence × P(class)``. :func:`yolov1_loss` is the paper's sum-squared loss.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cvkit.config import Config
from cvkit.config.eval import EvalConfig
from cvkit.config.model import YOLOv1Config
from cvkit.models.backbones import Backbone
from cvkit.models.build import register_model
from cvkit.models.detection.base import Detector
from cvkit.models.necks import backbone_shapes
from cvkit.ops.iou import box_iou
from cvkit.structures import ImageBatch, Instances, Target


def decode_grid(boxes: Tensor, image_size: tuple[int, int]) -> Tensor:
    """Grid predictions to pixel boxes.

    Args:
        boxes (Tensor[B, S_h, S_w, K, 4]): ``(x, y, √w, √h)``: centre offsets in the cell and
            square roots of the size as fractions of the image, all in [0, 1].
        image_size: ``(H, W)`` of the input in pixels.

    Returns:
        Tensor[B, S_h, S_w, K, 4]: (x1, y1, x2, y2) in input pixels.
    """
    rows, cols = boxes.shape[1], boxes.shape[2]
    height, width = image_size
    ys = torch.arange(rows, device=boxes.device, dtype=boxes.dtype)[None, :, None, None]
    xs = torch.arange(cols, device=boxes.device, dtype=boxes.dtype)[None, None, :, None]
    cx = (xs + boxes[..., 0]) * (width / cols)
    cy = (ys + boxes[..., 1]) * (height / rows)
    w = boxes[..., 2].square() * width
    h = boxes[..., 3].square() * height
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def yolov1_loss(
    boxes: Tensor,
    confidence: Tensor,
    class_probs: Tensor,
    targets: list[Target],
    image_size: tuple[int, int],
    lambda_coord: float = 5.0,
    lambda_noobj: float = 0.5,
) -> dict[str, Tensor]:
    """The YOLOv1 sum-squared loss, summed over the grid and averaged over the batch.

    A ground truth belongs to the cell holding its centre (the largest one when a cell holds
    several); of that cell's ``K`` predictors, the one whose decoded box has the highest IoU
    with it is *responsible*. Terms:

    - ``box``: ``λ_coord Σ_resp (x−x̂)² + (y−ŷ)² + (√w−√ŵ)² + (√h−√ĥ)²``;
    - ``obj``: ``Σ_resp (conf − IoU)²`` (IoU of the responsible box, no gradient through it);
    - ``noobj``: ``λ_noobj Σ_not resp conf²`` (every other predictor, in every cell);
    - ``cls``: ``Σ_cells with an object Σ_c (p_c − p̂_c)²`` with one-hot ``p̂``.

    Args:
        boxes (Tensor[B, S_h, S_w, K, 4]): predicted ``(x, y, √w, √h)`` (see
            :func:`decode_grid`).
        confidence (Tensor[B, S_h, S_w, K]): predicted confidences in [0, 1].
        class_probs (Tensor[B, S_h, S_w, C]): per-cell class probabilities.
        targets: one :class:`~cvkit.structures.Target` per image (``boxes`` [N, 4] xyxy input
            pixels, ``labels`` [N]).
        image_size: ``(H, W)`` of the input in pixels.
        lambda_coord, lambda_noobj: the paper's weights (5 and 0.5).

    Returns:
        ``{"box", "obj", "noobj", "cls"}`` scalar tensors.
    """
    batch, rows, cols = boxes.shape[:3]
    height, width = image_size
    decoded = decode_grid(boxes.detach(), image_size)
    target_boxes = torch.zeros_like(boxes)
    target_conf = torch.zeros_like(confidence)
    responsible = torch.zeros_like(confidence, dtype=torch.bool)
    has_object = torch.zeros(batch, rows, cols, dtype=torch.bool, device=boxes.device)
    target_classes = torch.zeros_like(class_probs)
    for index, target in enumerate(targets):
        gt = target.boxes.to(boxes.dtype)
        if gt.numel() == 0:
            continue
        area = (gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1])
        for n in area.argsort().tolist():  # the largest is written last and wins its cell
            x1, y1, x2, y2 = gt[n]
            cx, cy = (x1 + x2) / 2 * cols / width, (y1 + y2) / 2 * rows / height
            col = int(cx.clamp(0, cols - 1e-4))
            row = int(cy.clamp(0, rows - 1e-4))
            ious = box_iou(decoded[index, row, col], gt[n : n + 1])[:, 0]
            best = int(ious.argmax())
            responsible[index, row, col] = False
            target_conf[index, row, col] = 0.0
            responsible[index, row, col, best] = True
            target_conf[index, row, col, best] = ious[best]
            code = torch.stack(
                [
                    cx - col,
                    cy - row,
                    ((x2 - x1) / width).clamp(min=0).sqrt(),
                    ((y2 - y1) / height).clamp(min=0).sqrt(),
                ]
            )
            target_boxes[index, row, col] = code
            has_object[index, row, col] = True
            target_classes[index, row, col] = 0.0
            target_classes[index, row, col, int(target.labels[n])] = 1.0
    resp = responsible.to(boxes.dtype)
    box = lambda_coord * ((boxes - target_boxes).square().sum(-1) * resp).sum()
    obj = ((confidence - target_conf).square() * resp).sum()
    noobj = lambda_noobj * (confidence.square() * (1 - resp)).sum()
    cls = ((class_probs - target_classes).square().sum(-1) * has_object.to(boxes.dtype)).sum()
    return {
        "box": box / batch,
        "obj": obj / batch,
        "noobj": noobj / batch,
        "cls": cls / batch,
    }


class YOLOv1(Detector):
    """The YOLOv1 grid detector on any cvkit backbone.

    Args:
        backbone: any :class:`Backbone`; its last selected stage is the grid.
        num_classes: foreground classes (labels 0..C-1).
        options: ``model.yolov1`` (boxes per cell, head width, loss weights).
        inference: ``eval`` section (score threshold, NMS IoU, detections per image).
        body_lr_mult, head_lr_mult: learning-rate multipliers of the backbone and the head.
    """

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int,
        options: YOLOv1Config | None = None,
        inference: EvalConfig | None = None,
        body_lr_mult: float = 1.0,
        head_lr_mult: float = 1.0,
    ) -> None:
        super().__init__(backbone, num_classes, inference, body_lr_mult, head_lr_mult)
        self.options = options or YOLOv1Config()
        shape = list(backbone_shapes(backbone).values())[-1]
        hidden = self.options.head_channels
        per_cell = self.options.boxes_per_cell
        self.head = nn.Sequential(
            nn.Conv2d(shape.channels, hidden, 3, padding=1),
            nn.BatchNorm2d(hidden),
            nn.LeakyReLU(0.1),
            nn.Conv2d(hidden, per_cell * 5 + num_classes, 1),
        )
        self._stride = shape.stride

    def predict(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Grid outputs of ``Tensor[B, 3, H, W]`` images (``S = H / stride``):
        boxes ``[B, S_h, S_w, K, 4]`` ``(x, y, √w, √h)`` in [0, 1], confidences
        ``[B, S_h, S_w, K]`` and class probabilities ``[B, S_h, S_w, C]``."""
        features = list(self.backbone(images).values())[-1]
        out = self.head(features).permute(0, 2, 3, 1).float()
        per_cell = self.options.boxes_per_cell
        boxes_conf = out[..., : per_cell * 5].sigmoid().unflatten(-1, (per_cell, 5))
        class_probs = out[..., per_cell * 5 :].softmax(-1)
        return boxes_conf[..., :4], boxes_conf[..., 4], class_probs

    def candidates(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Every predictor's box and class scores.

        Args:
            images (Tensor[B, 3, H, W]): normalized images.

        Returns:
            boxes (Tensor[B, S_h·S_w·K, 4]): (x1, y1, x2, y2) in input pixels, clipped to the
                image;
            scores (Tensor[B, S_h·S_w·K, C]): ``confidence × P(class)`` in [0, 1].
        """
        boxes, confidence, class_probs = self.predict(images)
        height, width = images.shape[-2], images.shape[-1]
        pixels = decode_grid(boxes, (height, width)).flatten(1, 3)
        # clipped by broadcasting: through ops.boxes.clip_boxes, the traced reshape of this
        # graph kept the export's batch (exported at 2, it failed at batch 3)
        limits = pixels.new_tensor([width, height, width, height])
        pixels = torch.minimum(pixels.clamp(min=0), limits)
        scores = confidence[..., None] * class_probs[..., None, :]
        return pixels, scores.flatten(1, 3)

    def forward(
        self, images: Tensor | ImageBatch, targets: list[Target] | None = None
    ) -> dict[str, Tensor] | list[Instances]:
        """Losses in training mode (``{"box", "obj", "noobj", "cls"}``, see
        :func:`yolov1_loss`), one :class:`~cvkit.structures.Instances` per image (xyxy input
        pixels) in eval mode. ``images`` is ``Tensor[B, 3, H, W]`` or an ImageBatch;
        ``targets`` one :class:`~cvkit.structures.Target` per image."""
        batch = ImageBatch.of(images)
        images = batch.tensor
        if not self.training:
            boxes, scores = self.candidates(images)
            return self.select(boxes, scores, batch.image_sizes)
        if targets is None or len(targets) != len(images):
            raise ValueError("YOLOv1 in training mode needs one Target per image")
        boxes, confidence, class_probs = self.predict(images)
        return yolov1_loss(
            boxes,
            confidence,
            class_probs,
            targets,
            (images.shape[-2], images.shape[-1]),
            self.options.lambda_coord,
            self.options.lambda_noobj,
        )

    @property
    def size_divisibility(self) -> int:
        """The grid's stride: every input side is a whole number of cells."""
        return self._stride


@register_model("yolov1")
def build_yolov1(config: Config, num_classes: int) -> YOLOv1:
    """The YOLOv1 that ``model:`` describes: ``backbone``, ``out_features`` (its last stage is
    the grid) and the ``model.yolov1`` options."""
    return YOLOv1.from_config(config, num_classes, config.model.yolov1)
