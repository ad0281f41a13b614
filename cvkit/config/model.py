"""The ``model:`` section: which architecture to build and on which backbone.

The built-in models' options are fields here (``model.ssd``, ``model.yolo`` ...). A model
defined outside cvkit brings its own section: :func:`register_model_options` (or
``register_model(name, options=...)``) names the pydantic class that validates
``model.<name>``, and a package can provide it through a ``cvkit.models`` entry point
(:mod:`cvkit.config.plugins`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    ValidationError,
    model_validator,
)
from pydantic_core import InitErrorDetails

from cvkit.config.base import Section
from cvkit.config.plugins import MODEL_GROUP, load_plugin
from cvkit.errors import ConfigError

_OPTIONS: dict[str, type[BaseModel]] = {}


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


class RPNConfig(Section):
    """Options of Faster R-CNN's region proposal network (``model.faster_rcnn.rpn``).

    ``anchor_sizes`` are pixels, one list per FPN level (finest first, the ``pool`` level
    last); ``anchor_ratios`` are width / height. An anchor is a positive at IoU >=
    ``fg_iou_threshold`` with a ground truth (or as the best anchor of one), a negative below
    ``bg_iou_threshold``; ``batch_size_per_image`` anchors per image are trained, at most
    ``positive_fraction`` of them positive. Proposals: the ``pre_nms_top_n`` best anchors of
    each level, NMS per level at ``nms_threshold``, the ``post_nms_top_n`` best per image
    (``_train`` / ``_test`` values for each mode; torchvision's defaults).
    """

    anchor_sizes: list[list[float]] = Field(
        default_factory=lambda: [[32.0], [64.0], [128.0], [256.0], [512.0]], min_length=1
    )
    anchor_ratios: list[float] = Field(default_factory=lambda: [0.5, 1.0, 2.0], min_length=1)
    pre_nms_top_n_train: int = Field(2000, gt=0)
    pre_nms_top_n_test: int = Field(1000, gt=0)
    post_nms_top_n_train: int = Field(2000, gt=0)
    post_nms_top_n_test: int = Field(1000, gt=0)
    nms_threshold: float = Field(0.7, gt=0, le=1)
    fg_iou_threshold: float = Field(0.7, gt=0, le=1)
    bg_iou_threshold: float = Field(0.3, ge=0, le=1)
    batch_size_per_image: int = Field(256, gt=0)
    positive_fraction: float = Field(0.5, ge=0, le=1)
    min_size: float = Field(1e-3, ge=0, description="proposals narrower or lower are dropped")


class FasterRCNNConfig(Section):
    """Options of Faster R-CNN (``model.faster_rcnn``): FPN neck, RPN, RoI box head.

    The backbone stages in ``model.out_features`` feed an FPN of ``fpn_channels`` plus a
    max-pooled ``pool`` level (RPN only). Each proposal reads the FPN level of its size
    (``canonical_size`` px ↦ ``canonical_level``) through RoIAlign to ``roi_size`` ×
    ``roi_size``; two fully connected layers of ``representation_size`` then predict class
    logits and per-class box offsets (coded with ``box_weights``). Training samples
    ``batch_size_per_image`` proposals per image (ground truth added), at most
    ``positive_fraction`` positive (IoU >= ``fg_iou_threshold``). ``topk_candidates``
    (proposal, class) pairs per image enter the final NMS. Defaults are torchvision's.
    """

    fpn_channels: int = Field(256, gt=0)
    rpn: RPNConfig = Field(default_factory=RPNConfig)
    roi_size: int = Field(7, gt=0)
    sampling_ratio: int = Field(2, ge=0)
    canonical_size: float = Field(224.0, gt=0)
    canonical_level: int = Field(4, ge=0)
    representation_size: int = Field(1024, gt=0)
    fg_iou_threshold: float = Field(0.5, gt=0, le=1)
    bg_iou_threshold: float = Field(0.5, ge=0, le=1)
    batch_size_per_image: int = Field(512, gt=0)
    positive_fraction: float = Field(0.25, ge=0, le=1)
    box_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)
    topk_candidates: int = Field(1000, gt=0, description="(proposal, class) pairs before NMS")


class MaskRCNNConfig(FasterRCNNConfig):
    """Options of Mask R-CNN (``model.mask_rcnn``): every Faster R-CNN option, plus the mask
    branch. Each positive RoI (training) or detection (inference) reads a ``mask_roi_size`` ×
    ``mask_roi_size`` RoIAlign grid from its FPN level; 3×3 conv + ReLU blocks of
    ``mask_layers`` channels, a 2×2 stride-2 transposed conv to ``mask_dim_reduced`` channels
    and a 1×1 conv give one ``2 * mask_roi_size`` square of logits per class. Defaults are
    torchvision's.
    """

    mask_roi_size: int = Field(14, gt=0)
    mask_layers: list[int] = Field(default_factory=lambda: [256, 256, 256, 256], min_length=1)
    mask_dim_reduced: int = Field(256, gt=0)


class ProposalConfig(Section):
    """Selective-search region proposals of R-CNN and Fast R-CNN (``model.<name>.proposals``).

    OpenCV's ximgproc selective search (the ``rcnn`` extra) in its ``fast`` or ``quality``
    strategy (graph segmentations from ``base_k`` up by ``inc_k``, smoothing ``sigma``) or a
    ``single`` segmentation (``base_k``, ``sigma``), on the network-input image. Proposals
    narrower or lower than ``min_size`` pixels are dropped and at most ``max_proposals`` are
    kept. They are computed once per image content and settings and cached in memory, and
    also as files under ``cache_dir`` when it is set.
    """

    mode: Literal["fast", "quality", "single"] = "fast"
    base_k: int = Field(150, gt=0)
    inc_k: int = Field(150, gt=0)
    sigma: float = Field(0.8, gt=0)
    min_size: float = Field(2.0, ge=0)
    max_proposals: int = Field(2000, gt=0)
    cache_dir: Path | None = None


class FastRCNNConfig(Section):
    """Options of Fast R-CNN (``model.fast_rcnn``): one backbone stage (the last of
    ``model.out_features``, stride 16 in the paper) shared by all proposals, RoI max pooling
    to ``roi_size`` × ``roi_size``, two fully connected layers of ``representation_size``,
    class logits and per-class box offsets (coded with ``box_weights``). Training samples
    ``batch_size_per_image`` RoIs per image (ground truth added), at most
    ``positive_fraction`` positive (IoU >= ``fg_iou_threshold``). ``topk_candidates``
    (proposal, class) pairs per image enter the final NMS.
    """

    proposals: ProposalConfig = Field(default_factory=ProposalConfig)
    roi_size: int = Field(7, gt=0)
    representation_size: int = Field(1024, gt=0)
    fg_iou_threshold: float = Field(0.5, gt=0, le=1)
    bg_iou_threshold: float = Field(0.5, ge=0, le=1)
    batch_size_per_image: int = Field(64, gt=0)
    positive_fraction: float = Field(0.25, ge=0, le=1)
    box_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)
    topk_candidates: int = Field(1000, gt=0, description="(proposal, class) pairs before NMS")


class RCNNConfig(Section):
    """Options of R-CNN (``model.rcnn``), the paper's three stages.

    Each proposal, widened by ``context_padding`` pixels of context at the warped size, is
    warped to ``crop_size`` × ``crop_size`` and read by the backbone (its last stage, average
    pooled, is the feature). 1) Fine-tuning (the gradient epochs): a softmax over the classes
    and background on ``batch_size_per_image`` proposals per image, ``positive_fraction``
    positives at IoU >= ``finetune_iou``. 2) One linear SVM per class (scikit-learn's
    ``LinearSVC``, hinge loss, penalty ``svm_c``, positives weighted ``svm_positive_weight``)
    on features scaled to a mean norm of ``feature_norm``: ground-truth boxes are the
    positives, proposals below ``negative_iou`` with every box of the class the negatives,
    mined in up to ``mining_rounds`` rounds (negatives scoring above ``hard_negative_score``
    join the training set, those below ``easy_negative_score`` leave it), starting from
    ``initial_negatives`` per positive. 3) Per-class ridge regression (``ridge_alpha``) of the
    box offsets of proposals at IoU >= ``box_iou``. ``topk_candidates`` (proposal, class)
    pairs per image enter the final NMS.
    """

    proposals: ProposalConfig = Field(default_factory=ProposalConfig)
    crop_size: int = Field(227, ge=16)
    context_padding: int = Field(16, ge=0)
    finetune_iou: float = Field(0.5, gt=0, le=1)
    batch_size_per_image: int = Field(128, gt=0)
    positive_fraction: float = Field(0.25, ge=0, le=1)
    feature_norm: float = Field(20.0, gt=0)
    svm_c: float = Field(0.001, gt=0)
    svm_positive_weight: float = Field(2.0, gt=0)
    negative_iou: float = Field(0.3, ge=0, le=1)
    mining_rounds: int = Field(4, gt=0)
    initial_negatives: int = Field(4, gt=0, description="negatives per positive at round 1")
    hard_negative_score: float = -1.0
    easy_negative_score: float = -1.2
    box_iou: float = Field(0.6, gt=0, le=1)
    ridge_alpha: float = Field(1000.0, ge=0)
    topk_candidates: int = Field(1000, gt=0, description="(proposal, class) pairs before NMS")

    @model_validator(mode="after")
    def _check_padding(self) -> RCNNConfig:
        if 2 * self.context_padding >= self.crop_size:
            raise ValueError(
                f"context_padding {self.context_padding} leaves no room for the box in a "
                f"crop_size {self.crop_size} crop (needs 2 * context_padding < crop_size)"
            )
        return self


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


class StyleConfig(Section):
    """Options of the fast stylizer (``model.style``, task ``style``; Johnson et al.).

    The transformer network has ``channels`` in its first layer and ``residual_blocks`` at the
    lowest resolution. It learns the style of ``image`` (resized so its longer side is
    ``style_size``, default ``data.image_size``) through a VGG loss network: weights from
    ``vgg`` (a torchvision vgg16/vgg19 ``.pth``, never downloaded), random weights when unset
    (texture-like results), ``loss_width_mult`` to shrink a random one. Losses: content on
    ``content_layer``, Gram matrices on ``style_layers``, total variation, each times its weight.
    """

    image: Path | None = Field(None, description="the style image (required for task: style)")
    vgg: Path | None = None
    channels: int = Field(32, gt=0)
    residual_blocks: int = Field(5, ge=0)
    content_layer: str = "relu2_2"
    style_layers: list[str] = Field(
        default_factory=lambda: ["relu1_2", "relu2_2", "relu3_3", "relu4_3"], min_length=1
    )
    content_weight: float = Field(1.0, ge=0)
    style_weight: float = Field(1e5, ge=0)
    tv_weight: float = Field(0.0, ge=0)
    style_size: int | None = Field(None, ge=32)
    loss_width_mult: float = Field(1.0, gt=0)


class YOLOv1Config(Section):
    """Options of YOLOv1 (``model.yolov1``): ``boxes_per_cell`` predictors per grid cell (the
    grid is the last backbone stage), a 3×3 head of ``head_channels``, the loss weights
    ``lambda_coord`` and ``lambda_noobj`` of the paper, and ``topk_candidates`` (box, class)
    pairs per image before NMS."""

    boxes_per_cell: int = Field(2, gt=0)
    head_channels: int = Field(256, gt=0)
    lambda_coord: float = Field(5.0, ge=0)
    lambda_noobj: float = Field(0.5, ge=0)
    topk_candidates: int = Field(400, gt=0)


class YOLOConfig(Section):
    """Options of the anchor-free YOLO (``model.yolo``): ``size`` n/s/m scales the PAN neck
    and head width (64/128/192 channels) and CSP depth (1/1/2 bottlenecks); each box side is a
    distribution over ``reg_max + 1`` bins. The task-aligned assigner takes the ``topk`` points
    of highest ``score^alpha * IoU^beta`` per ground truth; the losses are weighted by
    ``cls_weight`` (BCE), ``iou_weight`` (CIoU) and ``dfl_weight``. ``topk_candidates``
    (point, class) pairs per image enter NMS."""

    size: Literal["n", "s", "m"] = "n"
    reg_max: int = Field(16, gt=0)
    topk: int = Field(10, gt=0)
    alpha: float = Field(0.5, ge=0)
    beta: float = Field(6.0, ge=0)
    cls_weight: float = Field(0.5, ge=0)
    iou_weight: float = Field(7.5, ge=0)
    dfl_weight: float = Field(1.5, ge=0)
    topk_candidates: int = Field(1000, gt=0)


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
    faster_rcnn: FasterRCNNConfig = Field(default_factory=FasterRCNNConfig)
    mask_rcnn: MaskRCNNConfig = Field(default_factory=MaskRCNNConfig)
    fast_rcnn: FastRCNNConfig = Field(default_factory=FastRCNNConfig)
    rcnn: RCNNConfig = Field(default_factory=RCNNConfig)
    yolov1: YOLOv1Config = Field(default_factory=YOLOv1Config)
    yolo: YOLOConfig = Field(default_factory=YOLOConfig)
    style: StyleConfig = Field(default_factory=StyleConfig)

    # Sections of registered models live in the extras, each validated by its model's class.
    model_config = ConfigDict(extra="allow", validate_assignment=True)

    @model_validator(mode="wrap")
    @classmethod
    def _registered_sections(cls, data: Any, handler: ModelWrapValidatorHandler) -> ModelConfig:
        """Validate each key that is not a field as the section of a registered model; any
        other key is an ``extra_forbidden`` error at its own location, as in every section.
        The named model's section is filled with its defaults when absent."""
        if not isinstance(data, dict):
            return handler(data)
        errors: list[InitErrorDetails] = []
        sections: dict[str, BaseModel] = {}
        for key, value in data.items():
            if key in cls.model_fields:
                continue
            options = model_options(str(key))
            if options is None:
                errors.append(InitErrorDetails(type="extra_forbidden", loc=(key,), input=value))
                continue
            try:
                sections[key] = (
                    value if isinstance(value, options) else options.model_validate(value)
                )
            except ValidationError as exc:
                errors += [_nested_error(key, error) for error in exc.errors()]
        name = data.get("name")
        if isinstance(name, str) and name not in sections and name not in cls.model_fields:
            options = model_options(name)
            if options is not None:
                sections[name] = options()
        if errors:
            raise ValidationError.from_exception_data(cls.__name__, errors)
        config = handler({key: value for key, value in data.items() if key in cls.model_fields})
        config.__pydantic_extra__.update(sections)
        return config

    def __setattr__(self, key: str, value: Any) -> None:
        if key in type(self).model_fields or key.startswith("_"):
            super().__setattr__(key, value)
            return
        options = model_options(key)
        if options is None:
            raise ConfigError(f"model.{key}: no field or registered model of that name")
        super().__setattr__(key, value if isinstance(value, options) else options(**value))

    @classmethod
    def subsection(cls, key: str) -> type[BaseModel] | None:
        """The class of section ``key`` (a field's or a registered model's), else None."""
        if key in cls.model_fields:
            return super().subsection(key)
        return model_options(key)

    @classmethod
    def allowed_keys(cls) -> list[str]:
        """The fields and the sections of the models registered so far, sorted."""
        return sorted({*cls.model_fields, *_OPTIONS})


