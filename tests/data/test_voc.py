"""Pascal VOC reader/writer against hand-built files following the VOC devkit layout."""

import cv2
import numpy as np
import pytest
from PIL import Image

from cvkit.data.formats.voc import VOC_CLASSES, read_voc, voc_palette, write_voc
from cvkit.errors import DatasetError

XML = """<annotation>
  <filename>{name}.jpg</filename>
  <size><width>60</width><height>40</height><depth>3</depth></size>
  <object><name>dog</name><difficult>0</difficult>
    <bndbox><xmin>1</xmin><ymin>1</ymin><xmax>60</xmax><ymax>40</ymax></bndbox></object>
  <object><name>person</name><difficult>1</difficult>
    <bndbox><xmin>11</xmin><ymin>6</ymin><xmax>20</xmax><ymax>15</ymax></bndbox></object>
</annotation>"""


def _voc(tmp_path):
    root = tmp_path / "VOC"
    for folder in ("Annotations", "JPEGImages", "SegmentationClass", "ImageSets/Main"):
        (root / folder).mkdir(parents=True)
    for name in ("2007_000001", "2007_000002"):
        (root / "Annotations" / f"{name}.xml").write_text(XML.format(name=name))
        cv2.imwrite(str(root / "JPEGImages" / f"{name}.jpg"), np.zeros((40, 60, 3), np.uint8))
    indices = np.zeros((40, 60), np.uint8)
    indices[5:15, 10:20] = 15  # person
    indices[4, :] = 255  # border / ignore
    png = Image.fromarray(indices, mode="P")
    png.putpalette(voc_palette())
    png.save(root / "SegmentationClass" / "2007_000002.png")
    (root / "ImageSets" / "Main" / "val.txt").write_text("2007_000002\n")
    return root, indices


def test_reader_follows_the_devkit(tmp_path):
    root, indices = _voc(tmp_path)
    records = read_voc(root)
    assert records.classes == VOC_CLASSES and len(records) == 2
    sample = records.samples[0]
    # xmin=1..xmax=60 (1-based inclusive) covers the whole 60-pixel-wide image
    assert np.allclose(sample.boxes, [[0, 0, 60, 40], [10, 5, 20, 15]])
    assert sample.labels.tolist() == [VOC_CLASSES.index("dog"), VOC_CLASSES.index("person")]
    assert sample.iscrowd.tolist() == [False, True]  # difficult
    val = read_voc(root, "val")
    assert [s.file_name for s in val.samples] == ["2007_000002.jpg"]
    assert np.array_equal(val.samples[0].load_semantic(), indices)  # indices, not colours


def test_palette_is_the_voc_colour_map():
    palette = np.array(voc_palette()).reshape(256, 3)
    assert palette[1].tolist() == [128, 0, 0] and palette[15].tolist() == [192, 128, 128]
    assert palette[255].tolist() == [224, 224, 192]


def test_writer_round_trip(tmp_path):
    root, indices = _voc(tmp_path)
    records = read_voc(root, "val")
    out = write_voc(records, tmp_path / "out", "val")
    again = read_voc(out, "val")
    assert again.classes == records.classes
    for a, b in zip(records.samples, again.samples, strict=True):
        assert np.allclose(a.boxes, b.boxes) and np.array_equal(a.labels, b.labels)
        assert np.array_equal(a.iscrowd, b.iscrowd)
        assert np.array_equal(b.load_semantic(), indices)
        with Image.open(b.semantic_path) as png:
            assert png.mode == "P"


