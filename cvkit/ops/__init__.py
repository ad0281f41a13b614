"""Pure tensor ops every stage builds on: boxes, IoU, NMS, anchors, matching, box coding, RoI.

``RoIAlign``, ``RoIPool`` and ``MultiScaleRoIAlign`` are the RoI functions as settings-only
``nn.Module`` classes, and ``sigmoid_focal_loss`` is RetinaNet's loss, both under
torchvision's names and signatures.

Boxes are ``Tensor[N, 4]`` ``(x1, y1, x2, y2)`` in pixels unless a docstring says otherwise.
All functions run on CPU and CUDA tensors; the CPU kernels are faster than torchvision's and
give the same results (``benchmarks/results/ops.md``).
"""

from cvkit.ops.anchors import (
    default_ssd_sizes,
    grid_anchors,
    multibox_prior,
    ssd_anchors,
    yolo_anchors,
)
from cvkit.ops.boxes import (
    BoxConversionError,
    BoxDtypeError,
    BoxError,
    BoxShapeError,
    BoxTypeError,
    box_area,
    box_convert,
    clip_boxes,
    clip_boxes_to_image,
    masks_to_boxes,
    normalize_boxes,
    remove_small_boxes,
    sanitize_boxes,
)
from cvkit.ops.coder import decode_boxes, encode_boxes, stds_from_variances, stds_from_weights
from cvkit.ops.focal_loss import sigmoid_focal_loss
from cvkit.ops.iou import (
    aligned_box_iou,
    aligned_complete_box_iou,
    aligned_distance_box_iou,
    aligned_generalized_box_iou,
    box_iou,
    ciou_loss,
    complete_box_iou,
    complete_box_iou_loss,
    diou_loss,
    distance_box_iou,
    distance_box_iou_loss,
    generalized_box_iou,
    generalized_box_iou_loss,
    giou_loss,
    mask_iou,
)
from cvkit.ops.matching import balanced_sample, greedy_assign, hard_negative_mask, threshold_match
from cvkit.ops.nms import (
    batched_nms,
    batched_nms_padded,
    diou_nms,
    diou_nms_padded,
    nms,
    padded_nms,
    soft_nms,
    soft_nms_padded,
)
from cvkit.ops.poolers import MultiScaleRoIAlign, RoIAlign, RoIPool
from cvkit.ops.roi import boxes_to_rois, fpn_levels, multiscale_roi_align, roi_align, roi_pool

__all__ = [
    "BoxConversionError",
    "BoxDtypeError",
    "BoxError",
    "BoxShapeError",
    "BoxTypeError",
    "MultiScaleRoIAlign",
    "RoIAlign",
    "RoIPool",
    "aligned_box_iou",
    "aligned_complete_box_iou",
    "aligned_distance_box_iou",
    "aligned_generalized_box_iou",
    "balanced_sample",
    "batched_nms",
    "batched_nms_padded",
    "box_area",
    "box_convert",
    "box_iou",
    "boxes_to_rois",
    "ciou_loss",
    "clip_boxes",
    "clip_boxes_to_image",
    "complete_box_iou",
    "complete_box_iou_loss",
    "decode_boxes",
    "default_ssd_sizes",
    "diou_loss",
    "diou_nms",
    "diou_nms_padded",
    "distance_box_iou",
    "distance_box_iou_loss",
    "encode_boxes",
    "fpn_levels",
    "generalized_box_iou",
    "generalized_box_iou_loss",
    "giou_loss",
    "greedy_assign",
    "grid_anchors",
    "hard_negative_mask",
    "mask_iou",
    "masks_to_boxes",
    "multibox_prior",
    "multiscale_roi_align",
    "nms",
    "normalize_boxes",
    "padded_nms",
    "remove_small_boxes",
    "roi_align",
    "roi_pool",
    "sanitize_boxes",
    "sigmoid_focal_loss",
    "soft_nms",
    "soft_nms_padded",
    "ssd_anchors",
    "stds_from_variances",
    "stds_from_weights",
    "threshold_match",
    "yolo_anchors",
]
