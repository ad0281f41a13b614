"""COCO reader/writer against hand-built files that follow the COCO format specification."""

import json

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from cvkit.data.formats.coco import coco_dict, default_images_dir, read_coco, write_coco
from cvkit.data.records import ClassMap, decode_segmentation
from cvkit.errors import DatasetError

H, W = 40, 50


def _rle_of_square() -> dict:
    mask = np.zeros((H, W), np.uint8)
    mask[5:15, 20:30] = 1
    rle = mask_utils.encode(np.asfortranarray(mask))
    return {"size": [H, W], "counts": rle["counts"].decode("ascii")}


def _spec_file(tmp_path):
    """Categories with 1-based, non-contiguous ids listed out of order; polygon, compressed RLE,
    uncompressed RLE (crowd), and an image without annotations."""
    data = {
        "images": [
            {"id": 10, "file_name": "a.jpg", "height": H, "width": W},
            {"id": 11, "file_name": "b.jpg", "height": H, "width": W},
        ],
        "categories": [
            {"id": 7, "name": "triangle"},
            {"id": 1, "name": "circle"},
            {"id": 3, "name": "rectangle"},
        ],
        "annotations": [
            {
                "id": 1,
                "image_id": 10,
                "category_id": 3,
                "bbox": [2.5, 4.0, 10.0, 6.0],
                "area": 60.0,
                "iscrowd": 0,
                "segmentation": [[2.5, 4, 12.5, 4, 12.5, 10, 2.5, 10]],
            },
            {
                "id": 2,
                "image_id": 10,
                "category_id": 7,
                "bbox": [20, 5, 10, 10],
                "area": 100,
                "iscrowd": 0,
                "segmentation": _rle_of_square(),
            },
            {
                "id": 3,
                "image_id": 10,
                "category_id": 1,
                "bbox": [0, 30, 4, 2],
                "area": 8,
                "iscrowd": 1,
                "segmentation": {"size": [H, W], "counts": [30, 2, H * W - 32]},
            },
        ],
    }
    path = tmp_path / "annotations" / "instances_val.json"
    path.parent.mkdir()
    path.write_text(json.dumps(data))
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.jpg", "b.jpg"):
        cv2.imwrite(str(images / name), np.zeros((H, W, 3), np.uint8))
    return path


def test_reader_follows_the_spec(tmp_path):
    path = _spec_file(tmp_path)
    records = read_coco(path)
    assert records.classes == ["circle", "rectangle", "triangle"]
    assert records.category_ids == [1, 3, 7]
    first, empty = records.samples
    assert first.path == tmp_path / "images" / "a.jpg"
    assert first.labels.tolist() == [1, 2, 0]
    assert np.allclose(first.boxes[0], [2.5, 4.0, 12.5, 10.0])
    assert first.iscrowd.tolist() == [False, False, True]
    assert len(empty) == 0 and empty.image_id == 11
    coco = COCO(str(path))
    masks = first.instance_masks()
    for ann, mask in zip(coco.loadAnns(coco.getAnnIds(imgIds=[10])), masks, strict=True):
        assert np.array_equal(coco.annToMask(ann), mask)
    assert masks[2].sum() == 2  # uncompressed RLE: 30 zeros then 2 ones (column-major)


def test_written_file_round_trips_ids_boxes_and_masks(tmp_path):
    records = read_coco(_spec_file(tmp_path))
    out = write_coco(records, tmp_path / "out" / "images", tmp_path / "out" / "x.json")
    again = read_coco(out)
    assert again.classes == records.classes and again.category_ids == records.category_ids
    for a, b in zip(records.samples, again.samples, strict=True):
        assert np.allclose(a.boxes, b.boxes) and np.array_equal(a.labels, b.labels)
        assert np.array_equal(a.iscrowd, b.iscrowd)
        assert np.array_equal(a.instance_masks(), b.instance_masks())
        assert (tmp_path / "out" / "images" / a.file_name).is_file()


