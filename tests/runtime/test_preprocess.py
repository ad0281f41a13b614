"""Numpy pre-processing: letterbox/stretch geometry, normalization, image reading."""

import cv2
import numpy as np
import pytest

from cvkit.images import read_image
from cvkit.runtime import InputError
from cvkit.runtime.metadata import IMAGENET_MEAN, IMAGENET_STD
from cvkit.runtime.preprocess import letterbox, normalize, preprocess, stretch


def test_letterbox_keeps_aspect_and_pads_bottom_right_with_zeros():
    image = np.full((50, 100, 3), 200, np.uint8)
    canvas, geometry = letterbox(image, (64, 64))
    assert canvas.shape == (64, 64, 3)
    assert (canvas[:32] == 200).all() and (canvas[32:] == 0).all()
    assert geometry.scale == (0.64, 0.64) and geometry.offset == (0.0, 0.0)
    assert geometry.orig_size == (50, 100)


def test_letterbox_of_a_tall_image_pads_the_right():
    canvas, geometry = letterbox(np.full((90, 30, 3), 7, np.uint8), (60, 60))
    assert (canvas[:, :20] == 7).all() and (canvas[:, 20:] == 0).all()
    assert geometry.scale == pytest.approx((2 / 3, 2 / 3))


def test_stretch_geometry():
    canvas, geometry = stretch(np.zeros((50, 100, 3), np.uint8), (64, 32))
    assert canvas.shape == (64, 32, 3)
    assert geometry.scale == (0.32, 1.28)


def test_normalize_matches_hand_computed_values():
    images = np.array([0, 255, 51], np.uint8).reshape(1, 1, 3, 1).repeat(3, axis=3)
    batch = normalize(images, IMAGENET_MEAN, IMAGENET_STD)
    assert batch.shape == (1, 3, 1, 3) and batch.dtype == np.float32
    for pixel, value in enumerate([0, 255, 51]):
        expected = (value / 255 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
        np.testing.assert_allclose(batch[0, :, 0, pixel], expected, rtol=1e-6, atol=1e-6)


def test_preprocess_batches_images_of_different_sizes():
    images = [np.zeros((10, 20, 3), np.uint8), np.zeros((40, 30, 3), np.uint8)]
    batch, geometries = preprocess(images, (32, 32), "letterbox", IMAGENET_MEAN, IMAGENET_STD)
    assert batch.shape == (2, 3, 32, 32)
    assert [g.scale[0] for g in geometries] == [1.6, 0.8]


def test_read_image_from_a_path_is_rgb(tmp_path):
    bgr = np.zeros((4, 5, 3), np.uint8)
    bgr[..., 2] = 255  # red in OpenCV's BGR order
    cv2.imwrite(str(tmp_path / "red.png"), bgr)
    rgb = read_image(tmp_path / "red.png")
    assert rgb.shape == (4, 5, 3) and (rgb[..., 0] == 255).all() and (rgb[..., 1:] == 0).all()


def test_read_image_expands_grayscale():
    assert read_image(np.full((3, 4), 9, np.uint8)).shape == (3, 4, 3)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (np.zeros((4, 4, 3), np.float32), "uint8 RGB .* got dtype float32"),
        (np.zeros((4, 4, 2), np.uint8), r"got shape \(4, 4, 2\)"),
        (np.zeros((0, 4, 3), np.uint8), r"got shape \(0, 4, 3\)"),
        (123, "got int"),
    ],
)
def test_bad_image_arrays_are_clear_errors(source, message):
    with pytest.raises(InputError, match=message):
        read_image(source)


def test_unreadable_image_file_is_named(tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(InputError, match=r"broken\.jpg: not a readable image"):
        read_image(tmp_path / "broken.jpg")


@pytest.mark.parametrize("policy", ["letterbox", "resize"])
def test_matches_the_training_eval_preset_exactly(policy):
    """Reference: cvkit.data's eval transform + collate, which trained and evaluated the model."""
    torch = pytest.importorskip("torch")
    from cvkit.data.loader import Collate
    from cvkit.data.transforms import SampleTransform

    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, shape, np.uint8) for shape in [(37, 91, 3), (120, 64, 3)]]
    transform = SampleTransform(None, 64, policy)
    samples = [transform(image, np.zeros((0, 4), np.float32), np.zeros(0)) for image in images]
    collate = Collate(IMAGENET_MEAN, IMAGENET_STD)
    expected, _ = collate([(torch.from_numpy(s.image).permute(2, 0, 1), {}) for s in samples])
    batch, geometries = preprocess(images, (64, 64), policy, IMAGENET_MEAN, IMAGENET_STD)
    np.testing.assert_array_equal(batch, expected.numpy())
    assert geometries == [s.geometry for s in samples]


@pytest.mark.parametrize("channels", [None, 1, 3, 4])
def test_files_and_arrays_of_every_channel_layout_read_alike(tmp_path, channels):
    rng = np.random.default_rng(channels or 0)
    shape = (6, 7) if channels is None else (6, 7, channels)
    array = rng.integers(0, 256, shape, np.uint8)
    path = tmp_path / "image.png"
    # PNG stores what it is given: gray, BGR or BGRA (OpenCV's channel order)
    on_disk = (
        array
        if channels in (None, 1)
        else cv2.cvtColor(array, cv2.COLOR_RGB2BGR if channels == 3 else cv2.COLOR_RGBA2BGRA)
    )
    assert cv2.imwrite(str(path), on_disk)
    from_file, from_array = read_image(path), read_image(array)
    assert from_file.shape == from_array.shape == (6, 7, 3)
    np.testing.assert_array_equal(from_file, from_array)
    gray = array.reshape(6, 7, -1)[..., :1]
    expected = np.repeat(gray, 3, axis=2) if channels in (None, 1) else array[..., :3]
    np.testing.assert_array_equal(from_array, expected)


def test_a_missing_file_is_both_a_dataset_and_an_input_error(tmp_path):
    """Datasets and predictors read with the same function; each caller catches its own kind."""
    from cvkit.errors import DatasetError

    for kind in (DatasetError, InputError):
        with pytest.raises(kind, match=r"gone\.png: image file is missing"):
            read_image(tmp_path / "gone.png")
