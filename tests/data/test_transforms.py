"""Augmentation properties: boxes stay inside, masks and boxes agree, labels stay aligned;
the eval preset's scale/offset are exact."""

import cv2
import numpy as np
import pytest

from cvkit.config.data import DataConfig, TransformSpec
from cvkit.data.records import mask_to_box
from cvkit.data.synthetic import render_sample
from cvkit.data.transforms import build_augment, build_transform, fit_to_input, preset
from cvkit.errors import ConfigError

PALETTE = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)


def _coloured_by_label(seed: int, size: int = 96):
    """A synthetic sample repainted so each object's colour is its label's palette colour."""
    sample = render_sample(np.random.default_rng(seed), size)
    image = np.zeros_like(sample.image)
    for mask, label in zip(sample.masks, sample.labels, strict=True):
        image[mask > 0] = PALETTE[label]
    return image, sample


def _run(specs, seed, task="detect", size=64, with_masks=True):
    cfg = DataConfig(image_size=size, augment=specs)
    transform = build_transform(cfg, task, train=True)
    image, sample = _coloured_by_label(seed)
    transform.reseed(seed)
    masks = sample.masks if with_masks else None
    return transform(image, sample.boxes, sample.labels, masks, sample.semantic()), transform


ROTATING = [
    TransformSpec(name="Rotate", params={"limit": 40, "p": 1.0}),
    TransformSpec(name="HorizontalFlip", params={"p": 0.5}),
]


@pytest.mark.parametrize("task", ["detect", "segment"])
def test_presets_keep_boxes_inside_and_labels_aligned(task):
    for seed in range(25):
        out, _ = _run(preset(task, 64), seed, task)
        assert out.image.shape == (64, 64, 3) and out.semantic.shape == (64, 64)
        boxes = out.boxes
        assert ((boxes >= 0) & (boxes <= 64)).all()
        assert ((boxes[:, 2:] > boxes[:, :2]).all()) if len(boxes) else True
        assert len(out.boxes) == len(out.labels) == len(out.masks)


def test_masks_and_boxes_agree_after_rotation_and_labels_follow():
    for seed in range(25):
        out, transform = _run(ROTATING, seed, size=96)  # input size = image size: no resize
        assert transform.recompute_boxes
        for box, mask, label in zip(out.boxes, out.masks, out.labels, strict=True):
            assert np.array_equal(box, mask_to_box(mask))
            # the object's own pixels still carry its label's colour
            pixels = out.image[mask > 0].astype(int)
            assert np.abs(pixels - PALETTE[label]).sum(axis=1).mean() < 60


def test_an_object_whose_mask_was_empty_keeps_its_rotated_box():
    """A degenerate COCO polygon decodes to an empty mask: after a rotation the box was
    re-derived from that mask, found nothing, and the object left training silently. It now
    keeps the box albumentations rotated, the box a run without masks gives."""
    rotate = [TransformSpec(name="Rotate", params={"limit": (30, 30), "p": 1.0})]
    transform = build_transform(DataConfig(image_size=96, augment=rotate), "detect", train=True)
    image, sample = _coloured_by_label(7)
    assert transform.recompute_boxes and len(sample.labels) >= 2
    masks = sample.masks.copy()
    masks[1] = 0
    transform.reseed(3)
    out = transform(image, sample.boxes, sample.labels, masks)
    transform.reseed(3)
    boxes_only = transform(image, sample.boxes, sample.labels)
    assert out.labels.tolist() == sample.labels.tolist() == boxes_only.labels.tolist()
    np.testing.assert_allclose(out.boxes[1], boxes_only.boxes[1], atol=1e-4)
    assert not out.masks[1].any() and np.array_equal(out.boxes[0], mask_to_box(out.masks[0]))


def test_boxes_follow_the_objects_without_masks():
    flip = [TransformSpec(name="HorizontalFlip", params={"p": 1.0})]
    image, sample = _coloured_by_label(4)
    cfg = DataConfig(image_size=96, augment=flip)
    out = build_transform(cfg, "detect", train=True)(image, sample.boxes, sample.labels)
    expected = sample.boxes[:, [2, 1, 0, 3]] * [-1, 1, -1, 1] + [96, 0, 96, 0]
    assert np.allclose(out.boxes, expected) and np.array_equal(out.labels, sample.labels)


def test_crop_drops_boxes_with_their_masks_and_labels():
    crop = [TransformSpec(name="Crop", params={"x_min": 0, "y_min": 0, "x_max": 40, "y_max": 40})]
    for seed in range(10):
        out, _ = _run(crop, seed, size=40)
        assert len(out.boxes) == len(out.labels) == len(out.masks)
        for box, mask in zip(out.boxes, out.masks, strict=True):
            inside = mask[int(box[1]) : int(np.ceil(box[3])), int(box[0]) : int(np.ceil(box[2]))]
            assert inside.sum() == mask.sum() > 0


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (TransformSpec(name="NoSuchTransform"), "unknown albumentations transform 'NoSuch"),
        (TransformSpec(name="HorizontalFlip", params={"probability": 1}), "bad parameters"),
        (TransformSpec(name="BboxParams"), "unknown albumentations transform 'BboxParams'"),
    ],
)
def test_config_errors_name_the_entry(spec, message):
    with pytest.raises(ConfigError, match=message):
        build_augment([TransformSpec(name="HorizontalFlip"), spec])


def test_nested_compositions_are_built():
    one_of = TransformSpec(
        name="OneOf",
        params={"transforms": [{"name": "Rotate", "params": {"limit": 10}}], "p": 1.0},
    )
    cfg = DataConfig(image_size=32, augment=[one_of])
    assert build_transform(cfg, "detect", train=True).recompute_boxes


@pytest.mark.parametrize(("height", "width"), [(60, 100), (120, 50), (64, 64)])
def test_letterbox_is_exact(height, width):
    image = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
    out, scale = fit_to_input(image, 64, "letterbox")
    ratio = 64 / max(height, width)
    new_w, new_h = round(width * ratio), round(height * ratio)
    assert scale == (ratio, ratio)
    expected = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    assert (
        np.array_equal(out[:new_h, :new_w], expected) if (new_h, new_w) != (height, width) else True
    )
    assert out[new_h:].sum() == 0 and out[:, new_w:].sum() == 0
    stretched, (sx, sy) = fit_to_input(image, 64, "resize")
    assert stretched.shape == (64, 64, 3) and (sx, sy) == (64 / width, 64 / height)


def test_eval_transform_maps_boxes_back_exactly():
    boxes = np.array([[3.5, 7.0, 40.25, 55.0], [0, 0, 100, 60]], np.float32)
    for policy in ("letterbox", "resize"):
        cfg = DataConfig(image_size=64, resize=policy)
        out = build_transform(cfg, "detect", train=False)(
            np.zeros((60, 100, 3), np.uint8), boxes, np.array([0, 1])
        )
        sx, sy = out.geometry.scale
        ox, oy = out.geometry.offset
        back = (out.boxes - [ox, oy, ox, oy]) / [sx, sy, sx, sy]
        assert np.allclose(back, boxes, atol=1e-4)