def test_ground_truth_dict_area_is_mask_area(tmp_path):
    records = read_coco(_spec_file(tmp_path))
    gt = coco_dict(records, include_segmentation=False)
    assert [a["area"] for a in gt["annotations"]] == [60.0, 100.0, 2.0]
    assert [a["category_id"] for a in gt["annotations"]] == [3, 7, 1]
    assert [a["iscrowd"] for a in gt["annotations"]] == [0, 0, 1]
    assert "segmentation" not in gt["annotations"][0]


def test_polygon_decoding_matches_pycocotools():
    polygon = [[10, 10, 30, 12, 20, 35]]
    rle = mask_utils.merge(mask_utils.frPyObjects(polygon, H, W))
    assert np.array_equal(decode_segmentation(polygon, H, W), mask_utils.decode(rle))


def test_default_images_dir(tmp_path):
    path = _spec_file(tmp_path)
    assert default_images_dir(path) == tmp_path / "images"
    (tmp_path / "images" / "val").mkdir()
    assert default_images_dir(path) == tmp_path / "images" / "val"
    lone = tmp_path / "elsewhere" / "lone" / "x.json"
    lone.parent.mkdir(parents=True)
    assert default_images_dir(lone) == lone.parent


@pytest.mark.parametrize(
    ("content", "message"),
    [("{not json", "not valid JSON"), ('{"images": [], "categories": []}', "categories")],
)
def test_bad_files_name_the_problem(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(DatasetError, match=message):
        read_coco(path)
    with pytest.raises(DatasetError, match="not found"):
        read_coco(tmp_path / "missing.json")


def test_image_without_size_takes_the_upright_size_of_its_file(tmp_path):
    """A labelling tool's file without width/height: the size comes from the image header,
    after the EXIF orientation (6: stored 30 wide x 20 high, shown 20 x 30)."""
    from PIL import Image

    (tmp_path / "images").mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (30, 20)).save(tmp_path / "images" / "side.jpg", exif=exif)
    Image.new("RGB", (50, 40)).save(tmp_path / "images" / "plain.png")
    data = {
        "images": [
            {"id": 1, "file_name": "side.jpg"},
            {"id": 2, "file_name": "plain.png", "width": None, "height": None},
            {"id": 3, "file_name": "gone.png"},
        ],
        "categories": [{"id": 1, "name": "thing"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4]}],
    }
    path = tmp_path / "no_size.json"
    path.write_text(json.dumps(data))
    sizes = [(s.height, s.width) for s in read_coco(path).samples]
    assert sizes == [(30, 20), (40, 50), (0, 0)]


def test_image_entry_without_id_is_named(tmp_path):
    path = tmp_path / "no_id.json"
    data = {"images": [{"file_name": "a.jpg"}], "categories": [{"id": 1, "name": "x"}]}
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=r"images\[0\] needs 'id' and 'file_name'"):
        read_coco(path)


def test_json_saved_with_a_byte_order_mark_reads_as_without(tmp_path):
    path = _spec_file(tmp_path)
    plain = read_coco(path)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    marked = read_coco(path)
    assert marked.classes == plain.classes and marked.category_ids == plain.category_ids
    for a, b in zip(plain.samples, marked.samples, strict=True):
        np.testing.assert_array_equal(a.boxes, b.boxes)


@pytest.mark.parametrize(
    ("key", "field", "value", "where"),
    [
        ("images", "id", "img_10", r"images\[0\]\.id is 'img_10'"),
        ("annotations", "category_id", "7", r"annotations\[1\]\.category_id is '7'"),
        ("annotations", "image_id", 10.5, r"annotations\[1\]\.image_id is 10\.5"),
    ],
)
def test_ids_that_are_no_integers_are_named(tmp_path, key, field, value, where):
    """String ids from export scripts once raised a bare ValueError (image ids) or were
    called unknown although the categories list the same number (category ids)."""
    path = _spec_file(tmp_path)
    data = json.loads(path.read_text())
    data[key][0 if key == "images" else 1][field] = value
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=where + "; COCO ids are integers"):
        read_coco(path)


