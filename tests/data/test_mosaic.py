"""Mosaic and MixUp: the canvas against a pixel-by-pixel placement, boxes and instance masks
consistent (each box the tight box of its mask, inside the canvas, slivers dropped), the
mask-free path against the masks for rectangles, MixUp's blend and objects; the dataset
wrapper: same key -> same sample in a fresh dataset, the same samples from kept (cached) tiles
as from tiles resized every time, closed-mosaic keys and plain indices unchanged, mixup of two
mosaics against the same draws by hand."""

import numpy as np
import pytest
import torch

from cvkit.config.data import DataConfig, TransformSpec
from cvkit.data import mosaic as mosaic_module
from cvkit.data.cache import ImageCache
from cvkit.data.loader import RecordsDataset
from cvkit.data.mosaic import (
    FILL,
    LabeledImage,
    MosaicDataset,
    fit_longest_side,
    mixup,
    mosaic,
    with_multi_sample,
)
from cvkit.data.records import mask_to_box
from cvkit.data.sampling import SampleKey, multi_sample_epoch
from cvkit.data.synthetic import render_sample, synthetic_records
from cvkit.data.transforms import build_transform
from cvkit.errors import ConfigError

SIZE = 64


def _rendered(seed: int, size: int = SIZE) -> list[LabeledImage]:
    rng = np.random.default_rng(seed)
    samples = [render_sample(rng, size) for _ in range(4)]
    return [LabeledImage(s.image, s.boxes, s.labels, s.masks) for s in samples]


def _offsets(items, centre):
    """Top-left corner of each quadrant's image on the canvas, by the placement rule."""
    cx, cy = centre
    (h0, w0), (h1, _), (_, w2) = (item.image.shape[:2] for item in items[:3])
    return [(cx - w0, cy - h0), (cx, cy - h1), (cx - w2, cy), (cx, cy)]


@pytest.mark.parametrize("centre", [(20, 41), (32, 32), (0, 64), (63, 1)])
def test_canvas_equals_pixel_by_pixel_placement(centre):
    items = [fit_longest_side(item, SIZE) for item in _rendered(1, 80)]
    narrow = LabeledImage(items[1].image[:, :40], [], [], np.zeros((0, 64, 40), np.uint8))
    items[1] = fit_longest_side(narrow, 40)  # not square, no objects
    out = mosaic(items, centre, SIZE)
    expected = np.full((SIZE, SIZE, 3), FILL, np.uint8)
    offsets = _offsets(items, centre)
    for y in range(SIZE):
        for x in range(SIZE):
            quadrant = (x >= centre[0]) + 2 * (y >= centre[1])
            ox, oy = offsets[quadrant]
            height, width = items[quadrant].image.shape[:2]
            if 0 <= y - oy < height and 0 <= x - ox < width:
                expected[y, x] = items[quadrant].image[y - oy, x - ox]
    np.testing.assert_array_equal(out.image, expected)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_boxes_are_the_tight_boxes_of_the_pasted_masks(seed):
    items = [fit_longest_side(item, SIZE) for item in _rendered(seed, 96)]
    centre = tuple(np.random.default_rng(seed).integers(16, 49, 2))
    out = mosaic(items, centre, SIZE)
    assert out.masks.shape == (len(out.labels), SIZE, SIZE)
    for box, mask in zip(out.boxes, out.masks, strict=True):
        np.testing.assert_array_equal(box, mask_to_box(mask))
    assert (out.boxes >= 0).all() and (out.boxes <= SIZE).all()
    sides = out.boxes[:, 2:] - out.boxes[:, :2]
    assert (sides >= 2).all()
    # every kept mask is a source mask moved by its image's offset, cut to its quadrant, and
    # every source object that keeps >= 10% of its pixels and a 2-px box is there, in order
    offsets = _offsets(items, centre)
    expected_labels, expected_masks = [], []
    for quadrant, item in enumerate(items):
        ox, oy = offsets[quadrant]
        ys, xs = np.mgrid[0:SIZE, 0:SIZE]
        in_quadrant = ((xs >= centre[0]) == bool(quadrant % 2)) & (
            (ys >= centre[1]) == (quadrant >= 2)
        )
        height, width = item.image.shape[:2]
        inside = in_quadrant & (ys - oy >= 0) & (ys - oy < height)
        inside &= (xs - ox >= 0) & (xs - ox < width)
        for label, source in zip(item.labels, item.masks, strict=True):
            moved = np.zeros((SIZE, SIZE), np.uint8)
            moved[inside] = source[(ys - oy)[inside], (xs - ox)[inside]]
            box = mask_to_box(moved)
            if box is None or moved.sum() < 0.1 * source.sum() or (box[2:] - box[:2] < 2).any():
                continue
            expected_labels.append(label)
            expected_masks.append(moved)
    np.testing.assert_array_equal(out.labels, expected_labels)
    np.testing.assert_array_equal(out.masks, np.array(expected_masks).reshape(-1, SIZE, SIZE))


