"""The dataset check finds each planted defect, names its file, and sets the exit code."""

import json
import shutil

import cv2
import numpy as np
import pytest
import yaml

from cvkit.cli import main
from cvkit.data.check import check_dataset, coco_json_problems, validate_for_training
from cvkit.data.synthetic import annotation_path


@pytest.fixture
def broken_coco(tiny_synthetic, tmp_path):
    """A copy of the tiny synthetic train split with one planted defect per image."""
    root = tmp_path / "coco"
    shutil.copytree(tiny_synthetic / "images" / "train", root / "images")
    data = json.loads(annotation_path(tiny_synthetic, "train").read_text())
    names = [image["file_name"] for image in data["images"]]
    (root / "images" / names[0]).write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    (root / "images" / names[1]).unlink()
    first_ann = {image["id"]: None for image in data["images"]}
    for ann in data["annotations"]:
        if first_ann[ann["image_id"]] is None:
            first_ann[ann["image_id"]] = ann
    ids = [image["id"] for image in data["images"]]
    first_ann[ids[2]]["bbox"][2] = -5.0  # negative width
    first_ann[ids[3]]["category_id"] = 9  # not a category
    first_ann[ids[4]]["category_id"] = 0  # 0-based id in a 1-based file
    data["images"][5]["width"] += 7  # annotation size differs from the file
    data["images"][7]["id"] = data["images"][6]["id"]  # duplicate image id
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] != ids[5]]
    path = root / "instances.json"
    path.write_text(json.dumps(data))
    return path, names


def test_every_planted_defect_is_found_and_named(broken_coco):
    path, names = broken_coco
    report, _ = check_dataset(path)
    found = {(p.kind, p.file.rsplit("/", 1)[-1].split(" ")[0]) for p in report.errors}
    assert ("unreadable image", names[0]) in found
    assert ("missing image file", names[1]) in found
    assert ("box has zero or negative area", names[2]) in found
    assert ("unknown category id", names[3]) in found
    assert ("unknown category id", names[4]) in found
    assert ("image size differs from the annotation", names[5]) in found
    assert ("duplicate image id", names[7]) in found
    text = report.format()
    assert "0-based ids in annotations, 1-based categories?" in text
    assert "category_id 9 not in categories [1, 2, 3]" in text
    assert ("image without objects", names[5]) in {(p.kind, p.file) for p in report.warnings}


def test_cli_exit_codes_and_show(broken_coco, tiny_synthetic, tmp_path, capsys):
    path, _ = broken_coco
    assert main(["data", "check", str(path)]) == 1
    assert "missing image file" in capsys.readouterr().out
    clean = annotation_path(tiny_synthetic, "val")
    shown = tmp_path / "shown"
    assert main(["data", "check", str(clean), "--show", "2", "--show-dir", str(shown)]) == 0
    pngs = sorted(shown.iterdir())
    assert len(pngs) == 2 and cv2.imread(str(pngs[0])).shape == (64, 64, 3)


def test_yolo_labels_out_of_range_and_box_outside(tmp_path):
    images, labels = tmp_path / "images" / "train", tmp_path / "labels" / "train"
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    for name in ("a", "b"):
        cv2.imwrite(str(images / f"{name}.png"), np.zeros((20, 20, 3), np.uint8))
    (labels / "a.txt").write_text("3 0.5 0.5 0.2 0.2\n")
    (labels / "b.txt").write_text("0 1.2 0.5 0.2 0.2\n0 0.9 0.5 0.4 0.2\n")
    path = tmp_path / "data.yaml"
    path.write_text(yaml.safe_dump({"path": ".", "train": "images/train", "names": ["x", "y"]}))
    report, _ = check_dataset(path, split="train")
    kinds = {(p.level, p.kind, p.file) for p in report.problems}
    assert ("error", "label outside the class list", "a.png") in kinds
    assert ("error", "box outside the image", "b.png") in kinds
    assert ("warning", "box out of bounds (clipped)", "b.png") in kinds


def test_warnings_alone_exit_zero(tmp_path, tiny_synthetic):
    data = json.loads(annotation_path(tiny_synthetic, "val").read_text())
    for category in data["categories"]:
        category["id"] *= 2  # 2, 4, 6: not contiguous, but consistent
    for ann in data["annotations"]:
        ann["category_id"] *= 2
    path = tiny_synthetic / "annotations" / "noncontiguous_val.json"
    path.write_text(json.dumps(data))
    try:
        report, records = check_dataset(path, tiny_synthetic / "images" / "val")
        assert not report.errors and records.category_ids == [2, 4, 6]
        assert "category ids not contiguous" in report.kinds()
        images = str(tiny_synthetic / "images" / "val")
        assert main(["data", "check", str(path), "--images", images]) == 0
    finally:
        path.unlink()