TRAIN_CATEGORIES = [
    {"id": 90, "name": "tooth brush"},
    {"id": 1, "name": "traffic light"},
    {"id": 3, "name": "fire hydrant"},
]


def _train_map():
    """Train's numbering of TRAIN_CATEGORIES, by hand: ascending ids 1, 3, 90 → labels 0, 1, 2."""
    return ClassMap(["traffic light", "fire hydrant", "tooth brush"], [1, 3, 90], "the train split")


def _val_file(tmp_path, categories):
    """A val file listing only ``categories``, with objects of ids 90, 1, 90 on two images."""
    data = {
        "images": [
            {"id": 5, "file_name": "a.jpg", "height": H, "width": W},
            {"id": 6, "file_name": "b.jpg", "height": H, "width": W},
        ],
        "categories": categories,
        "annotations": [
            {"id": 1, "image_id": 5, "category_id": 90, "bbox": [1, 2, 10, 10]},
            {"id": 2, "image_id": 5, "category_id": 1, "bbox": [20, 5, 8, 6]},
            {"id": 3, "image_id": 6, "category_id": 90, "bbox": [3, 3, 4, 4]},
        ],
    }
    path = tmp_path / "val.json"
    path.write_text(json.dumps(data))
    return path


def test_val_listing_some_train_categories_is_numbered_as_train(tmp_path):
    """A val file listing only [90, 1] (out of order) takes train's labels and category ids;
    its ground truth keeps each object's own category id."""
    path = _val_file(
        tmp_path, [{"id": 90, "name": "tooth brush"}, {"id": 1, "name": "traffic light"}]
    )
    own = read_coco(path, tmp_path)
    assert own.classes == ["traffic light", "tooth brush"] and own.category_ids == [1, 90]
    records = read_coco(path, tmp_path, reference=_train_map())
    assert records.classes == ["traffic light", "fire hydrant", "tooth brush"]
    assert records.category_ids == [1, 3, 90]
    assert [s.labels.tolist() for s in records.samples] == [[2, 0], [2]]
    truth = coco_dict(records)
    assert [a["category_id"] for a in truth["annotations"]] == [90, 1, 90]
    assert [c["id"] for c in truth["categories"]] == [1, 3, 90]


def test_val_listing_every_train_category_reads_as_without_reference(tmp_path):
    path = _val_file(tmp_path, TRAIN_CATEGORIES)
    plain, numbered = read_coco(path, tmp_path), read_coco(path, tmp_path, reference=_train_map())
    assert (plain.classes, plain.category_ids) == (numbered.classes, numbered.category_ids)
    for a, b in zip(plain.samples, numbered.samples, strict=True):
        assert a.labels.tolist() == b.labels.tolist()


@pytest.mark.parametrize(
    "category, message",
    [
        (
            {"id": 7, "name": "kite"},
            "category 7 ('kite') is not a category of the train split, whose categories are "
            "1 'traffic light', 3 'fire hydrant', 90 'tooth brush'",
        ),
        (
            {"id": 90, "name": "toothbrush"},
            "category 90 is named 'toothbrush' here but 'tooth brush' in the train split",
        ),
    ],
)
def test_val_category_that_train_lacks_is_refused(tmp_path, category, message):
    """An id train lacks, or train's id under another name: the model cannot predict it."""
    path = _val_file(tmp_path, [{"id": 1, "name": "traffic light"}, category])
    with pytest.raises(DatasetError) as error:
        read_coco(path, tmp_path, reference=_train_map())
    assert str(error.value).startswith(str(path))
    assert message in str(error.value) and "the model cannot predict it" in str(error.value)