def _rectangles(boxes: list[list[int]], size: int = 40) -> LabeledImage:
    masks = np.zeros((len(boxes), size, size), np.uint8)
    for mask, (x1, y1, x2, y2) in zip(masks, boxes, strict=True):
        mask[y1:y2, x1:x2] = 1
    image = np.zeros((size, size, 3), np.uint8)
    return LabeledImage(image, np.array(boxes, np.float32), np.arange(len(boxes)), masks)


def test_without_masks_boxes_are_clipped_like_rectangle_masks_and_slivers_dropped():
    # image 0 sits at (-10, -8)..(30, 32), so its columns < 10 and rows < 8 are cut: a box at
    # x 0..12 keeps a 2-px column (17% of it: kept), one at x 5..11 a 1-px one (dropped: too
    # thin), one at y 0..10 keeps 2 rows (20%: kept), one at x 0..8 disappears
    first = _rectangles([[0, 12, 12, 20], [5, 22, 11, 30], [12, 0, 22, 10], [0, 12, 8, 20]])
    items = [first, *(_rectangles([[5, 5, 35, 35]]) for _ in range(3))]
    with_masks = mosaic(items, (30, 32), SIZE)
    without = mosaic([LabeledImage(i.image, i.boxes, i.labels) for i in items], (30, 32), SIZE)
    np.testing.assert_array_equal(with_masks.boxes, without.boxes)
    np.testing.assert_array_equal(with_masks.labels, without.labels)
    assert without.masks is None
    np.testing.assert_array_equal(without.boxes[:2], [[0, 4, 2, 12], [2, 0, 12, 2]])
    assert without.labels[:2].tolist() == [0, 2]


def test_an_object_keeping_under_a_tenth_of_its_area_is_dropped():
    # a 30 x 30 box in the bottom rows of image 0, which sits at y -38..2: 2 of its rows are
    # visible, 6.7% of its area
    items = [_rectangles([[5, 10, 35, 40]]), *(_rectangles([]) for _ in range(3))]
    assert len(mosaic(items, (40, 2), SIZE).labels) == 0
    assert len(mosaic(items, (40, 4), SIZE).labels) == 1  # 4 rows: 13%
    masks_off = [LabeledImage(i.image, i.boxes, i.labels) for i in items]
    assert len(mosaic(masks_off, (40, 2), SIZE).labels) == 0
    assert len(mosaic(masks_off, (40, 4), SIZE).labels) == 1


