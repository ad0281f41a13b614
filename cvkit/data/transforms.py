"""Box- and mask-aware augmentation (albumentations) and the fixed network-input step.

A :class:`SampleTransform` runs two stages on one image with its boxes, labels and masks:

1. ``augment``: an albumentations ``Compose`` built from ``data.augment`` (a list of
   ``{name, params}``; unknown names or bad parameters are :class:`~cvkit.errors.ConfigError`)
   or from the task's preset (:func:`preset`). Boxes are ``pascal_voc`` (``x1, y1, x2, y2``
   pixels), clipped to the image, and boxes that become degenerate or keep less than
   ``min_visibility`` of their area are removed together with their labels and masks. After a
   transform that can rotate or shear (``Affine``, ``Rotate`` ...), boxes are re-derived from
   the instance masks when masks are present, since a rotated box's corners overestimate it.
2. ``fit``: the eval preset, applied to every split: ``letterbox`` (resize keeping the aspect
   ratio so the longer side is ``size``, pad bottom/right with zeros, ``scale = (r, r)``,
   ``offset = (0, 0)``) or ``resize`` (stretch, ``scale = (size / w, size / h)``). It matches
   :mod:`cvkit.runtime.preprocess` exactly (both call :func:`cvkit.geometry.fit`);
   ``original_xy = (input_xy - offset) / scale``. Boxes are clipped to the image before they
   are scaled (never into the letterbox padding); those left without area are removed.

Instance masks leave the fit step dense (``uint8 [N, S, S]``) or, with ``compact_masks``, as
:class:`~cvkit.structures.CroppedMasks` (each mask cropped to its own region, fitted one at a
time): the same masks at a small fraction of the memory of a batch in flight.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import albumentations as A
import cv2
import numpy as np

from cvkit.config.data import DataConfig, TransformSpec
from cvkit.data.records import IGNORE_INDEX, mask_to_box
from cvkit.errors import ConfigError
from cvkit.geometry import Geometry, fit
from cvkit.structures import CroppedMasks

# Transforms after which box corners no longer bound the object tightly (``Affine`` only when
# it rotates or shears).
NON_AXIS_ALIGNED = {
    "Affine",
    "Rotate",
    "SafeRotate",
    "ShiftScaleRotate",
    "Perspective",
    "ElasticTransform",
    "GridDistortion",
    "OpticalDistortion",
    "PiecewiseAffine",
}
MIN_VISIBILITY = 0.1


@dataclass
class Transformed:
    """One transformed sample in network-input pixels.

    Attributes:
        image: ``uint8 [S, S, 3]`` RGB.
        boxes: ``float32 [N, 4]`` ``(x1, y1, x2, y2)`` input pixels.
        labels: ``int64 [N]``.
        masks: ``uint8 [N, S, S]`` instance masks (:class:`~cvkit.structures.CroppedMasks` of
            them with ``compact_masks``) or None.
        semantic: ``uint8 [S, S]`` class indices (255 = ignore) or None.
        geometry: the final fit step (``orig_size`` is the size of the image it fitted,
            i.e. after augmentation).
    """

    image: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    masks: np.ndarray | CroppedMasks | None
    semantic: np.ndarray | None
    geometry: Geometry


def preset(task: str, image_size: int) -> list[TransformSpec]:
    """The default training augmentations of ``task`` (``detect``, ``segment``, ``classify``).

    - detect: zoom out (``Affine`` scale 0.5-1, keeps aspect), a random box-safe crop,
      horizontal flip, colour jitter.
    - segment: horizontal flip, scale 0.75-1.25 with ±10° rotation (padding = ignore),
      colour jitter.
    - classify: horizontal flip, colour jitter.
    """
    colour = TransformSpec(
        name="ColorJitter",
        params={"brightness": 0.3, "contrast": 0.3, "saturation": 0.3, "hue": 0.03, "p": 0.8},
    )
    flip = TransformSpec(name="HorizontalFlip", params={"p": 0.5})
    if task == "detect":
        return [
            TransformSpec(
                name="Affine",
                params={"scale": (0.5, 1.0), "keep_ratio": True, "fill": 0, "p": 0.3},
            ),
            TransformSpec(
                name="RandomSizedBBoxSafeCrop",
                params={"height": image_size, "width": image_size, "erosion_rate": 0.2, "p": 0.4},
            ),
            flip,
            colour,
        ]
    if task == "segment":
        return [
            flip,
            TransformSpec(
                name="Affine",
                params={
                    "scale": (0.75, 1.25),
                    "rotate": (-10, 10),
                    "fill": 0,
                    "fill_mask": IGNORE_INDEX,
                    "p": 0.5,
                },
            ),
            colour,
        ]
    return [flip, colour]


def _instantiate(spec: TransformSpec, where: str) -> Any:
    cls = getattr(A, spec.name, None)
    if not (isinstance(cls, type) and issubclass(cls, A.BasicTransform | A.BaseCompose)):
        raise ConfigError(f"{where}: unknown albumentations transform {spec.name!r}")
    params = dict(spec.params)
    if issubclass(cls, A.BaseCompose):
        children = params.pop("transforms", [])
        params["transforms"] = [
            _instantiate(TransformSpec.model_validate(child), f"{where}.{spec.name}")
            for child in children
        ]
    signature = inspect.signature(cls)
    if not any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values()):
        unknown = sorted(set(params) - set(signature.parameters))
        if unknown:
            raise ConfigError(
                f"{where}: bad parameters for {spec.name}: unknown {unknown}; it takes "
                f"{sorted(signature.parameters)}"
            )
    try:
        return cls(**params)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: bad parameters for {spec.name}: {exc}") from None


def _rotates(specs: list[TransformSpec]) -> bool:
    """Whether any transform (nested ones included) can rotate, shear or warp boxes."""
    for spec in specs:
        params = spec.params
        if spec.name == "Affine":
            if any(np.any(np.asarray(params.get(key, 0)) != 0) for key in ("rotate", "shear")):
                return True
        elif spec.name in NON_AXIS_ALIGNED:
            return True
        children = [TransformSpec.model_validate(c) for c in params.get("transforms", [])]
        if _rotates(children):
            return True
    return False


def build_augment(
    specs: list[TransformSpec], seed: int = 0, where: str = "data.augment"
) -> A.Compose:
    """An albumentations ``Compose`` over ``specs`` with box parameters that keep targets in sync.

    Boxes are ``pascal_voc``, clipped (``clip=True``), invalid ones filtered
    (``filter_invalid_bboxes=True``), and a box keeping less than 10 % of its area is dropped;
    the ``labels`` and ``indices`` fields follow the boxes (``indices`` select the masks).

    Raises:
        ConfigError: an unknown transform name or bad parameters, naming the entry.
    """
    transforms = [_instantiate(spec, f"{where}[{i}]") for i, spec in enumerate(specs)]
    return A.Compose(
        transforms,
        bbox_params=A.BboxParams(
            format="pascal_voc",
            label_fields=["labels", "indices"],
            clip=True,
            filter_invalid_bboxes=True,
            min_visibility=MIN_VISIBILITY,
            min_area=1.0,
            # boxes are clipped and filtered once, after the last transform, on what is left
            # visible of each: checking after every transform took ~30% of the pipeline's time
            check_each_transform=False,
        ),
        seed=seed,
    )


def fit_to_input(
    image: np.ndarray, size: int, policy: str, fill: int = 0, interpolation: int = cv2.INTER_LINEAR
) -> tuple[np.ndarray, tuple[float, float]]:
    """Resize (and pad) ``image [h, w, ...]`` to ``size × size`` with :func:`cvkit.geometry.fit`.

    Returns the new array and ``scale (sx, sy)``; the offset is always ``(0, 0)``.
    """
    fitted, geometry = fit(image, (size, size), policy, fill, interpolation)
    return fitted, geometry.scale


class SampleTransform:
    """Augment (optional) then fit to the network input; see the module docstring.

    Args:
        augment: albumentations ``Compose`` from :func:`build_augment`, or None (eval).
        size: network input side ``S``.
        policy: ``letterbox`` or ``resize``.
        recompute_boxes: re-derive boxes from instance masks after augmentation (set when the
            pipeline holds a non-axis-aligned transform).
        compact_masks: return instance masks as :class:`~cvkit.structures.CroppedMasks`.
    """

    def __init__(
        self,
        augment: A.Compose | None,
        size: int,
        policy: str,
        recompute_boxes: bool = False,
        compact_masks: bool = False,
    ) -> None:
        self.augment = augment
        self.size = size
        self.policy = policy
        self.recompute_boxes = recompute_boxes
        self.compact_masks = compact_masks

    def reseed(self, seed: int) -> None:
        """Re-seed the augmentation's random state (called per sample by the dataset)."""
        if self.augment is not None:
            self.augment.set_random_seed(seed)

    def __call__(
        self,
        image: np.ndarray,
        boxes: np.ndarray,
        labels: np.ndarray,
        masks: np.ndarray | None = None,
        semantic: np.ndarray | None = None,
    ) -> Transformed:
        """Transform one sample.

        Args:
            image: ``uint8 [H, W, 3]`` RGB.
            boxes: ``float32 [N, 4]`` ``(x1, y1, x2, y2)`` original pixels.
            labels: ``int64 [N]``.
            masks: ``uint8 [N, H, W]`` instance masks, or None.
            semantic: ``uint8 [H, W]`` class indices (255 = ignore), or None.
        """
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        labels = np.asarray(labels, np.int64)
        if self.augment is not None:
            image, boxes, labels, masks, semantic = self._augment(
                image, boxes, labels, masks, semantic
            )
        # Clip to the image before fitting: clipped afterwards to the S x S input, a box sticking
        # out of a letterboxed image would reach into the padding.
        height, width = image.shape[:2]
        boxes = boxes.clip(0, np.array([width, height, width, height], np.float32))
        image, geometry = fit(image, (self.size, self.size), self.policy)
        scale = geometry.scale
        if semantic is not None:
            semantic, _ = fit_to_input(
                semantic, self.size, self.policy, IGNORE_INDEX, cv2.INTER_NEAREST
            )
        if masks is not None:
            fitted = (
                fit_to_input(m, self.size, self.policy, 0, cv2.INTER_NEAREST)[0] for m in masks
            )
            if self.compact_masks:
                masks = CroppedMasks.from_crops(fitted, (self.size, self.size))
            elif len(masks):
                masks = np.stack(list(fitted))
            else:
                masks = np.zeros((0, self.size, self.size), np.uint8)
        boxes = boxes * np.array([*scale, *scale], np.float32)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        if not keep.all():
            boxes, labels = boxes[keep], labels[keep]
            masks = masks[keep] if masks is not None else None
        return Transformed(image, boxes, labels, masks, semantic, geometry)

    def _augment(self, image, boxes, labels, masks, semantic):
        inputs: dict[str, Any] = {
            "image": image,
            "bboxes": boxes,
            "labels": labels,
            "indices": np.arange(len(labels)),
        }
        if masks is not None and len(masks):
            inputs["masks"] = masks
        # Only read when boxes are recomputed from the masks below.
        had_pixels = masks.any(axis=(1, 2)) if self.recompute_boxes and masks is not None else None
        if semantic is not None:
            inputs["mask"] = semantic
        out = self.augment(**inputs)
        indices = np.asarray(out["indices"], np.int64)
        boxes = np.asarray(out["bboxes"], np.float32).reshape(-1, 4)
        labels = np.asarray(out["labels"], np.int64).reshape(-1)
        if masks is not None:
            if len(masks):
                masks = np.asarray(out["masks"], np.uint8)[indices]
            else:
                masks = np.zeros((0, *out["image"].shape[:2]), np.uint8)
            if self.recompute_boxes and len(masks):
                # An object whose mask had no pixel before augmentation (a degenerate polygon,
                # a fully covered VOC object) keeps its transformed box: only a mask that the
                # augmentation emptied means the object left the image.
                derived = [
                    mask_to_box(mask) if had_pixels[index] else box
                    for mask, index, box in zip(masks, indices, boxes, strict=True)
                ]
                keep = np.array([b is not None for b in derived])
                masks, labels = masks[keep], labels[keep]
                boxes = np.array([b for b in derived if b is not None], np.float32).reshape(-1, 4)
        return out["image"], boxes, labels, masks, out.get("mask", semantic)


def build_transform(
    data_cfg: DataConfig, task: str, train: bool, seed: int = 0, compact_masks: bool = False
) -> SampleTransform:
    """The transform of one split: augment (``train`` only) + fit to ``data.image_size``.

    ``data.augment`` None means :func:`preset` of ``task``; ``compact_masks``: instance masks
    come out as :class:`~cvkit.structures.CroppedMasks`.

    Raises:
        ConfigError: an unknown transform or bad parameters in ``data.augment``.
    """
    augment, recompute = None, False
    if train:
        specs = (
            data_cfg.augment if data_cfg.augment is not None else preset(task, data_cfg.image_size)
        )
        if specs:
            augment = build_augment(specs, seed)
            recompute = _rotates(specs)
    return SampleTransform(augment, data_cfg.image_size, data_cfg.resize, recompute, compact_masks)