def _nested_error(key: str, error: Any) -> InitErrorDetails:
    """``error`` of section ``key``'s own validation, located under ``key``."""
    details = InitErrorDetails(type=error["type"], loc=(key, *error["loc"]), input=error["input"])
    if error.get("ctx"):
        details["ctx"] = error["ctx"]
    return details


def register_model_options(name: str, options: type[BaseModel]) -> type[BaseModel]:
    """Make ``options`` validate the config section ``model.<name>`` of the model ``name``.

    ``options`` is a pydantic model that forbids unknown keys (subclass
    :class:`cvkit.config.base.Section`), so a typo in the section is an error naming the key.
    Returns ``options``.

    Raises:
        ValueError: ``name`` is a built-in field of the ``model:`` section, or another class
            is registered under it.
        TypeError: ``options`` is not a pydantic model that forbids extra keys.
    """
    if name in ModelConfig.model_fields:
        raise ValueError(f"model.{name} is a built-in field; pick another model name")
    if not (isinstance(options, type) and issubclass(options, BaseModel)):
        raise TypeError(f"model {name!r}: options must be a pydantic model class, got {options!r}")
    if options.model_config.get("extra") != "forbid":
        raise TypeError(
            f"model {name!r}: {options.__name__} must forbid unknown keys "
            "(subclass cvkit.config.base.Section)"
        )
    if _OPTIONS.get(name, options) is not options:
        raise ValueError(f"model {name!r}: options are registered twice")
    _OPTIONS[name] = options
    return options


def model_options(name: str) -> type[BaseModel] | None:
    """The options class registered for model ``name`` (loading its ``cvkit.models`` entry
    point first when it is not registered yet), or None when the model has none."""
    if name not in _OPTIONS and name not in ModelConfig.model_fields:
        load_plugin(MODEL_GROUP, name)
    return _OPTIONS.get(name)
