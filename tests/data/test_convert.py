"""Round trips between COCO, YOLO and VOC on generated data: boxes within 1 px, classes exact."""

import itertools
import re
import shutil

import numpy as np
import pytest

from cvkit.data.convert import convert, infer_split
from cvkit.data.formats.detect import detect_format, load_records
from cvkit.data.synthetic import annotation_path
from cvkit.errors import DatasetError

FORMATS = ["coco", "yolo", "voc"]


def _assert_same(original, converted):
    assert converted.classes == original.classes
    assert len(converted) == len(original)
    by_name = {s.file_name.rsplit("/", 1)[-1]: s for s in converted.samples}
    for sample in original.samples:
        other = by_name[sample.file_name]
        assert (other.height, other.width) == (sample.height, sample.width)
        assert np.array_equal(other.labels, sample.labels)
        assert np.abs(other.boxes - sample.boxes).max(initial=0) <= 1.0


@pytest.mark.parametrize(("first", "second"), list(itertools.permutations(FORMATS, 2)))
def test_every_direction_round_trips(tiny_synthetic, tmp_path, first, second):
    source = annotation_path(tiny_synthetic, "val")
    original = load_records(source, tiny_synthetic / "images" / "val")
    a = convert(source, first, tmp_path / first, tiny_synthetic / "images" / "val")
    assert detect_format(a) == first
    _assert_same(original, load_records(a, split="val"))
    b = convert(a, second, tmp_path / f"{first}_{second}", split="val")
    assert detect_format(b) == second
    _assert_same(original, load_records(b, split="val"))


def test_voc_masks_come_from_coco_instances(tiny_synthetic, tmp_path):
    from cvkit.data.formats.coco import read_coco

    source = annotation_path(tiny_synthetic, "val")
    out = convert(source, "voc", tmp_path / "voc", tiny_synthetic / "images" / "val")
    written = load_records(out, split="val")
    semantic = read_coco(source, semantic_dir=tiny_synthetic / "semantic" / "val")
    for a, b in zip(semantic.samples, written.samples, strict=True):
        assert np.array_equal(a.load_semantic(), b.load_semantic())


def test_split_inference(tiny_synthetic):
    assert infer_split(annotation_path(tiny_synthetic, "val"), None) == "val"
    assert infer_split(annotation_path(tiny_synthetic, "val"), "train") == "train"


def test_cli_convert_and_synth(tmp_path, capsys):
    from cvkit.cli import main

    synth = ["data", "synth", "--out", str(tmp_path / "s"), "--num-train", "3", "--num-val", "2"]
    assert main([*synth, "--image-size", "48", "--seed", "4"]) == 0
    source = annotation_path(tmp_path / "s", "train")
    assert len(load_records(source)) == 3
    assert main(["data", "convert", str(source), "--to", "yolo", "--out", str(tmp_path / "y")]) == 0
    assert "data.yaml" in capsys.readouterr().out
    assert len(load_records(tmp_path / "y" / "data.yaml", split="train")) == 3
    missing = ["data", "convert", str(tmp_path / "nothing.txt"), "--to", "voc"]
    assert main([*missing, "--out", str(tmp_path / "v")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_labels_outside_the_classes_are_refused(tmp_path):
    import cv2
    import yaml

    (tmp_path / "images" / "train").mkdir(parents=True)
    (tmp_path / "labels" / "train").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "images" / "train" / "a.png"), np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "labels" / "train" / "a.txt").write_text("5 0.5 0.5 0.5 0.5\n")
    data = tmp_path / "data.yaml"
    data.write_text(yaml.safe_dump({"train": "images/train", "names": ["x"]}))
    with pytest.raises(DatasetError, match=r"a.png: labels \[5\] are outside the 1 classes"):
        convert(data, "coco", tmp_path / "out")


def test_voc_folder_without_image_sets_converts_every_image(tiny_synthetic, tmp_path):
    """A VOC folder without ``ImageSets``: ``convert`` without a split takes every image (a
    named split without a list is refused, see ``test_voc``)."""
    source = annotation_path(tiny_synthetic, "val")
    original = load_records(source, tiny_synthetic / "images" / "val")
    voc = convert(source, "voc", tmp_path / "voc", tiny_synthetic / "images" / "val")
    shutil.rmtree(voc / "ImageSets")
    coco = convert(voc, "coco", tmp_path / "coco")
    assert coco.name == "instances_train.json"
    _assert_same(original, load_records(coco))


def test_a_missing_relative_dataset_path_names_the_directory_it_starts_at(tmp_path, monkeypatch):
    """A config's ``data.train.path: ../coco/x.json`` starts at the current directory, not at
    the config file: the error once gave only the relative path."""
    monkeypatch.chdir(tmp_path)
    message = rf"\.\./coco/x\.json: .* \(relative paths start at {re.escape(str(tmp_path))}\)"
    with pytest.raises(DatasetError, match=message):
        detect_format("../coco/x.json")
    with pytest.raises(DatasetError, match=r"does not exist$"):
        detect_format(tmp_path / "absent.json")
