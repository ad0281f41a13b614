"""Faster R-CNN with an FPN on any cvkit backbone, composed like torchvision's GeneralizedRCNN.

``backbone → FPN neck (+ pool level) → RegionProposalNetwork → RoIBoxHead``; each part is its
own module (:mod:`~cvkit.models.detection.rpn`, :mod:`~cvkit.models.detection.roi_heads`,
:mod:`cvkit.models.necks`) and can be tested or replaced alone. The detector follows cvkit's
contract: ``model(images, targets)`` returns the four losses in training; ``model(images)``
returns one :class:`~cvkit.structures.Instances` per image; ``model.candidates(images)`` gives
per-class boxes ``[B, P, C, 4]`` and scores ``[B, P, C]``, computed with fixed shapes, so the
export appends NMS and the graph runs at any batch size — the same code as the eager model.
"""

from __future__ import annotations

from collections import OrderedDict
from functools import partial

from torch import Tensor

from cvkit.config import Config
from cvkit.config.eval import EvalConfig
from cvkit.config.model import FasterRCNNConfig
from cvkit.models.backbones import Backbone
from cvkit.models.build import register_model
from cvkit.models.detection.base import Detector
from cvkit.models.detection.roi_heads import FastRCNNPredictor, RoIBoxHead, TwoMLPHead
from cvkit.models.detection.rpn import RegionProposalNetwork
from cvkit.models.necks import backbone_shapes, build_neck
from cvkit.ops.roi import multiscale_roi_align
from cvkit.structures import ImageBatch, Instances, Target

POOL_LEVEL = "pool"
"""The FPN's max-pooled extra level: the RPN reads it, RoI pooling does not."""


class FasterRCNN(Detector):
    """Faster R-CNN: backbone, FPN, RPN and RoI box head.

    Args:
        backbone: any :class:`Backbone`; its selected stages (``out_features``) feed the FPN.
        num_classes: foreground classes (labels 0..C-1; background stays inside the head).
        options: ``model.faster_rcnn``.
        inference: ``eval`` section (score threshold, NMS IoU, detections per image), read
            when the eval forward runs.
        body_lr_mult, head_lr_mult: learning-rate multipliers of the backbone and the rest.
    """

    selects_proposals = True
    """Candidate slots come from the RPN's top-k and NMS, so a float16 copy's slots are not
    comparable one by one with float32's (the export compares its detections instead)."""

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int,
        options: FasterRCNNConfig | None = None,
        inference: EvalConfig | None = None,
        body_lr_mult: float = 1.0,
        head_lr_mult: float = 1.0,
    ) -> None:
        super().__init__(backbone, num_classes, inference, body_lr_mult, head_lr_mult)
        self.options = options or FasterRCNNConfig()
        self.neck = build_neck(
            "fpn",
            backbone_shapes(backbone),
            out_channels=self.options.fpn_channels,
            extra_max_pool=True,
        )
        shapes = self.neck.output_shapes
        self.roi_levels = [name for name in shapes if name != POOL_LEVEL]
        channels = self.options.fpn_channels
        self.rpn = RegionProposalNetwork(channels, len(shapes), self.options.rpn)
        size = self.options.roi_size
        pool = partial(
            multiscale_roi_align,
            output_size=size,
            strides=[shapes[name].stride for name in self.roi_levels],
            sampling_ratio=self.options.sampling_ratio,
            canonical_size=self.options.canonical_size,
            canonical_level=self.options.canonical_level,
        )
        representation = self.options.representation_size
        self.roi_heads = RoIBoxHead(
            pool,
            TwoMLPHead(channels * size * size, representation),
            FastRCNNPredictor(representation, num_classes),
            num_classes,
            self.options.box_weights,
            self.options.fg_iou_threshold,
            self.options.bg_iou_threshold,
            self.options.batch_size_per_image,
            self.options.positive_fraction,
        )

    def features(self, images: Tensor) -> OrderedDict[str, Tensor]:
        """FPN levels, finest first, then ``pool``: ``Tensor[B, fpn_channels, ~H/s, ~W/s]``."""
        return self.neck(self.backbone(images))

    def forward(
        self, images: Tensor | ImageBatch, targets: list[Target] | None = None
    ) -> dict[str, Tensor] | list[Instances]:
        """Losses in training mode, detections in eval mode.

        Args:
            images (Tensor[B, 3, H, W] or ImageBatch): normalized images; an ImageBatch of
                unequal images (padded to :attr:`size_divisibility`) clips each image's
                proposals and detections to its own size.
            targets: training only; one :class:`~cvkit.structures.Target` per image
                (``boxes`` [N, 4] xyxy input pixels, ``labels`` [N] int64 in 0..C-1).

        Returns:
            training: ``{"rpn_cls", "rpn_box", "roi_cls", "roi_box"}`` scalar losses;
            eval: one :class:`~cvkit.structures.Instances` per image (``boxes [K, 4]`` xyxy
            input pixels, ``scores [K]``, ``labels [K]``).
        """
        batch = ImageBatch.of(images)
        if not self.training:
            return self.detect(self.features(batch.tensor), batch)
        if targets is None or len(targets) != len(batch):
            raise ValueError("FasterRCNN in training mode needs one Target per image")
        features = self.features(batch.tensor)
        proposals, losses = self.rpn(list(features.values()), batch, targets)
        roi_features = [features[name] for name in self.roi_levels]
        losses.update(self.roi_heads.loss(roi_features, proposals.per_image(), targets))
        return losses

    def candidates(self, images: Tensor | ImageBatch) -> tuple[Tensor, Tensor]:
        """Per-class pre-NMS predictions of every proposal slot.

        Args:
            images (Tensor[B, 3, H, W] or ImageBatch): normalized images.

        Returns:
            ``boxes [B, P, C, 4]`` xyxy input pixels
            (clipped to each image), ``scores [B, P, C]`` class probabilities (0 for empty
            proposal slots), ``P = rpn.post_nms_top_n_test``.
        """
        batch = ImageBatch.of(images)
        return self.candidates_from_features(self.features(batch.tensor), batch)

    def candidates_from_features(
        self, features: OrderedDict[str, Tensor], batch: ImageBatch
    ) -> tuple[Tensor, Tensor]:
        """:meth:`candidates` of the :meth:`features` of ``batch`` (computed once by callers
        that read them again, as Mask R-CNN does)."""
        proposals, _ = self.rpn(list(features.values()), batch)
        roi_features = [features[name] for name in self.roi_levels]
        boxes, scores = self.roi_heads.candidates(roi_features, proposals, batch.image_sizes)
        return boxes, scores

    def detect(self, features: OrderedDict[str, Tensor], batch: ImageBatch) -> list[Instances]:
        """The eval forward's detections from the :meth:`features` of ``batch``: candidates
        through :func:`select_detections` with the current ``self.inference`` settings."""
        boxes, scores = self.candidates_from_features(features, batch)
        return self.select(boxes, scores, batch.image_sizes)

    @property
    def size_divisibility(self) -> int:
        """The coarsest backbone stride the FPN reads (32 for ResNets): pad images to it."""
        return max(shape.stride for shape in self.neck.input_shapes.values())


@register_model("faster_rcnn")
def build_faster_rcnn(config: Config, num_classes: int) -> FasterRCNN:
    """The Faster R-CNN that ``model:`` describes (``backbone``, ``out_features``,
    ``faster_rcnn`` options); stages up to ``model.freeze_at`` are frozen."""
    return FasterRCNN.from_config(config, num_classes, config.model.faster_rcnn)
