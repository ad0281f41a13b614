"""Compact instance masks (:class:`cvkit.structures.CroppedMasks`): the same masks as the dense
``uint8 [N, H, W]`` ones, through the training transform, and bit-identical mask targets."""

from pathlib import Path

import numpy as np
import torch
from torchvision.models.detection import roi_heads as tv_roi_heads

from cvkit.config import load_config
from cvkit.data.transforms import build_transform
from cvkit.models.detection.mask_heads import mask_loss, project_masks_on_boxes
from cvkit.structures import CroppedMasks

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "mask_rcnn.yaml"


def _ellipses(count: int, height: int, width: int, seed: int) -> np.ndarray:
    """``uint8 [count, H, W]`` ellipses, some cut by the image edges, one mask empty."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[:height, :width]
    masks = []
    for _ in range(count):
        cy, cx = rng.uniform(-10, [height + 10, width + 10])
        ry, rx = rng.uniform(3, 30, 2)
        masks.append(((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 <= 1)
    masks[1][:] = False
    return np.stack(masks).astype(np.uint8)


def test_cropped_masks_rebuild_the_dense_masks_and_index_like_them():
    dense = _ellipses(12, 70, 90, seed=0)
    compact = CroppedMasks.from_dense(dense)
    assert len(compact) == 12 and compact.image_size == (70, 90)
    assert compact.shape == dense.shape
    np.testing.assert_array_equal(compact.to_dense().numpy(), dense)
    # regions are the tightest rectangles around the pixels (empty for the empty mask), and
    # the buffer holds exactly their pixels
    regions = _tight_regions(dense)
    assert compact.regions.tolist() == [list(region) for region in regions]
    assert regions[1] == (0, 0, 0, 0)
    assert compact.data.numel() == sum((x2 - x1) * (y2 - y1) for x1, y1, x2, y2 in regions)
    keep = np.array([True, False, True] * 4)
    np.testing.assert_array_equal(compact[keep].to_dense().numpy(), dense[keep])
    order = np.array([5, 0, 11, 5])
    np.testing.assert_array_equal(compact[order].to_dense().numpy(), dense[order])
    np.testing.assert_array_equal(compact.to_dense([3, 1]).numpy(), dense[[3, 1]])
    assert len(compact[np.zeros(12, bool)]) == 0


def _tight_regions(dense: np.ndarray) -> list[tuple[int, int, int, int]]:
    """``(x1, y1, x2, y2)`` around each mask's pixels, end exclusive; zeros when empty."""
    regions = []
    for mask in dense:
        rows, cols = np.nonzero(mask)
        if rows.size:
            regions.append(
                (int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1)
            )
        else:
            regions.append((0, 0, 0, 0))
    return regions


def test_training_transform_gives_the_same_masks_compact_or_dense():
    config = load_config(CONFIG, ["data.image_size=96"])
    dense_transform = build_transform(config.data, "detect", train=True, seed=0)
    compact_transform = build_transform(config.data, "detect", train=True, compact_masks=True)
    rng = np.random.default_rng(1)
    for seed in range(6):
        masks = _ellipses(8, 80, 120, seed=seed + 10)[[0, *range(2, 8)]]
        boxes = np.array(_tight_regions(masks), np.float32)
        image = rng.integers(0, 256, (80, 120, 3), dtype=np.uint8)
        labels = np.arange(len(masks)) % 3
        outputs = []
        for transform in (dense_transform, compact_transform):
            transform.reseed(seed)
            outputs.append(transform(image, boxes, labels, masks))
        dense, compact = outputs
        assert isinstance(compact.masks, CroppedMasks) and compact.masks.image_size == (96, 96)
        np.testing.assert_array_equal(compact.masks.to_dense().numpy(), dense.masks)
        np.testing.assert_array_equal(compact.boxes, dense.boxes)
        np.testing.assert_array_equal(compact.image, dense.image)
        assert compact.masks.nbytes < dense.masks.nbytes / 4


def test_mask_targets_and_loss_of_compact_masks_are_bit_identical_to_dense():
    generator = torch.Generator().manual_seed(0)
    dense = torch.from_numpy(_ellipses(10, 64, 80, seed=3))
    compact = CroppedMasks.from_dense(dense)
    xy = torch.rand(40, 2, generator=generator) * torch.tensor([80.0, 64.0]) - 8
    boxes = torch.cat([xy, xy + 0.5 + torch.rand(40, 2, generator=generator) * 40], 1)
    matched = torch.randint(0, 10, (40,), generator=generator)
    want = tv_roi_heads.project_masks_on_boxes(dense, boxes, matched, 28)
    got = project_masks_on_boxes(compact, boxes, matched, 28)
    assert want.sum() > 100
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(
        project_masks_on_boxes(dense, boxes, matched, 28), got, rtol=0, atol=0
    )
    logits = torch.randn(40, 4, 28, 28, generator=generator)
    labels = [torch.arange(10) % 3]
    loss_dense = mask_loss(logits, [boxes], [dense], labels, [matched])
    loss_compact = mask_loss(logits, [boxes], [compact], labels, [matched])
    assert torch.equal(loss_dense, loss_compact)