def test_segmentation_object_pngs_give_the_instance_masks(tmp_path):
    root, _ = _voc(tmp_path)
    (root / "SegmentationObject").mkdir()
    objects = np.zeros((40, 60), np.uint8)
    objects[:, :] = 1  # the dog everywhere...
    objects[5:15, 10:20] = 2  # ...but where the person is
    objects[5, 10:20] = 255  # the void border belongs to no object
    png = Image.fromarray(objects, mode="P")
    png.putpalette(voc_palette())
    png.save(root / "SegmentationObject" / "2007_000001.png")
    first, second = read_voc(root).samples
    masks = first.instance_masks()
    assert masks.shape == (2, 40, 60) and second.segmentations is None
    np.testing.assert_array_equal(masks[0], objects == 1)
    np.testing.assert_array_equal(masks[1], objects == 2)
    # the writer puts them back: a round trip keeps every instance mask
    again = read_voc(write_voc(read_voc(root), tmp_path / "out")).samples[0]
    np.testing.assert_array_equal(again.instance_masks(), masks)
    objects[0, 0] = 3  # an index the XML has no object for
    png = Image.fromarray(objects, mode="P")
    png.putpalette(voc_palette())
    png.save(root / "SegmentationObject" / "2007_000001.png")
    with pytest.raises(DatasetError, match=r"2007_000001\.png: object index 3 but .* 2 objects"):
        read_voc(root)


def test_a_split_without_a_list_is_refused_instead_of_reading_every_image(tmp_path):
    """The config names ``train`` and ``val`` splits by default: a folder without
    ``ImageSets`` once gave both splits all its images, validating on the training images."""
    root, _ = _voc(tmp_path)
    with pytest.raises(DatasetError, match=r"no list of the 'train' split \(ImageSets/Main/"):
        read_voc(root, "train")
    assert len(read_voc(root, "val")) == 1 and len(read_voc(root)) == 2


def test_lists_saved_with_a_byte_order_mark_read_as_without(tmp_path):
    """``labels.txt`` and ``ImageSets`` lists saved by Windows tools (BOM, CRLF): the first
    class once read as '\\ufeffperson', a name no object has."""
    root, _ = _voc(tmp_path)
    (root / "labels.txt").write_bytes(b"\xef\xbb\xbfbackground\r\nperson\r\ndog\r\n")
    listing = root / "ImageSets" / "Main" / "val.txt"
    listing.write_bytes(b"\xef\xbb\xbf2007_000002\r\n")
    records = read_voc(root, "val")
    assert records.classes == ["person", "dog"]
    assert [s.file_name for s in records.samples] == ["2007_000002.jpg"]


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("<xmin>11</xmin>", "<xmin></xmin>", "<xmin> holds '', not a number"),
        ("<width>60</width>", "<width>sixty</width>", "<width> holds 'sixty', not a number"),
    ],
)
def test_a_field_that_is_no_number_names_the_file(tmp_path, old, new, message):
    """An empty or wordy field once raised a bare ValueError from float()."""
    root, _ = _voc(tmp_path)
    xml = root / "Annotations" / "2007_000002.xml"
    xml.write_text(xml.read_text().replace(old, new))
    with pytest.raises(DatasetError, match=rf"2007_000002\.xml: {message}"):
        read_voc(root, "val")


def test_splits_share_the_class_order_of_the_whole_folder(tmp_path):
    """Without labels.txt, names outside the VOC 20 are sorted: once only the split's own,
    so a val split without 'apple' numbered 'kiwi' 0 where train numbered it 1."""
    root, _ = _voc(tmp_path)
    first = root / "Annotations" / "2007_000001.xml"
    first.write_text(first.read_text().replace(">dog<", ">apple<").replace(">person<", ">kiwi<"))
    second = root / "Annotations" / "2007_000002.xml"
    second.write_text(second.read_text().replace(">dog<", ">kiwi<").replace(">person<", ">kiwi<"))
    (root / "ImageSets" / "Main" / "train.txt").write_text("2007_000001\n")
    train, val = read_voc(root, "train"), read_voc(root, "val")
    assert train.classes == val.classes == ["apple", "kiwi"]
    assert train.samples[0].labels.tolist() == [0, 1] and val.samples[0].labels.tolist() == [1, 1]
