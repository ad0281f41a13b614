"""The ``model:`` section: which architecture to build and on which backbone."""

from pathlib import Path
from typing import Literal

from pydantic import Field

from cvkit.config.base import Section


class SSDConfig(Section):
    """Options of the SSD detector (``model.ssd``).

    The head reads the backbone stages named in ``model.out_features``, then ``extra_blocks``
    blocks each halve the resolution of the last map. Every level gets
    ``len(anchor_sizes[level]) + len(anchor_ratios) - 1`` anchors per cell; sizes are fractions
    of the input size, and when ``anchor_sizes`` is unset level ``k`` of ``L`` gets
    ``[s_k, sqrt(s_k * s_k+1)]`` with ``s_k`` spaced linearly from ``min_scale`` to ``max_scale``.
    """

    extra_blocks: int = Field(2, ge=0)
    extra_channels: int = Field(256, gt=0, description="output channels of every extra block")
    anchor_sizes: list[list[float]] | None = None
    min_scale: float = Field(0.2, gt=0, le=1)
    max_scale: float = Field(0.9, gt=0)
    anchor_ratios: list[float] = Field(default_factory=lambda: [1.0, 2.0, 0.5], min_length=1)
    iou_threshold: float = Field(0.5, gt=0, le=1, description="anchor/ground-truth match IoU")
    neg_pos_ratio: float = Field(3.0, gt=0, description="hard negatives per positive anchor")
    box_loss: Literal["smooth_l1", "l1"] = "smooth_l1"
    box_loss_weight: float = Field(1.0, ge=0)
    variances: tuple[float, float] = (0.1, 0.2)
    topk_candidates: int = Field(400, gt=0, description="candidates per image kept before NMS")


class ClassifierConfig(Section):
    """Options of the image classifier (``model.classifier``).

    ``head: linear`` is global average pooling + one linear layer; ``native`` is the
    architecture's own head (VGG/AlexNet fully connected layers, LeNet's MLP), whose keys match
    torchvision's so a whole torchvision classifier loads. ``dropout`` unset uses the head's
    default (0 for ``linear``).
    """

    head: Literal["linear", "native"] = "linear"
    dropout: float | None = Field(None, ge=0, lt=1)


class FCNConfig(Section):
    """Options of the FCN segmenter (``model.fcn``).

    ``variant`` picks the skip connections: ``32s`` upsamples the deepest scores ×32 in one
    step, ``16s`` and ``8s`` add scores from the stride-16 (and stride-8) stages first.
    ``head_channels > 0`` puts a 3×3 conv-BN-ReLU of that width before the 1×1 class scores.
    """

    variant: Literal["32s", "16s", "8s"] = "8s"
    head_channels: int = Field(0, ge=0)


class ModelConfig(Section):
    """Architecture, backbone and initial weights.

    ``num_classes`` is taken from the dataset when left unset. ``pretrained`` is a local file:
    a cvkit checkpoint or a torchvision ``.pth`` state dict (never downloaded).
    ``out_features`` picks the backbone stages a head reads (the backbone's last stage when
    unset). ``freeze_at: N`` stops training of the first N backbone stages. The body (backbone)
    trains at ``train.lr * body_lr_mult`` and new heads at ``train.lr * head_lr_mult``.

    Fine-tuning a classifier re-initializes its output layer, unless ``reuse_classes`` is set:
    then output rows of classes that the source and target share by name are copied. The
    source names come from the cvkit checkpoint, or from ``source_classes`` (a text file, one
    name per line) for a torchvision file; ``class_map`` maps a target name to a differently
    named source class.
    """

    name: str = "ssd"
    backbone: str = "resnet18"
    num_classes: int | None = Field(None, gt=0)
    pretrained: Path | None = None
    width_mult: float = Field(1.0, gt=0)
    in_channels: int = Field(3, gt=0)
    out_features: list[str] | None = None
    freeze_at: int = Field(0, ge=0, description="number of leading backbone stages frozen")
    body_lr_mult: float = Field(1.0, gt=0, description="backbone LR = train.lr * this")
    head_lr_mult: float = Field(1.0, gt=0, description="head LR = train.lr * this")
    reuse_classes: bool = False
    source_classes: Path | None = None
    class_map: dict[str, str] = Field(default_factory=dict)
    classifier: ClassifierConfig = Field(default_factory=ClassifierConfig)
    ssd: SSDConfig = Field(default_factory=SSDConfig)
    fcn: FCNConfig = Field(default_factory=FCNConfig)
