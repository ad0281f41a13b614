"""PaddedCollate: images of two non-square sizes in one batch are each normalized exactly as
alone (and as the runtime's numpy normalization), padded bottom/right with zeros to the
model's size divisibility."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from cvkit.data.collate import PaddedCollate
from cvkit.data.loader import Collate
from cvkit.geometry import normalize

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _images():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((37, 70), (52, 23))]


def _sample(image, index):
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))), {"id": index}


def test_two_sizes_in_one_batch_equal_each_alone_and_the_numpy_normalization():
    images = _images()
    collate = PaddedCollate(MEAN, STD, size_divisibility=32)
    loader = DataLoader(
        [_sample(image, i) for i, image in enumerate(images)], 2, collate_fn=collate
    )
    batch, targets = next(iter(loader))
    assert targets == [{"id": 0}, {"id": 1}]
    assert batch.tensor.shape == (2, 3, 64, 96) and batch.tensor.dtype == torch.float32
    assert batch.image_sizes == [(37, 70), (52, 23)]
    for slot, (image, (height, width)) in enumerate(zip(images, batch.image_sizes, strict=True)):
        alone, _ = collate([_sample(image, slot)])
        want = torch.from_numpy(normalize(image[None], MEAN, STD))[0]
        assert torch.equal(batch.tensor[slot, :, :height, :width], want)
        assert torch.equal(alone.tensor[0, :, :height, :width], want)
        padding = torch.ones(64, 96, dtype=torch.bool)
        padding[:height, :width] = False
        assert (batch.tensor[slot][:, padding] == 0).all()


def test_equal_square_images_give_the_stacking_collates_tensor():
    rng = np.random.default_rng(1)
    samples = [_sample(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), i) for i in range(3)]
    padded, _ = PaddedCollate(MEAN, STD, size_divisibility=16)(samples)
    stacked, _ = Collate(MEAN, STD)(samples)
    assert torch.equal(padded.tensor, stacked) and padded.image_sizes == [(32, 32)] * 3


def test_bad_divisibility_and_images_are_named():
    with pytest.raises(ValueError, match="size_divisibility must be >= 1, got 0"):
        PaddedCollate(MEAN, STD, size_divisibility=0)
    good = torch.zeros(3, 8, 8, dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"image 1 of the batch is \(8, 8\), expected \[3, h, w\]"):
        PaddedCollate(MEAN, STD)([(good, None), (torch.zeros(8, 8, dtype=torch.uint8), None)])