def test_mixup_blends_the_pixels_and_keeps_both_images_objects():
    first, second = _rendered(3)[:2]
    out = mixup(first, second, 0.3)
    expected = np.rint(0.3 * first.image.astype(np.float64) + 0.7 * second.image)
    assert np.abs(out.image.astype(np.float64) - expected).max() <= 1
    np.testing.assert_array_equal(out.boxes, np.concatenate([first.boxes, second.boxes]))
    np.testing.assert_array_equal(out.labels, np.concatenate([first.labels, second.labels]))
    np.testing.assert_array_equal(out.masks, np.concatenate([first.masks, second.masks]))
    for box, mask in zip(out.boxes, out.masks, strict=True):
        np.testing.assert_array_equal(box, mask_to_box(mask))


def test_bad_inputs_are_named():
    items = _rendered(4)
    with pytest.raises(ValueError, match="four images"):
        mosaic(items[:3], (32, 32), SIZE)
    with pytest.raises(ValueError, match="outside"):
        mosaic(items, (70, 32), SIZE)
    with pytest.raises(ValueError, match="canvas 48"):
        mosaic(items, (32, 32), 48)
    with pytest.raises(ValueError, match="masks"):
        mosaic(
            [*items[:3], LabeledImage(items[3].image, items[3].boxes, items[3].labels)],
            (9, 9),
            SIZE,
        )
    with pytest.raises(ValueError, match="weight"):
        mixup(items[0], items[1], 1.5)


def _dataset(instance_masks: bool = True, augment=None, task: str = "detect"):
    records, _ = synthetic_records(12, image_size=48, seed=5)
    config = DataConfig(image_size=SIZE, augment=augment, instance_masks=instance_masks)
    transform = build_transform(config, task, train=True)
    return RecordsDataset(records, transform, task, instance_masks)


def _key(index: int, seed: int, multi_sample: bool = True) -> SampleKey:
    return SampleKey(index, seed, 0, multi_sample)


def _assert_same(a, b):
    np.testing.assert_array_equal(a[0].numpy(), b[0].numpy())
    for field in ("boxes", "labels", "masks"):
        left, right = getattr(a[1], field), getattr(b[1], field)
        assert (left is None) == (right is None)
        if left is not None:
            np.testing.assert_array_equal(left.numpy(), right.numpy())


FLIP = [TransformSpec(name="HorizontalFlip", params={"p": 0.5})]


def test_same_key_same_sample_in_a_fresh_dataset_and_masks_match_boxes():
    seen_boxes = set()
    for seed in range(6):
        first = MosaicDataset(_dataset(augment=FLIP), 1.0, 0.5)[_key(3, seed)]
        # another process: a new dataset, other keys drawn before
        other = MosaicDataset(_dataset(augment=FLIP), 1.0, 0.5)
        other[_key(5, 99)]
        _assert_same(first, other[_key(3, seed)])
        image, target = first
        assert image.shape == (3, SIZE, SIZE) and target.masks.shape[1:] == (SIZE, SIZE)
        for box, mask in zip(target.boxes.numpy(), target.masks.numpy(), strict=True):
            np.testing.assert_array_equal(box, mask_to_box(mask))
        seen_boxes.add(target.boxes.numpy().tobytes())
    assert len(seen_boxes) == 6  # the seed changes the mosaic


def _cached(image_size: int, instance_masks: bool = False, cache: bool = True):
    """A detect split whose images come from a RAM cache, as a file dataset's would."""
    records, _ = synthetic_records(12, image_size=image_size, seed=5)
    config = DataConfig(image_size=SIZE, augment=FLIP, instance_masks=instance_masks)
    transform = build_transform(config, "detect", train=True)
    images = ImageCache.of_images([sample.image for sample in records.samples]) if cache else None
    return RecordsDataset(records, transform, "detect", instance_masks, images)


