"""Selective-search proposals: OpenCV's contrib build beside albumentations, the boxes, the cache.

The proposals are checked against properties any correct wrapper has (inside the image, sorted,
unique, the same on every call) and against the ground truth of the synthetic images (they
must find most objects); the cache against a counting compute function.
"""

import cv2
import numpy as np
import pytest
import torch

from cvkit.config.model import ProposalConfig
from cvkit.data.synthetic import synthetic_records
from cvkit.errors import ConfigError
from cvkit.geometry import normalize
from cvkit.models.detection.proposals import (
    ProposalCache,
    SelectiveSearchProposer,
    selective_search,
    unnormalize,
)
from cvkit.ops.iou import box_iou
from cvkit.runtime.preprocess import preprocess, search_proposals
from cvkit.selective_search import SearchSettings
from cvkit.structures import ImageBatch

OPTIONS = ProposalConfig(min_size=4, max_proposals=500)


@pytest.fixture(scope="module")
def samples():
    records, _ = synthetic_records(4, image_size=96, seed=3)
    return records.samples


def test_contrib_opencv_and_albumentations_share_one_working_cv2(samples):
    import albumentations as A

    assert hasattr(cv2, "ximgproc"), f"cv2 {cv2.__version__} at {cv2.__file__} has no ximgproc"
    image = samples[0].image
    search = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    search.setBaseImage(image)
    search.switchToSelectiveSearchFast()
    assert len(search.process()) > 0
    # albumentations runs on this same cv2: its resize equals cv2's own
    resized = A.Compose([A.Resize(40, 56, interpolation=cv2.INTER_LINEAR)])(image=image)["image"]
    np.testing.assert_array_equal(resized, cv2.resize(image, (56, 40), cv2.INTER_LINEAR))


def test_selective_search_boxes_are_valid_sorted_unique_and_repeatable(samples):
    for sample in samples:
        boxes = selective_search(sample.image, OPTIONS)
        height, width = sample.image.shape[:2]
        assert boxes.dtype == np.float32 and boxes.ndim == 2 and boxes.shape[1] == 4
        assert 0 < len(boxes) <= OPTIONS.max_proposals
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= width).all()
        assert (boxes[:, 3] <= height).all()
        assert (boxes[:, 2:] - boxes[:, :2] >= OPTIONS.min_size).all()
        assert len(np.unique(boxes, axis=0)) == len(boxes)
        order = np.lexsort(boxes.T[::-1])
        np.testing.assert_array_equal(order, np.arange(len(boxes)))
        np.testing.assert_array_equal(selective_search(sample.image, OPTIONS), boxes)


def test_selective_search_finds_most_objects(samples):
    found, total = 0, 0
    for sample in samples:
        boxes = torch.from_numpy(selective_search(sample.image, OPTIONS))
        iou = box_iou(torch.from_numpy(sample.boxes), boxes)
        found += int((iou.max(dim=1).values >= 0.5).sum())
        total += len(sample.boxes)
    assert found / total >= 0.8


def test_max_proposals_keeps_a_repeatable_subset(samples):
    image = samples[0].image
    every = selective_search(image, OPTIONS)
    few = OPTIONS.model_copy(update={"max_proposals": 10})
    subset = selective_search(image, few)
    assert len(subset) == 10
    np.testing.assert_array_equal(subset, selective_search(image, few))
    rows = {tuple(row) for row in every.tolist()}
    assert all(tuple(row) in rows for row in subset.tolist())


def test_bad_image_is_refused():
    with pytest.raises(ValueError, match=r"uint8 \[H, W, 3\]"):
        selective_search(np.zeros((8, 8), np.uint8))


def test_missing_ximgproc_names_the_extra(monkeypatch, samples):
    monkeypatch.delattr(cv2, "ximgproc")
    with pytest.raises(ConfigError, match=r"cvkit\[rcnn\].*opencv-contrib-python-headless"):
        selective_search(samples[0].image)


def _counting_cache(folder=None):
    calls = []

    def compute(image):
        calls.append(image.shape)
        return np.array([[0, 0, image.shape[1], image.shape[0]]], np.float32)

    return ProposalCache(compute, "whole image", folder), calls


def test_cache_computes_each_image_once_per_content(samples):
    cache, calls = _counting_cache()
    for _ in range(3):  # epochs
        for sample in samples:
            cache(sample.image)
    assert cache.computed == len(calls) == len(samples)
    assert cache.hits == 2 * len(samples) and len(cache) == len(samples)
    changed = samples[0].image.copy()
    changed[0, 0, 0] ^= 1  # one pixel differs: a new entry
    cache(changed)
    assert cache.computed == len(samples) + 1


def test_cache_files_are_read_back_by_a_new_cache(samples, tmp_path):
    first, _ = _counting_cache(tmp_path)
    written = [first(sample.image) for sample in samples]
    second, calls = _counting_cache(tmp_path)
    for sample, expected in zip(samples, written, strict=True):
        np.testing.assert_array_equal(second(sample.image), expected)
    assert calls == [] and second.hits == len(samples)
    other = ProposalCache(lambda image: np.zeros((0, 4), np.float32), "other settings", tmp_path)
    assert len(other(samples[0].image)) == 0  # settings are part of the key


def test_unnormalize_inverts_the_loaders_normalization_exactly():
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    pixels = np.random.default_rng(0).integers(0, 256, (2, 17, 23, 3), dtype=np.uint8)
    normalized = torch.from_numpy(normalize(pixels, mean, std))
    np.testing.assert_array_equal(unnormalize(normalized, mean, std), pixels)


def test_proposer_searches_each_images_valid_region(samples):
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    crops = [samples[0].image, samples[1].image[:80, :64]]
    tensors = [torch.from_numpy(normalize(crop[None], mean, std))[0] for crop in crops]
    batch = ImageBatch.from_tensors(tensors, size_divisibility=32)
    proposer = SelectiveSearchProposer(OPTIONS, mean, std)
    got = proposer(batch)
    for boxes, crop in zip(got, crops, strict=True):
        np.testing.assert_array_equal(boxes.numpy(), selective_search(crop, OPTIONS))
    proposer(batch)
    assert proposer.cache.computed == 2 and proposer.cache.hits == 2


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_the_runtime_searches_what_the_proposer_searches(samples, dtype):
    """The torch-free :func:`search_proposals` (an exported Fast R-CNN's runtime) on a
    letterboxed batch, float16 as a half-precision export takes it too, gives the proposer's
    boxes: both search the whole network input, padding included."""
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    pictures = [samples[0].image[:80, :48], samples[1].image[10:50]]
    batch, _ = preprocess(pictures, (64, 64), "letterbox", mean, std, dtype)
    settings = SearchSettings.of(OPTIONS)
    padded = np.concatenate([batch, np.zeros_like(batch[:1])])  # a static batch's padding image
    found = search_proposals(padded, len(pictures), mean, std, settings)
    expected = SelectiveSearchProposer(OPTIONS, mean, std)(torch.from_numpy(batch).float())
    assert len(found) == len(pictures)
    for boxes, want in zip(found, expected, strict=True):
        assert len(boxes) > 0
        np.testing.assert_array_equal(boxes, want.numpy())
