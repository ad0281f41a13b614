"""Upload decoding against cvkit.images.read_image, and mask encodings against pycocotools."""

from __future__ import annotations

import base64

import cv2
import numpy as np
import pytest
from pycocotools import mask as coco_mask

from cvkit.errors import ImageError
from cvkit.images import read_image
from cvkit.runtime.results import Detections, Segmentation
from cvkit.serve.encoding import png_base64, result_json, rle_encode
from cvkit.serve.uploads import decode_image


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".bmp", ".webp", ".tif"])
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_decoded_upload_equals_the_file_read_by_the_runtime(tmp_path, suffix, channels):
    if channels == 4 and suffix in (".jpg", ".bmp"):
        pytest.skip("no alpha channel in this format")
    image = np.random.default_rng(channels).integers(0, 256, (20, 30, channels), np.uint8)
    path = tmp_path / f"image{suffix}"
    assert cv2.imwrite(str(path), image)
    np.testing.assert_array_equal(decode_image(path.read_bytes()), read_image(path))


def test_bad_bytes_are_rejected_with_the_reason():
    jpeg = cv2.imencode(".jpg", np.full((40, 40, 3), 90, np.uint8))[1].tobytes()
    cases = {
        b"": "empty body",
        b"<html>": "not an image",
        jpeg[: len(jpeg) // 3]: "no end-of-image marker",
        jpeg[:4] + b"\x00" * 40 + jpeg[-2:]: "OpenCV could not decode",
    }
    for data, reason in cases.items():
        with pytest.raises(ImageError, match=reason):
            decode_image(data)


@pytest.mark.parametrize("seed", range(4))
def test_rle_decodes_with_pycocotools(seed):
    rng = np.random.default_rng(seed)
    mask = rng.random((7 + seed, 5 + 2 * seed)) < 0.4
    mask[0, 0] = bool(seed % 2)
    encoded = rle_encode(mask)
    compressed = coco_mask.frPyObjects(encoded, *encoded["size"])
    np.testing.assert_array_equal(coco_mask.decode(compressed).astype(bool), mask)


def test_result_json_adds_masks():
    masks = np.zeros((2, 4, 6), bool)
    masks[0, 1:3, 2:5] = True
    detections = Detections(
        np.zeros((2, 4), np.float32),
        np.array([0.9, 0.5], np.float32),
        np.array([0, 1]),
        ["a", "b"],
        masks=masks,
    )
    body = result_json(detections)
    assert body["masks"] == [rle_encode(m) for m in masks] and body["names"] == ["a", "b"]
    labels = np.array([[0, 1, 2], [2, 2, 0]])
    segmentation = Segmentation(labels, ["bg", "x", "y"])
    png = base64.b64decode(result_json(segmentation)["mask"]["data"])
    np.testing.assert_array_equal(cv2.imdecode(np.frombuffer(png, np.uint8), -1), labels)
    assert png_base64(labels) == result_json(segmentation)["mask"]["data"]
    rle = result_json(segmentation, "rle")["mask"]["classes"]
    assert rle["y"] == rle_encode(labels == 2) and set(rle) == {"bg", "x", "y"}