def test_a_cut_off_jpeg_is_named_although_opencv_decodes_it(tmp_path, tiny_synthetic, capsys):
    root = tmp_path / "coco"
    shutil.copytree(tiny_synthetic / "images" / "val", root / "images")
    data = json.loads(annotation_path(tiny_synthetic, "val").read_text())
    image = data["images"][0]
    height, width = image["height"], image["width"]
    noise = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    image["file_name"] = "cut.jpg"
    path = root / "images" / "cut.jpg"
    assert cv2.imwrite(str(path), noise)
    payload = path.read_bytes()
    path.write_bytes(payload[: len(payload) // 3])
    # the failure mode: OpenCV returns a full-size image from the first third of the data
    assert cv2.imread(str(path)).shape == (height, width, 3)
    annotations = root / "instances.json"
    annotations.write_text(json.dumps(data))
    report, _ = check_dataset(annotations)
    assert [(p.kind, p.file) for p in report.errors] == [("unreadable image", str(path))]
    assert main(["data", "check", str(annotations)]) == 1
    assert "cut.jpg" in capsys.readouterr().out


def test_a_coco_file_whose_image_folder_is_not_found_names_the_folder(tmp_path, tiny_synthetic):
    """``my_val.json`` beside an ``images/`` folder holding ``train/`` and ``val/``: the
    default folder is ``images/`` itself, where no image is; one problem says so (besides
    each missing file) and names the options that set the folder. One missing image does
    not raise it."""
    data = json.loads(annotation_path(tiny_synthetic, "val").read_text())
    path = tmp_path / "annotations" / "my_val.json"
    path.parent.mkdir()
    path.write_text(json.dumps(data))
    shutil.copytree(tiny_synthetic / "images" / "val", tmp_path / "images" / "val")
    report, records = check_dataset(path)
    assert report.kinds()["missing image file"] == len(records) > 1
    (problem,) = [p for p in report.errors if p.kind == "no image found"]
    assert problem.file == str(tmp_path / "images") and problem.image_id is None
    assert "data.val.images" in problem.detail and "--images" in problem.detail
    report, _ = check_dataset(path, tmp_path / "images" / "val")
    assert not report.errors
    (tmp_path / "images" / "val" / records.samples[0].file_name).unlink()
    report, _ = check_dataset(path, tmp_path / "images" / "val")
    assert (
        report.kinds().get("no image found") is None and report.kinds()["missing image file"] == 1
    )


def test_degenerate_coco_polygons_are_warnings_naming_annotation_and_length(tmp_path, capsys):
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((40, 40, 3), np.uint8))
    square = [5.0, 5.0, 30.0, 5.0, 30.0, 30.0, 5.0, 30.0]
    annotations = {
        7: [[5.0, 5.0, 30.0, 30.0]],  # 2 points: the only polygon, so the mask is empty
        8: [square, [1.0, 1.0]],  # one good polygon and a 1-point one
        9: [[5.0, 5.0, 30.0, 5.0, 30.0, 30.0, 5.0]],  # 7 numbers: a y is missing
        10: [square],
    }
    data = {
        "images": [{"id": 3, "file_name": "a.png", "height": 40, "width": 40}],
        "categories": [{"id": 1, "name": "thing"}],
        "annotations": [
            {
                "id": i,
                "image_id": 3,
                "category_id": 1,
                "bbox": [5, 5, 25, 25],
                "iscrowd": 0,
                "area": 625.0,
                "segmentation": polygons,
            }
            for i, polygons in annotations.items()
        ],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    report, records = check_dataset(path, tmp_path)
    assert not report.errors
    found = {(p.kind, p.file, p.detail.split(":")[0]) for p in report.warnings}
    assert found == {
        (
            "polygon of fewer than 3 points",
            "a.png (annotation 7)",
            "polygon 0 has 4 numbers (at least 6 needed)",
        ),
        (
            "polygon of fewer than 3 points",
            "a.png (annotation 8)",
            "polygon 1 has 2 numbers (at least 6 needed)",
        ),
        ("polygon of odd length", "a.png (annotation 9)", "polygon 0 has 7 numbers"),
    }
    details = {p.file: p.detail for p in report.warnings}
    assert "the object's mask is empty" in details["a.png (annotation 7)"]
    assert "left out of the object's mask" in details["a.png (annotation 8)"]
    # the warnings say what decoding does: annotation 7's mask is empty, the others are not
    masks = records.samples[0].instance_masks()
    assert masks[0].sum() == 0 and all(mask.sum() > 0 for mask in masks[1:])
    assert main(["data", "check", str(path), "--images", str(tmp_path)]) == 0
    assert "warning: polygon of fewer than 3 points (2)" in capsys.readouterr().out
    # training keeps the sample: its boxes are usable
    assert validate_for_training(records, False, coco_json_problems(path)) is records
