"""YOLO reader/writer against hand-built files following the Ultralytics format."""

import cv2
import numpy as np
import pytest
import yaml

from cvkit.data.formats.yolo import label_path, read_yolo, write_yolo
from cvkit.errors import DatasetError


def _dataset(tmp_path, names):
    """Three images: labels with a box row and a polygon row, an empty label file, none."""
    images = tmp_path / "ds" / "images" / "val"
    labels = tmp_path / "ds" / "labels" / "val"
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    cv2.imwrite(str(images / "a.png"), np.zeros((50, 100, 3), np.uint8))  # w=100, h=50
    cv2.imwrite(str(images / "b.jpg"), np.zeros((30, 30, 3), np.uint8))
    cv2.imwrite(str(images / "c.jpg"), np.zeros((40, 20, 3), np.uint8))
    (labels / "a.txt").write_text("1 0.5 0.5 0.2 0.4\n0 0.1 0.1 0.3 0.1 0.2 0.5\n")
    (labels / "b.txt").write_text("")
    data = {"path": "ds", "train": "images/val", "val": "images/val", "names": names}
    path = tmp_path / "data.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("names", [["cat", "dog"], {0: "cat", 1: "dog"}])
def test_reader_follows_the_format(tmp_path, names):
    records = read_yolo(_dataset(tmp_path, names), "val")
    assert records.classes == ["cat", "dog"] and records.category_ids is None
    a, b, c = records.samples
    assert (a.height, a.width) == (50, 100)
    assert np.allclose(a.boxes, [[40, 15, 60, 35], [10, 5, 30, 25]], atol=1e-4)
    assert a.labels.tolist() == [1, 0]
    assert a.segmentations[0] == [] and np.allclose(a.segmentations[1][0], [10, 5, 30, 5, 20, 25])
    assert len(b) == 0 and len(c) == 0 and c.file_name == "c.jpg"


def test_label_path_replaces_the_last_images_folder(tmp_path):
    path = tmp_path / "images" / "x" / "images" / "train" / "a.jpg"
    assert label_path(path) == tmp_path / "images" / "x" / "labels" / "train" / "a.txt"


def test_no_split_reads_every_listed_image_once(tmp_path):
    path = _dataset(tmp_path, ["cat", "dog"])  # train and val list the same folder
    every = read_yolo(path, None)
    assert [s.file_name for s in every.samples] == ["val/a.png", "val/b.jpg", "val/c.jpg"]
    assert [s.labels.tolist() for s in every.samples] == [
        s.labels.tolist() for s in read_yolo(path, "val").samples
    ]
    empty = tmp_path / "empty.yaml"
    empty.write_text("names: [a]\n")
    with pytest.raises(DatasetError, match="lists no split"):
        read_yolo(empty, None)


def test_malformed_rows_and_missing_splits_are_named(tmp_path):
    path = _dataset(tmp_path, ["cat", "dog"])
    (tmp_path / "ds" / "labels" / "val" / "b.txt").write_text("0 0.5 0.5\n")
    with pytest.raises(DatasetError, match=r"b.txt:1: expected"):
        read_yolo(path, "val")
    with pytest.raises(DatasetError, match="no 'test' split"):
        read_yolo(path, "test")
    bad = tmp_path / "bad.yaml"
    bad.write_text("names: {0: a, 2: b}\ntrain: x\n")
    with pytest.raises(DatasetError, match=r"must be 0\.\.1"):
        read_yolo(bad)


def test_writer_round_trip_and_keeps_other_splits(tmp_path):
    records = read_yolo(_dataset(tmp_path, ["cat", "dog"]), "val")
    out = tmp_path / "out"
    write_yolo(records, out, "train")
    yaml_path = write_yolo(records, out, "val")
    data = yaml.safe_load(yaml_path.read_text())
    assert data["train"] == "images/train" and data["val"] == "images/val"
    assert data["names"] == {0: "cat", 1: "dog"}
    again = read_yolo(yaml_path, "val")
    for x, y in zip(records.samples, again.samples, strict=True):
        assert np.allclose(x.boxes, y.boxes, atol=1e-3) and np.array_equal(x.labels, y.labels)


def _with_bom_and_crlf(path):
    """Rewrite a text file as Windows tools save it: a UTF-8 byte-order mark, CRLF lines."""
    text = path.read_text(encoding="utf-8").replace("\n", "\r\n")
    path.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))


def test_files_saved_with_a_byte_order_mark_read_as_without(tmp_path):
    """Notepad and PowerShell save UTF-8 with a byte-order mark: a label file written so once
    failed with "not numbers: '\\ufeff1 0.5 ...'"."""
    plain = read_yolo(_dataset(tmp_path / "plain", ["cat", "dog"]), "val")
    marked_yaml = _dataset(tmp_path / "marked", ["cat", "dog"])
    _with_bom_and_crlf(marked_yaml)
    _with_bom_and_crlf(tmp_path / "marked" / "ds" / "labels" / "val" / "a.txt")
    listing = tmp_path / "marked" / "ds" / "val.txt"
    listing.write_text("images/val/a.png\nimages/val/b.jpg\nimages/val/c.jpg\n", encoding="utf-8")
    _with_bom_and_crlf(listing)
    data = yaml.safe_load(marked_yaml.read_text(encoding="utf-8-sig"))
    marked_yaml.write_text(yaml.safe_dump({**data, "val": "val.txt"}), encoding="utf-8")
    _with_bom_and_crlf(marked_yaml)
    marked = read_yolo(marked_yaml, "val")
    assert marked.classes == plain.classes == ["cat", "dog"]
    for a, b in zip(plain.samples, marked.samples, strict=True):
        assert a.file_name == b.file_name and a.labels.tolist() == b.labels.tolist()
        np.testing.assert_array_equal(a.boxes, b.boxes)
