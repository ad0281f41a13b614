"""Class activation maps for cvkit's classifiers, segmenters and detectors, with the methods
of the ``grad-cam`` package (``pip install cvkit[insight]``).

What is explained depends on what the model returns, not on the task's name:

- logits ``[B, C]`` (a classifier): the class's logit (``ClassifierOutputTarget``);
- logits ``[B, C, H, W]`` (a segmenter): the class's logits summed over the pixels predicted
  as that class, or over the whole image when none is (``SemanticSegmentationTarget``);
- a detector (a ``candidates(images)`` method, see ``docs/extending.md``): the detections'
  boxes come from NMS, which has no useful gradient, but every detection is one candidate's
  score for one class before NMS. :func:`candidate_sources` finds that ``(candidate, class)``
  pair for each detection; the model is wrapped as :class:`CandidateScores` (images →
  pre-NMS ``scores [B, N, C]``) and :class:`CandidateScoreTarget` sums the chosen pairs'
  scores, so the gradient reaches the network only through the candidates that produced the
  explained detections. This works for any detector that follows the contract.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from cvkit.errors import InputError
from cvkit.ops.boxes import clip_boxes
from cvkit.structures import Instances

# ``--method`` name → class name in pytorch_grad_cam
CAM_METHODS = {
    "gradcam": "GradCAM",
    "hirescam": "HiResCAM",
    "gradcam++": "GradCAMPlusPlus",
    "xgradcam": "XGradCAM",
    "layercam": "LayerCAM",
    "eigencam": "EigenCAM",
    "eigengradcam": "EigenGradCAM",
    "gradcamelementwise": "GradCAMElementWise",
    "scorecam": "ScoreCAM",
    "ablationcam": "AblationCAM",
    "kpcacam": "KPCA_CAM",
    "randomcam": "RandomCAM",
}


def cam_method(name: str) -> type:
    """The ``pytorch_grad_cam`` class of ``--method name``.

    Raises:
        InputError: an unknown name, or the package is not installed.
    """
    if name not in CAM_METHODS:
        raise InputError(f"--method {name!r}: unknown; choose from {', '.join(CAM_METHODS)}")
    try:
        import pytorch_grad_cam
    except ModuleNotFoundError:
        raise InputError(
            "cvkit viz cam needs the grad-cam package: pip install cvkit[insight]"
        ) from None
    return getattr(pytorch_grad_cam, CAM_METHODS[name])


class CandidateScores(nn.Module):
    """A detector seen as a model from images to its pre-NMS class scores.

    Args:
        detector: any module with ``candidates(images) -> (boxes, scores [B, N, C], ...)``.
    """

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, images: Tensor) -> Tensor:
        """``Tensor[B, 3, H, W]`` → ``scores Tensor[B, N, C]`` (differentiable)."""
        return self.detector.candidates(images)[1]


class CandidateScoreTarget:
    """A ``grad-cam`` target: the sum of the scores of chosen ``(candidate, class)`` pairs.

    Args:
        pairs: ``int64 [K, 2]`` rows of (candidate index, class index).
    """

    def __init__(self, pairs: Tensor) -> None:
        self.pairs = pairs.long().reshape(-1, 2)

    def __call__(self, scores: Tensor) -> Tensor:
        """``scores [N, C]`` of one image → a scalar."""
        pairs = self.pairs.to(scores.device)
        return scores[pairs[:, 0], pairs[:, 1]].sum()


def candidate_sources(
    boxes: Tensor, scores: Tensor, detections: Instances, tolerance: float = 1e-3
) -> Tensor:
    """The ``(candidate, class)`` pair that produced each detection of one image.

    A detection is one candidate's box (clipped to the image) and its score for the
    detection's class: the pair is the candidate whose score for that class and whose clipped
    box are nearest to the detection's.

    Args:
        boxes: the image's candidate boxes ``[N, 4]`` (shared by the classes) or per class
            ``[N, C, 4]``, xyxy input pixels, as ``candidates`` returns them.
        scores: ``[N, C]`` pre-NMS class scores.
        detections: the image's :class:`~cvkit.structures.Instances` from the eval forward
            (input pixels).
        tolerance: largest score difference plus box difference (pixels) accepted.

    Returns:
        ``int64 [K, 2]``: (candidate index, class index) per detection, in detection order.

    Raises:
        InputError: a detection no candidate explains (the model's forward does not select
            from its ``candidates``).
    """
    height, width = detections.image_size
    pairs = []
    for box, score, label in zip(
        detections.boxes, detections.scores, detections.labels, strict=True
    ):
        label = int(label)
        options = boxes[:, label] if boxes.dim() == 3 else boxes
        options = clip_boxes(options.float(), (int(height), int(width)))
        gap = (scores[:, label].float() - score).abs() + (options - box).abs().amax(dim=1)
        index = int(gap.argmin())
        if float(gap[index]) > tolerance:
            raise InputError(
                f"detection {len(pairs)} (class {label}, score {float(score):.4f}) matches no "
                f"candidate (closest differs by {float(gap[index]):.4g}): the model's forward "
                "must select its detections from candidates(images)"
            )
        pairs.append((index, label))
    return torch.tensor(pairs, dtype=torch.int64).reshape(-1, 2)


def default_layers(model: nn.Module) -> list[str]:
    """Module names to explain by default: the backbone stages the head reads
    (``backbone.<out_features>``), else the model's last ``Conv2d``."""
    modules = dict(model.named_modules())
    backbone = getattr(model, "backbone", None)
    names = [f"backbone.{name}" for name in getattr(backbone, "out_features", [])]
    names = [name for name in names if name in modules]
    if names:
        return names
    convs = [name for name, module in modules.items() if isinstance(module, nn.Conv2d)]
    if not convs:
        raise InputError(f"{type(model).__name__} has no Conv2d layer to explain; pass --layer")
    return convs[-1:]


