"""Classification datasets: object crops and ImageFolder samples, normalized with the given
mean/std; an ImageFolder's evaluation sample is the exported runtime's input, byte for byte."""

import cv2
import numpy as np
import pytest
import torch

from cvkit.data.classification import ImageFolderDataset, ObjectCropDataset, crop_square
from cvkit.data.records import Records, Sample
from cvkit.errors import DatasetError
from cvkit.images import read_image
from cvkit.runtime.preprocess import preprocess

# Not ImageNet's: a dataset that ignored the given values would fail the checks below.
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def white_square_records() -> Records:
    """One 40x60 image: a white 10x10 square (class 1) and a grey bar on the left border (0)."""
    image = np.zeros((40, 60, 3), np.uint8)
    image[10:20, 30:40] = 255
    image[25:35, 0:5] = 128
    sample = Sample(
        image_id=1,
        file_name="a.png",
        height=40,
        width=60,
        image=image,
        boxes=np.array([[30, 10, 40, 20], [0, 25, 5, 35]]),
        labels=np.array([1, 0]),
    )
    return Records([sample], ["bar", "square"])


def test_crop_square_maps_the_box_onto_the_output():
    records = white_square_records()
    crop = crop_square(records.samples[0].image, [30, 10, 40, 20], 20)
    assert crop.shape == (20, 20, 3)
    assert crop[1:-1, 1:-1].min() == 255  # the box fills the crop
    padded = crop_square(records.samples[0].image, [-10, 25, 5, 35], 15)
    assert padded[:, :9].max() == 0  # outside the image: zero padding
    assert padded[4:10, 11:14].min() == 128


def test_object_crops_are_labelled_tensors_normalized_with_the_given_mean_std():
    dataset = ObjectCropDataset(
        white_square_records(), 16, MEAN, STD, margin=0.0, skip_truncated=False
    )
    assert len(dataset) == 2 and dataset.classes == ["bar", "square"]
    image, label = dataset[0]
    assert label == 1 and image.shape == (3, 16, 16) and image.dtype == torch.float32
    white = (1 - torch.tensor(MEAN)) / torch.tensor(STD)
    torch.testing.assert_close(image[:, 8, 8], white)
    assert dataset.labels == [1, 0]
    with pytest.raises(DatasetError, match="no objects"):
        ObjectCropDataset(Records([], ["x"]), 16, MEAN, STD)


def test_truncated_objects_can_be_left_out():
    records = white_square_records()
    assert len(ObjectCropDataset(records, 16, MEAN, STD, skip_truncated=False)) == 2
    assert ObjectCropDataset(records, 16, MEAN, STD).labels == [1]  # the bar touches the border


def test_image_folder_reads_classes_from_subfolders(tmp_path):
    for name, value in (("dog", 200), ("cat", 50)):
        (tmp_path / name).mkdir()
        for index in range(2):
            cv2.imwrite(
                str(tmp_path / name / f"{index}.png"), np.full((30, 50, 3), value, np.uint8)
            )
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    dataset = ImageFolderDataset(tmp_path, 24, MEAN, STD, resize="resize")
    assert dataset.classes == ["cat", "dog"] and len(dataset) == 4
    image, label = dataset[3]
    assert label == 1 and image.shape == (3, 24, 24)
    expected = (200 / 255 - torch.tensor(MEAN)) / torch.tensor(STD)
    torch.testing.assert_close(image.mean(dim=(1, 2)), expected)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="empty"):
        ImageFolderDataset(tmp_path, 24, MEAN, STD)
    with pytest.raises(DatasetError, match="not a folder"):
        ImageFolderDataset(tmp_path / "missing", 24, MEAN, STD)


@pytest.mark.parametrize("policy", ["letterbox", "resize"])
def test_image_folder_eval_sample_is_the_runtime_input(tmp_path, policy):
    """Reference: the exported runtime's pre-processing of the same file."""
    rng = np.random.default_rng(0)
    (tmp_path / "a").mkdir()
    for index, shape in enumerate([(37, 91, 3), (120, 64, 3), (50, 50, 3)]):
        cv2.imwrite(str(tmp_path / "a" / f"{index}.png"), rng.integers(0, 256, shape, np.uint8))
    dataset = ImageFolderDataset(tmp_path, 48, MEAN, STD, resize=policy)
    for index, (path, _) in enumerate(dataset.files):
        expected, _ = preprocess([read_image(path)], (48, 48), policy, MEAN, STD)
        np.testing.assert_array_equal(dataset[index][0].numpy(), expected[0])


def test_image_folder_training_samples_vary_and_keep_the_input_size(tmp_path):
    (tmp_path / "a").mkdir()
    image = np.random.default_rng(1).integers(0, 256, (40, 70, 3), np.uint8)
    cv2.imwrite(str(tmp_path / "a" / "0.png"), image)
    dataset = ImageFolderDataset(tmp_path, 32, MEAN, STD, train=True)
    torch.manual_seed(0)
    samples = [dataset[0][0] for _ in range(4)]
    assert all(sample.shape == (3, 32, 32) for sample in samples)
    assert not all(torch.equal(samples[0], sample) for sample in samples[1:])