def test_kept_tiles_give_the_same_samples_as_resizing_every_time():
    kept = MosaicDataset(_cached(96), 1.0, 0.5)
    assert kept.tiles is not None and kept.tiles.nbytes == 12 * SIZE * SIZE * 3
    resized = MosaicDataset(_cached(96), 1.0, 0.5)
    resized.tiles = None
    for seed in range(8):
        _assert_same(kept[_key(seed % 12, seed)], resized[_key(seed % 12, seed)])
    # resized every time: masks needed, no RAM cache, or tiles larger than the cached images
    assert MosaicDataset(_cached(96, instance_masks=True), 1.0, 0.0).tiles is None
    assert MosaicDataset(_cached(96, cache=False), 1.0, 0.0).tiles is None
    assert MosaicDataset(_cached(48), 1.0, 0.0).tiles is None


def test_closed_mosaic_keys_and_plain_indices_give_the_dataset_sample():
    base = _dataset(instance_masks=False)
    wrapped = MosaicDataset(base, 1.0, 1.0)
    _assert_same(wrapped[_key(2, 7, multi_sample=False)], base[_key(2, 7)])
    torch.manual_seed(0)
    plain = wrapped[4]
    torch.manual_seed(0)
    _assert_same(plain, base[4])
    combined = wrapped[_key(2, 7)]
    assert len(combined[1].boxes) != len(base[_key(2, 7)][1].boxes) or not torch.equal(
        combined[0], base[_key(2, 7)][0]
    )
    assert combined[1].masks is None


def test_mixup_of_two_mosaics_keeps_both_mosaics_objects():
    base = _dataset(augment=[])  # no augmentation: the output is the blend itself
    key = _key(1, 11)
    mixed = MosaicDataset(base, 1.0, 1.0)[key]
    # the same draws by hand: the first mosaic, then the partner mosaic, then the weight
    wrapped = MosaicDataset(base, 1.0, 0.0)
    rng = np.random.default_rng([key.seed, mosaic_module._STREAM])
    rng.random()
    first = wrapped._mosaic(1, rng)
    rng.random()
    partner = wrapped._mosaic(int(rng.integers(len(base))), rng)
    weight = float(rng.beta(32.0, 32.0))
    expected = mixup(first, partner, weight)
    np.testing.assert_array_equal(mixed[1].boxes.numpy(), expected.boxes)
    np.testing.assert_array_equal(mixed[0].numpy().transpose(1, 2, 0), expected.image)
    assert len(expected.labels) == len(first.labels) + len(partner.labels) > len(first.labels)


def test_close_mosaic_epochs_and_bad_settings():
    assert [multi_sample_epoch(e, 5, 2) for e in range(5)] == [True, True, True, False, False]
    assert all(multi_sample_epoch(e, 5, 0) for e in range(5))
    base = _dataset()
    assert with_multi_sample(base, DataConfig()) is base
    assert isinstance(with_multi_sample(base, DataConfig(mosaic=0.5)), MosaicDataset)
    with pytest.raises(ConfigError, match=r"data\.mixup"):
        with_multi_sample(base, DataConfig(mixup=0.5))
    with pytest.raises(ConfigError, match="segment"):
        MosaicDataset(_dataset(instance_masks=False, task="segment"), 1.0, 0.0)


def test_objects_whose_masks_are_empty_are_cut_by_their_boxes():
    """Degenerate polygons decode to empty masks: such objects once left every mosaic (no
    visible mask pixel); they are now cut as boxes are, beside objects with masks."""
    first = _rectangles([[0, 12, 12, 20], [5, 22, 11, 30], [12, 0, 22, 10], [0, 12, 8, 20]])
    emptied = LabeledImage(first.image, first.boxes, first.labels, np.zeros_like(first.masks))
    items = [emptied, *(_rectangles([[5, 5, 35, 35]]) for _ in range(3))]
    with_masks = mosaic(items, (30, 32), SIZE)
    without = mosaic([LabeledImage(i.image, i.boxes, i.labels) for i in items], (30, 32), SIZE)
    np.testing.assert_array_equal(with_masks.boxes, without.boxes)
    np.testing.assert_array_equal(with_masks.labels, without.labels)
    assert with_masks.labels[:2].tolist() == [0, 2] and not with_masks.masks[:2].any()
