"""R-CNN (Girshick et al., 2014): warped proposal crops, a CNN, one linear SVM per class.

The teaching model of the region-based family, slow by design (one CNN pass per proposal):

1. **Proposals**: selective search on each image (:mod:`~cvkit.models.detection.proposals`,
   computed once per image and cached).
2. **Warped crops**: each box, widened so that ``context_padding`` of the ``crop_size`` pixels
   are context, is warped (bilinearly, ignoring its aspect ratio) to a square crop
   (:func:`warp_regions`); the backbone's last selected stage, average pooled, is the region's
   feature vector.
3. **Fine-tuning** (the gradient epochs of ``cvkit train``): a softmax over the classes and
   background on sampled proposals (a quarter at IoU ≥ 0.5 with a ground truth), loss
   ``finetune_cls``.
4. **SVMs and box regressors** (:meth:`RCNN.fit_stage`, which the Trainer runs after the epochs
   that are validated and after the last one): features of every proposal and ground-truth box
   of the training set are scaled to a mean norm of ``feature_norm``; per class, a linear SVM
   (scikit-learn's ``LinearSVC``, hinge loss) separates the ground-truth boxes from proposals
   overlapping no box of the class (IoU < ``negative_iou``), mined in rounds
   (:func:`fit_svm_with_hard_negatives`); a ridge regression (:func:`fit_box_regressor`)
   predicts the offsets from proposals at IoU ≥ ``box_iou`` to their ground truth.

At inference each proposal's class score is the sigmoid of its SVM margin (a monotone map to
``[0, 1]``, so rankings and COCO AP are the SVM's) and its box is refined by the regressor of
that class; class-aware NMS (:func:`~cvkit.models.detection.postprocess.select_detections`)
gives the detections. The SVM and regressor weights are buffers, so checkpoints carry them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from cvkit.config import Config
from cvkit.config.eval import EvalConfig
from cvkit.config.model import RCNNConfig
from cvkit.errors import ConfigError
from cvkit.logs import get_logger
from cvkit.models.backbones import Backbone
from cvkit.models.build import register_model
from cvkit.models.detection.fast_rcnn import pad_proposals
from cvkit.models.detection.proposals import ProposalDetector, SelectiveSearchProposer
from cvkit.models.detection.roi_heads import MIN_BOX_SIZE
from cvkit.models.detection.rpn import clip_per_image, match_and_sample
from cvkit.ops.coder import decode_boxes, encode_boxes
from cvkit.ops.iou import box_iou
from cvkit.ops.roi import boxes_to_rois
from cvkit.selective_search import INSTALL_HINT
from cvkit.structures import ImageBatch, Instances, Target

logger = get_logger("rcnn")

UNTRAINED_BIAS = -20.0
"""SVM bias of a class without training boxes: its score (sigmoid) stays below 1e-8."""

CROP_CHUNK = 512
"""Crops per backbone pass outside training (bounds the memory of thousands of proposals)."""


def warp_regions(images: Tensor, rois: Tensor, crop_size: int, context_padding: int = 0) -> Tensor:
    """Warp each region of ``images`` to a ``crop_size`` square, with context around it.

    The box is widened about its centre by ``crop_size / (crop_size - 2 * context_padding)``
    so that the original box fills the crop's interior and ``context_padding`` pixels on each
    side are its surroundings (the paper's ``p = 16`` at 227 pixels); each axis is then
    resampled bilinearly (:func:`torchvision.ops.roi_align`, 2 × 2 samples per output pixel).
    Parts outside the image read 0, which in normalized images is the mean pixel.

    Args:
        images (Tensor[B, 3, H, W]): normalized images.
        rois (Tensor[K, 5]): ``(image_index, x1, y1, x2, y2)`` input pixels.
        crop_size: output side.
        context_padding: context pixels per side at the output size (``< crop_size / 2``).

    Returns:
        Tensor[K, 3, crop_size, crop_size].
    """
    if not 0 <= 2 * context_padding < crop_size:
        raise ValueError(
            f"context_padding {context_padding} leaves no room for the box in a "
            f"{crop_size}-pixel crop"
        )
    scale = crop_size / (crop_size - 2 * context_padding)
    centres = (rois[:, 1:3] + rois[:, 3:5]) / 2
    half = (rois[:, 3:5] - rois[:, 1:3]) * (scale / 2)
    widened = torch.cat([rois[:, :1], centres - half, centres + half], dim=1)
    return torchvision.ops.roi_align(
        images, widened.to(images.dtype), (crop_size, crop_size), 1.0, 2, aligned=True
    )


@dataclass
class SVMFit:
    """One class's linear SVM after hard-negative mining.

    Attributes:
        weight: ``float64 [D]``; bias: the intercept (margin = ``x @ weight + bias``).
        cache_sizes: negatives trained on in each round.
        hard_added: hard negatives added after each round (the last is 0 when converged).
    """

    weight: np.ndarray
    bias: float
    cache_sizes: list[int] = field(default_factory=list)
    hard_added: list[int] = field(default_factory=list)

    @property
    def converged(self) -> bool:
        """True when the last round found no new hard negative."""
        return bool(self.hard_added) and self.hard_added[-1] == 0


def _linear_svc(c: float, positive_weight: float, seed: int) -> Any:
    try:
        from sklearn.svm import LinearSVC
    except ImportError:
        raise ConfigError(f"R-CNN's SVMs need scikit-learn: {INSTALL_HINT}") from None
    return LinearSVC(
        C=c,
        loss="hinge",
        dual=True,
        class_weight={1: positive_weight, 0: 1.0},
        intercept_scaling=10.0,  # liblinear penalizes the bias: a large constant frees it
        max_iter=20_000,
        random_state=seed,
    )


def fit_svm_with_hard_negatives(
    positives: np.ndarray,
    negatives: np.ndarray,
    options: RCNNConfig | None = None,
    seed: int = 0,
) -> SVMFit:
    """A linear SVM separating ``positives`` from ``negatives``, trained on a mined subset.

    Round 1 trains on all positives and ``initial_negatives`` random negatives per positive;
    after each round every negative is scored, those above ``hard_negative_score`` that the
    cache lacks are added and cached ones below ``easy_negative_score`` leave; mining stops
    when no hard negative is new or after ``mining_rounds`` rounds. Negatives beyond the
    margin cost nothing in the hinge loss, so the result approaches the SVM trained on all of
    them while fitting on a fraction.

    Args:
        positives (ndarray[Np, D]), negatives (ndarray[Nn, D]): scaled features.
        options: ``model.rcnn`` (``svm_c``, ``svm_positive_weight``, the mining settings).
        seed: the initial negatives and liblinear's coordinate order.

    Raises:
        ValueError: no negatives (a binary SVM needs both sides).
    """
    options = options or RCNNConfig()
    positives = np.asarray(positives, dtype=np.float64)
    negatives = np.asarray(negatives, dtype=np.float64)
    if len(positives) == 0:
        return SVMFit(np.zeros(negatives.shape[1]), UNTRAINED_BIAS)
    if len(negatives) == 0:
        raise ValueError("fit_svm_with_hard_negatives: no negatives to train against")
    rng = np.random.default_rng(seed)
    initial = min(len(negatives), options.initial_negatives * len(positives))
    cache = np.sort(rng.choice(len(negatives), initial, replace=False))
    fit = SVMFit(np.zeros(positives.shape[1]), 0.0)
    for _ in range(options.mining_rounds):
        features = np.concatenate([positives, negatives[cache]])
        labels = np.concatenate([np.ones(len(positives)), np.zeros(len(cache))])
        svm = _linear_svc(options.svm_c, options.svm_positive_weight, seed).fit(features, labels)
        fit.weight, fit.bias = svm.coef_[0].copy(), float(svm.intercept_[0])
        fit.cache_sizes.append(len(cache))
        scores = negatives @ fit.weight + fit.bias
        hard = np.setdiff1d(np.nonzero(scores > options.hard_negative_score)[0], cache)
        fit.hard_added.append(len(hard))
        if len(hard) == 0:
            break
        cache = np.union1d(cache[scores[cache] >= options.easy_negative_score], hard)
    return fit


def fit_box_regressor(
    features: np.ndarray, offsets: np.ndarray, alpha: float
) -> tuple[np.ndarray, np.ndarray]:
    """Ridge regression of box offsets on features (scikit-learn's ``Ridge``).

    Args:
        features (ndarray[N, D]): scaled features of proposals.
        offsets (ndarray[N, 4]): ``(dx, dy, dw, dh)`` from each proposal to its ground truth
            (:func:`cvkit.ops.coder.encode_boxes`, unit weights).
        alpha: the L2 penalty of the weights (the intercept is not penalized).

    Returns:
        ``(weight [4, D], bias [4])``; zeros when ``N == 0`` (boxes stay as proposed).
    """
    if len(features) == 0:
        return np.zeros((4, features.shape[1])), np.zeros(4)
    try:
        from sklearn.linear_model import Ridge
    except ImportError:
        raise ConfigError(f"R-CNN's box regressors need scikit-learn: {INSTALL_HINT}") from None
    ridge = Ridge(alpha=alpha).fit(
        np.asarray(features, np.float64), np.asarray(offsets, np.float64)
    )
    return ridge.coef_.copy(), np.asarray(ridge.intercept_, dtype=np.float64).copy()


@dataclass
class StageFit:
    """What :meth:`RCNN.fit_stage` fitted.

    Attributes:
        feature_scale: the factor that gives the training features a mean norm of
            ``feature_norm``.
        svms: one :class:`SVMFit` per class.
        box_samples: regression samples of each class.
    """

    feature_scale: float
    svms: list[SVMFit] = field(default_factory=list)
    box_samples: list[int] = field(default_factory=list)


@dataclass
class RegionBank:
    """Features of a dataset's regions, gathered for the SVM and regressor stage.

    Attributes:
        gt_features (ndarray[G, D]), gt_labels (ndarray[G]): ground-truth boxes.
        proposal_features (ndarray[P, D]): every proposal.
        class_iou (ndarray[P, C]): each proposal's best IoU with a ground truth of each class.
        box_features (ndarray[R, D]), box_offsets (ndarray[R, 4]), box_labels (ndarray[R]):
            regression samples (proposals at IoU ≥ ``box_iou`` and the ground truth itself).
    """

    gt_features: np.ndarray
    gt_labels: np.ndarray
    proposal_features: np.ndarray
    class_iou: np.ndarray
    box_features: np.ndarray
    box_offsets: np.ndarray
    box_labels: np.ndarray


class RCNN(ProposalDetector):
    """R-CNN: proposals, warped crops, a backbone, per-class SVMs and box regressors.

    Args:
        backbone: any :class:`Backbone`; its last selected stage, average pooled, is the
            region feature.
        num_classes: foreground classes (labels 0..C-1).
        options: ``model.rcnn``.
        inference: ``eval`` section, read when the eval forward runs.
        body_lr_mult, head_lr_mult: learning-rate multipliers of the backbone and the
            fine-tuning classifier.
        proposer: ``images -> list of Tensor[P_i, 4]`` used when a forward gets no
            ``proposals`` (see :class:`~cvkit.models.detection.proposals.ProposalDetector`).
    """

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int,
        options: RCNNConfig | None = None,
        inference: EvalConfig | None = None,
        body_lr_mult: float = 1.0,
        head_lr_mult: float = 1.0,
        proposer: SelectiveSearchProposer | None = None,
    ) -> None:
        super().__init__(
            backbone,
            num_classes,
            options or RCNNConfig(),
            inference,
            body_lr_mult,
            head_lr_mult,
            proposer,
        )
        dim = backbone.channels[self.feature_name]
        self.finetune_head = nn.Linear(dim, num_classes + 1)
        self.register_buffer("svm_weight", torch.zeros(num_classes, dim))
        self.register_buffer("svm_bias", torch.full((num_classes,), UNTRAINED_BIAS))
        self.register_buffer("box_weight", torch.zeros(num_classes, 4, dim))
        self.register_buffer("box_bias", torch.zeros(num_classes, 4))
        self.register_buffer("feature_scale", torch.ones(()))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    def region_features(self, images: Tensor, boxes: Sequence[Tensor]) -> Tensor:
        """Unscaled feature vectors ``[K, D]`` of the boxes (one ``Tensor[k_i, 4]`` xyxy per
        image, in the order of ``torch.cat(boxes)``)."""
        rois = boxes_to_rois([b.to(images.dtype) for b in boxes])
        chunk = len(rois) if self.training else CROP_CHUNK
        outputs = []
        for start in range(0, len(rois), max(chunk, 1)):
            crops = warp_regions(
                images,
                rois[start : start + chunk],
                self.options.crop_size,
                self.options.context_padding,
            )
            pooled = F.adaptive_avg_pool2d(self.backbone(crops)[self.feature_name], 1)
            outputs.append(pooled.flatten(1))
        if not outputs:
            return images.new_zeros((0, self.finetune_head.in_features))
        return torch.cat(outputs)

    def forward(
        self,
        images: Tensor | ImageBatch,
        targets: list[Target] | None = None,
        proposals: Sequence[Tensor] | None = None,
    ) -> dict[str, Tensor] | list[Instances]:
        """The fine-tuning loss in training mode, detections in eval mode.

        Args:
            images (Tensor[B, 3, H, W] or ImageBatch): normalized images.
            targets: training only; one :class:`~cvkit.structures.Target` per image.
            proposals: optional ``Tensor[P_i, 4]`` xyxy input pixels per image (default:
                the proposer's).

        Returns:
            training: ``{"finetune_cls"}`` (cross-entropy over the sampled proposals); eval:
            one :class:`~cvkit.structures.Instances` per image.
        """
        batch = ImageBatch.of(images)
        if not self.training:
            return self.detect(batch, proposals)
        targets = self.check_targets(batch, targets)
        sampled, labels = [], []
        for image_proposals, target in zip(
            self.proposals_for(batch, proposals), targets, strict=True
        ):
            gt = target.boxes.to(image_proposals.dtype)
            rois = torch.cat([image_proposals, gt])
            iou = self.options.finetune_iou
            matched, pos, neg = match_and_sample(
                rois,
                gt,
                (iou, iou),
                self.options.batch_size_per_image,
                self.options.positive_fraction,
            )
            image_labels = torch.zeros(len(pos) + len(neg), dtype=torch.int64, device=rois.device)
            image_labels[: len(pos)] = target.labels[matched[pos]] + 1
            sampled.append(rois[torch.cat([pos, neg])])
            labels.append(image_labels)
        logits = self.finetune_head(self.region_features(batch.tensor, sampled))
        return {"finetune_cls": F.cross_entropy(logits.float(), torch.cat(labels))}

    def scores_and_offsets(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """SVM margins ``[K, C]`` and per-class box offsets ``[K, C, 4]`` of unscaled
        features ``[K, D]``."""
        scaled = features.float() * self.feature_scale
        margins = scaled @ self.svm_weight.T + self.svm_bias
        offsets = torch.einsum("kd,cjd->kcj", scaled, self.box_weight) + self.box_bias
        return margins, offsets

    def candidates(
        self, images: Tensor | ImageBatch, proposals: Sequence[Tensor] | None = None
    ) -> tuple[Tensor, Tensor]:
        """Per-class pre-NMS predictions of every proposal.

        Args:
            images (Tensor[B, 3, H, W] or ImageBatch): normalized images.
            proposals: as in :meth:`forward`.

        Returns:
            ``boxes [B, P, C, 4]`` xyxy input pixels (each class's regressor applied, clipped
            to the image) and ``scores [B, P, C]`` = sigmoid(SVM margin), 0 on padding rows;
            ``P`` the most proposals of an image in the batch.

        Raises:
            RuntimeError: the SVMs have not been fitted (:meth:`fit_stage`).
        """
        if not bool(self.fitted):
            raise RuntimeError(
                "RCNN: the SVMs and box regressors are not fitted yet; call "
                "model.fit_stage(train_loader, device) (cvkit train does after its epochs)"
            )
        batch = ImageBatch.of(images)
        per_image = self.proposals_for(batch, proposals)
        padded = pad_proposals(per_image)
        valid = padded.valid()
        margins, offsets = self.scores_and_offsets(self.region_features(batch.tensor, per_image))
        count, classes = padded.boxes.shape[1], self.num_classes
        scores = margins.new_zeros((len(batch), count, classes))
        deltas = offsets.new_zeros((len(batch), count, classes, 4))
        scores[valid] = margins.sigmoid()
        deltas[valid] = offsets
        boxes = decode_boxes(deltas, padded.boxes[:, :, None, :])
        boxes = clip_per_image(boxes, batch.image_sizes)
        widths, heights = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
        keep = (widths >= MIN_BOX_SIZE) & (heights >= MIN_BOX_SIZE) & valid[..., None]
        return boxes, scores * keep

    def _image_regions(
        self, proposals: Tensor, gt: Tensor, labels: Tensor, features: Tensor
    ) -> dict[str, Tensor]:
        """One image's :class:`RegionBank` rows; ``features`` are those of
        ``cat(proposals [P, 4], gt [G, 4])``."""
        proposal_features, gt_features = features[: len(proposals)], features[len(proposals) :]
        iou = box_iou(proposals, gt)
        class_iou = proposals.new_zeros((len(proposals), self.num_classes))
        for label in labels.unique():
            class_iou[:, label] = iou[:, labels == label].max(dim=1).values
        if len(gt):
            best, matched = iou.max(dim=1)
        else:
            best, matched = class_iou[:, 0], labels.new_zeros(len(proposals))
        close = torch.nonzero(best >= self.options.box_iou).squeeze(1)
        their_gt = matched[close]
        return {
            "gt_features": gt_features,
            "gt_labels": labels,
            "proposal_features": proposal_features,
            "class_iou": class_iou,
            "box_features": torch.cat([proposal_features[close], gt_features]),
            "box_offsets": encode_boxes(
                torch.cat([gt[their_gt], gt]), torch.cat([proposals[close], gt])
            ),
            "box_labels": torch.cat([labels[their_gt], labels]),
        }

    @torch.no_grad()
    def collect_regions(
        self, batches: Iterable[tuple[Tensor, list[Target]]], device: torch.device | str
    ) -> RegionBank:
        """Features (unscaled) of every proposal and ground-truth box of ``batches``
        (``(images, targets)`` as the loader yields them), with their overlaps and the
        regression samples; images in the order of their ``image_id`` (then as met), so a
        shuffled loader gives the same bank.

        Raises:
            ValueError: ``batches`` is empty.
        """
        per_image: list[tuple[int, dict[str, Tensor]]] = []
        for images, targets in batches:
            batch = ImageBatch.of(images.to(device))
            proposals = self.proposals_for(batch)
            gts = [target.boxes.to(device, torch.float32) for target in targets]
            boxes = [torch.cat([p, g]) for p, g in zip(proposals, gts, strict=True)]
            features = self.region_features(batch.tensor, boxes).float()
            for image_boxes, image_features, gt, target in zip(
                proposals, features.split([len(b) for b in boxes]), gts, targets, strict=True
            ):
                labels = target.labels.to(device)
                regions = self._image_regions(image_boxes, gt, labels, image_features)
                per_image.append((target.image_id, {k: v.cpu() for k, v in regions.items()}))
        if not per_image:
            raise ValueError("RCNN.collect_regions: no batches to fit the SVMs on")
        per_image.sort(key=lambda item: item[0])
        return RegionBank(
            **{
                name: torch.cat([regions[name] for _, regions in per_image]).numpy()
                for name in RegionBank.__dataclass_fields__
            }
        )

    def fit_stage(
        self, batches: Iterable[tuple[Tensor, list[Target]]], device: torch.device | str
    ) -> StageFit:
        """Fit the SVMs (with hard-negative mining) and box regressors on ``batches``.

        The Trainer calls this after the gradient epochs that are validated and after the
        last one (the backbone is in eval mode meanwhile, so features match inference), on
        its training loader; the regions are ordered by image (:meth:`collect_regions`), so
        the loader's shuffle does not change the SVMs. Under DDP each process fits on its
        own shard.
        """
        was_training = self.training
        self.eval()
        bank = self.collect_regions(batches, device)
        self.train(was_training)
        options = self.options
        every = np.concatenate([bank.gt_features, bank.proposal_features])
        mean_norm = float(np.linalg.norm(every, axis=1).mean()) if len(every) else 0.0
        scale = options.feature_norm / mean_norm if mean_norm > 0 else 1.0
        report = StageFit(scale)
        for label in range(self.num_classes):
            negatives = bank.proposal_features[bank.class_iou[:, label] < options.negative_iou]
            fit = fit_svm_with_hard_negatives(
                bank.gt_features[bank.gt_labels == label] * scale, negatives * scale, options, label
            )
            chosen = bank.box_labels == label
            weight, bias = fit_box_regressor(
                bank.box_features[chosen] * scale, bank.box_offsets[chosen], options.ridge_alpha
            )
            self.svm_weight[label] = torch.from_numpy(fit.weight)
            self.svm_bias[label] = fit.bias
            self.box_weight[label] = torch.from_numpy(weight)
            self.box_bias[label] = torch.from_numpy(bias)
            report.svms.append(fit)
            report.box_samples.append(int(chosen.sum()))
            logger.info(
                "class %d: SVM on %d positives, negatives per mining round %s (hard added %s); "
                "box regressor on %d samples",
                label,
                int((bank.gt_labels == label).sum()),
                fit.cache_sizes,
                fit.hard_added,
                report.box_samples[-1],
            )
        self.feature_scale.fill_(scale)
        self.fitted.fill_(True)
        return report

    @property
    def size_divisibility(self) -> int:
        """1: crops are warped from any image size."""
        return 1


@register_model("rcnn")
def build_rcnn(config: Config, num_classes: int) -> RCNN:
    """The R-CNN that ``model:`` describes (``backbone``, ``out_features``, ``rcnn``
    options); its proposer un-normalizes images with ``data.mean``/``data.std``.

    Raises:
        ConfigError: ``train.ema`` is on (the SVMs are fitted, an average would blur them).
    """
    if config.train.ema:
        raise ConfigError(
            "train.ema: R-CNN's SVMs are fitted after the epochs, not averaged; "
            "set train.ema=false for model.name rcnn"
        )
    return RCNN.from_config(config, num_classes, config.model.rcnn)
