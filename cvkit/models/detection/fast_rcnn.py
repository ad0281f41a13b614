"""Fast R-CNN: one shared convolutional feature map, RoI max pooling over external proposals.

The whole image goes through the backbone once; each selective-search proposal
(:mod:`~cvkit.models.detection.proposals`, computed once per image and cached) is max-pooled
from the last selected stage (stride 16 in the paper) into a ``roi_size × roi_size`` grid
(:func:`cvkit.ops.roi.roi_pool`), and Faster R-CNN's RoI box head
(:class:`~cvkit.models.detection.roi_heads.RoIBoxHead`: two fully connected layers, class
logits and per-class box offsets) classifies and refines it. Training is the paper's
multi-task loss: cross-entropy plus smooth-L1 on the positives' own-class offsets over
sampled RoIs (ground truth added, a quarter positives at IoU ≥ 0.5).

The detector contract holds: ``model(images, targets)`` returns ``{"roi_cls", "roi_box"}``;
``model(images)`` returns one :class:`~cvkit.structures.Instances` per image. Proposals come
from the images themselves (the model un-normalizes them with ``data.mean``/``data.std``)
unless given as ``proposals=``, one ``Tensor[P_i, 4]`` per image.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from torch import Tensor

from cvkit.config import Config
from cvkit.config.eval import EvalConfig
from cvkit.config.model import FastRCNNConfig
from cvkit.models.backbones import Backbone
from cvkit.models.build import register_model
from cvkit.models.detection.proposals import ProposalDetector, SelectiveSearchProposer
from cvkit.models.detection.roi_heads import FastRCNNPredictor, RoIBoxHead, TwoMLPHead
from cvkit.models.detection.rpn import Proposals
from cvkit.ops.roi import roi_pool
from cvkit.structures import ImageBatch, Instances, Target


def _pool_level(
    features: Sequence[Tensor], rois: Tensor, output_size: int, spatial_scale: float
) -> Tensor:
    """RoI max pooling of ``rois [K, 5]`` from the single level ``features[0]``."""
    return roi_pool(features[0], rois.to(features[0].dtype), output_size, spatial_scale)


def pad_proposals(proposals: Sequence[Tensor]) -> Proposals:
    """Per-image ``Tensor[P_i, 4]`` → padded :class:`~cvkit.models.detection.rpn.Proposals`
    (``boxes [B, max(P_i, 1), 4]``, unit scores on real rows, ``count [B]``)."""
    size = max(1, max(len(boxes) for boxes in proposals))
    first = proposals[0]
    boxes = first.new_zeros((len(proposals), size, 4))
    scores = first.new_zeros((len(proposals), size))
    for slot, slot_scores, image_boxes in zip(boxes, scores, proposals, strict=True):
        slot[: len(image_boxes)] = image_boxes
        slot_scores[: len(image_boxes)] = 1.0
    count = torch.tensor([len(b) for b in proposals], dtype=torch.int64, device=first.device)
    return Proposals(boxes, scores, count)


def padded_input(boxes: Tensor, batch_size: int) -> Proposals:
    """Padded ``boxes [B, P, 4]`` (real rows first, then rows of zero width or height) →
    :class:`~cvkit.models.detection.rpn.Proposals` with those real rows counted; traceable.

    Raises:
        ValueError: ``boxes`` is not ``[batch_size, P, 4]``.
    """
    if boxes.dim() != 3 or boxes.shape[0] != batch_size or boxes.shape[2] != 4:
        raise ValueError(
            f"padded proposals must be [{batch_size}, P, 4] for {batch_size} images, "
            f"got {list(boxes.shape)}"
        )
    real = (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])
    return Proposals(boxes, real.to(boxes.dtype), real.sum(dim=1))


class FastRCNN(ProposalDetector):
    """Fast R-CNN: backbone stage, RoI pooling and the RoI box head, over given proposals.

    Args:
        backbone: any :class:`Backbone`; its last selected stage is the shared feature map.
        num_classes: foreground classes (labels 0..C-1; background stays inside the head).
        options: ``model.fast_rcnn``.
        inference: ``eval`` section, read when the eval forward runs.
        body_lr_mult, head_lr_mult: learning-rate multipliers of the backbone and the rest.
        proposer: ``images -> list of Tensor[P_i, 4]`` used when a forward gets no
            ``proposals`` (see :class:`~cvkit.models.detection.proposals.ProposalDetector`).
    """

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int,
        options: FastRCNNConfig | None = None,
        inference: EvalConfig | None = None,
        body_lr_mult: float = 1.0,
        head_lr_mult: float = 1.0,
        proposer: SelectiveSearchProposer | None = None,
    ) -> None:
        options = options or FastRCNNConfig()
        super().__init__(
            backbone, num_classes, options, inference, body_lr_mult, head_lr_mult, proposer
        )
        channels = backbone.channels[self.feature_name]
        self.stride = backbone.strides[self.feature_name]
        size = options.roi_size
        representation = options.representation_size
        self.roi_heads = RoIBoxHead(
            partial(_pool_level, output_size=size, spatial_scale=1.0 / self.stride),
            TwoMLPHead(channels * size * size, representation),
            FastRCNNPredictor(representation, num_classes),
            num_classes,
            options.box_weights,
            options.fg_iou_threshold,
            options.bg_iou_threshold,
            options.batch_size_per_image,
            options.positive_fraction,
        )

    def features(self, images: Tensor) -> Tensor:
        """The shared map ``Tensor[B, channels, ~H/stride, ~W/stride]``."""
        return self.backbone(images)[self.feature_name]

    def forward(
        self,
        images: Tensor | ImageBatch,
        targets: list[Target] | None = None,
        proposals: Sequence[Tensor] | None = None,
    ) -> dict[str, Tensor] | list[Instances]:
        """Losses in training mode, detections in eval mode.

        Args:
            images (Tensor[B, 3, H, W] or ImageBatch): normalized images.
            targets: training only; one :class:`~cvkit.structures.Target` per image
                (``boxes`` [N, 4] xyxy input pixels, ``labels`` [N] int64 in 0..C-1).
            proposals: optional ``Tensor[P_i, 4]`` xyxy input pixels per image (default:
                the proposer's, computed from the images).

        Returns:
            training: ``{"roi_cls", "roi_box"}`` scalar losses; eval: one
            :class:`~cvkit.structures.Instances` per image (``boxes [K, 4]`` xyxy input
            pixels, ``scores [K]``, ``labels [K]``).
        """
        batch = ImageBatch.of(images)
        if not self.training:
            return self.detect(batch, proposals)
        targets = self.check_targets(batch, targets)
        boxes = self.proposals_for(batch, proposals)
        return self.roi_heads.loss([self.features(batch.tensor)], boxes, targets)

    def candidates(
        self,
        images: Tensor | ImageBatch,
        proposals: Sequence[Tensor] | Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Per-class pre-NMS predictions of every proposal.

        Args:
            images (Tensor[B, 3, H, W] or ImageBatch): normalized images.
            proposals: as in :meth:`forward`, or one padded ``Tensor[B, P, 4]`` (the form an
                exported graph takes as its second input): each image's real boxes first,
                then rows of zero width or height, which are padding.

        Returns:
            ``boxes [B, P, C, 4]`` xyxy input pixels (clipped to each image), ``scores
            [B, P, C]`` class probabilities (0 on padding rows), ``P`` the most proposals of
            an image in the batch (the padded input's ``P``).
        """
        batch = ImageBatch.of(images)
        if isinstance(proposals, Tensor):
            padded = padded_input(proposals.to(batch.tensor.device, torch.float32), len(batch))
        else:
            padded = pad_proposals(self.proposals_for(batch, proposals))
        features = [self.features(batch.tensor)]
        return self.roi_heads.candidates(features, padded, batch.image_sizes)

    def export_inputs(self, images: Tensor) -> dict[str, tuple[Tensor, dict[int, str]]]:
        """The exported graph's input after ``images`` (the export contract): ``proposals
        float32 [B, P, 4]``, xyxy input pixels, each image's real boxes first and rows of zero
        width or height as padding (:func:`padded_input`), batch and ``P`` dynamic.

        Selective search is no graph op, so it runs beside the graph: the export records its
        settings and :class:`cvkit.runtime.Detector` computes the proposals as this model does
        (or takes the caller's as ``predict(images, proposals=...)``).
        The example has ``P = topk_candidates // num_classes + 1`` rows, so that the traced
        graph keeps the best ``topk_candidates`` (proposal, class) pairs as the eager model
        does (a caller pads its proposals to at least that many rows), and fewer real ones
        in each next image. Its boxes are distinct rectangles of whole feature-map cells in a
        seeded order (RoI max pooling reads whole cells: two boxes over the same cells would
        score alike and their order after NMS would be a tie), repeated only when the map has
        fewer rectangles than rows.

        Args:
            images (Tensor[B, 3, H, W]): the example images.
        """
        batch, _, height, width = images.shape
        rows = self.options.topk_candidates // self.num_classes + 1
        generator = torch.Generator().manual_seed(0)
        spans = []
        for cells in (-(-width // self.stride), -(-height // self.stride)):
            start, stop = torch.triu_indices(cells, cells)
            spans.append(torch.stack([start, stop], dim=1).float() * self.stride)
        columns, lines = spans
        pick = torch.randperm(len(columns) * len(lines), generator=generator)
        pick = pick.repeat(-(-rows // len(pick)))[:rows]
        x_span, y_span = columns[pick // len(lines)], lines[pick % len(lines)]
        # a quarter cell past the last cell's start: rounds to that cell, positive width
        boxes = (
            torch.stack([x_span[:, 0], y_span[:, 0], x_span[:, 1], y_span[:, 1]], dim=1)
            + torch.tensor([0.0, 0.0, 0.25, 0.25]) * self.stride
        )
        boxes = boxes.repeat(batch, 1, 1)
        real = rows - torch.arange(batch) * rows // (2 * batch)
        boxes[torch.arange(rows)[None, :] >= real[:, None]] = 0.0
        return {"proposals": (boxes.to(images.device), {0: "batch", 1: "proposals"})}

    @property
    def size_divisibility(self) -> int:
        """The shared map's stride: pad images to it so every cell covers whole pixels."""
        return self.stride


@register_model("fast_rcnn")
def build_fast_rcnn(config: Config, num_classes: int) -> FastRCNN:
    """The Fast R-CNN that ``model:`` describes (``backbone``, ``out_features``, ``fast_rcnn``
    options); its proposer un-normalizes images with ``data.mean``/``data.std``."""
    return FastRCNN.from_config(config, num_classes, config.model.fast_rcnn)