def resolve_layers(model: nn.Module, names: Sequence[str]) -> list[nn.Module]:
    """The modules called ``names`` in ``model``.

    Raises:
        InputError: a name that is not a module of the model.
    """
    modules = dict(model.named_modules())
    unknown = [name for name in names if name not in modules]
    if unknown:
        shown = ", ".join(name for name in modules if name and name.count(".") <= 1)
        raise InputError(f"--layer {unknown}: not modules of the model; modules: {shown}")
    return [modules[name] for name in names]


def compute_cam(
    model: nn.Module,
    images: Tensor,
    layers: Sequence[nn.Module],
    target: Any,
    method: str = "gradcam",
) -> np.ndarray:
    """Run one ``grad-cam`` method on ``model``.

    Args:
        model: the module grad-cam calls (:class:`CandidateScores` for a detector).
        images: ``Tensor[1, 3, H, W]`` normalized input.
        layers: modules inside ``model`` whose activations are weighted
            (:func:`resolve_layers`).
        target: a grad-cam target (a callable on one image's output).
        method: a key of :data:`CAM_METHODS`.

    Returns:
        ``float32 [H, W]`` in [0, 1] at the input's size.
    """
    cam_class = cam_method(method)
    model.requires_grad_(True)  # frozen stages still pass gradients to their activations
    with cam_class(model=model, target_layers=list(layers)) as cam:
        return cam(input_tensor=images, targets=[target])[0].astype(np.float32)


def overlay(image: np.ndarray, cam: np.ndarray, geometry: Any) -> np.ndarray:
    """``cam`` (input pixels, [0, 1]) mapped back to the original ``image`` (RGB ``uint8
    [h, w, 3]``) with its :class:`~cvkit.geometry.Geometry` and blended as a JET heat map."""
    import cv2
    from pytorch_grad_cam.utils.image import show_cam_on_image

    (sx, sy), (ox, oy) = geometry.scale, geometry.offset
    height, width = image.shape[:2]
    to_original = np.array([[1 / sx, 0, -ox / sx], [0, 1 / sy, -oy / sy]], np.float64)
    mapped = cv2.warpAffine(cam, to_original, (width, height), flags=cv2.INTER_LINEAR)
    return show_cam_on_image(image.astype(np.float32) / 255, np.clip(mapped, 0, 1), use_rgb=True)


def model_targets(
    model: nn.Module,
    images: Tensor,
    classes: Sequence[str],
    class_name: str | None = None,
    box: int | None = None,
    score_threshold: float = 0.3,
) -> tuple[nn.Module, Any, str, Instances | None]:
    """What to explain on ``images [1, 3, H, W]`` and the module grad-cam should call.

    Args:
        model: a cvkit model in eval mode.
        classes: its class names.
        class_name: the class to explain (default: the top class, or detection ``box``).
        box: detectors: the index of the detection to explain (detections sorted by score).
        score_threshold: detectors: ``class_name`` explains its detections scoring at least this.

    Returns:
        ``(module for grad-cam, target, label for file names, explained detections or None)``.

    Raises:
        InputError: an unknown class, a detection index out of range, ``box`` for a model that
            is not a detector, or no detection to explain.
    """
    index = None
    if class_name is not None:
        if class_name not in classes:
            raise InputError(
                f"--class {class_name!r}: not a class of the model; classes: {classes}"
            )
        index = list(classes).index(class_name)
    if hasattr(model, "candidates"):
        return _detector_targets(model, images, classes, index, box, score_threshold)
    if box is not None:
        raise InputError("--box is for detectors; this model has no candidates(images)")
    from pytorch_grad_cam.utils.model_targets import (
        ClassifierOutputTarget,
        SemanticSegmentationTarget,
    )

    with torch.no_grad():
        output = model(images)
    if output.dim() == 2:
        index = int(output[0].argmax()) if index is None else index
        return model, ClassifierOutputTarget(index), classes[index], None
    if output.dim() == 4:
        predicted = output[0].argmax(0)
        if index is None:
            counts = torch.bincount(predicted.flatten(), minlength=len(classes))
            if classes and classes[0] == "background" and int(counts[1:].sum()):
                counts[0] = 0
            index = int(counts.argmax())
        mask = (predicted == index).float()
        if not bool(mask.any()):
            mask = torch.ones_like(mask)
        return model, SemanticSegmentationTarget(index, mask.cpu().numpy()), classes[index], None
    raise InputError(f"cannot explain a model whose output has shape {tuple(output.shape)}")


def _detector_targets(
    model: nn.Module,
    images: Tensor,
    classes: Sequence[str],
    index: int | None,
    box: int | None,
    score_threshold: float,
) -> tuple[nn.Module, Any, str, Instances]:
    with torch.no_grad():
        detections = model(images)[0]
        candidates = model.candidates(images)
    if index is not None:
        chosen = detections[(detections.labels == index) & (detections.scores >= score_threshold)]
        if not len(chosen):
            raise InputError(
                f"--class {classes[index]!r}: no detection scores >= {score_threshold}"
            )
        label = classes[index]
    else:
        k = 0 if box is None else box
        if not 0 <= k < len(detections):
            raise InputError(
                f"--box {k}: the model made {len(detections)} detections (0..{len(detections) - 1})"
            )
        chosen = detections[torch.tensor([k])]
        label = f"box{k}_{classes[int(chosen.labels[0])]}"
    pairs = candidate_sources(candidates[0][0], candidates[1][0], chosen)
    return CandidateScores(model), CandidateScoreTarget(pairs), label, chosen
