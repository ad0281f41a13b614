"""Model metadata: round trip through ONNX metadata_props, clear errors when it is missing."""

import onnx
import pytest

from cvkit.runtime import ModelFileError, ModelMetadata, OnnxModel
from cvkit.selective_search import SearchSettings

from .conftest import write_mean_colour_model


def test_metadata_round_trips_through_props():
    metadata = ModelMetadata(
        task="detect",
        classes=("cat", "dog, big", 'say "hi"'),
        input_size=(320, 256),
        category_ids=(1, 3, 90),
        mean=(0.5, 0.4, 0.3),
        std=(0.2, 0.25, 0.3),
        resize="resize",
        nms_in_graph=False,
        score_threshold=0.25,
        iou_threshold=0.6,
        max_det=7,
        proposals=SearchSettings("quality", 100, 50, 0.5, 4.0, 300),
        model_name="ssd",
        cvkit_version="9.9",
    )
    assert ModelMetadata.from_props(metadata.to_props()) == metadata


def test_metadata_round_trips_through_an_onnx_file(tmp_path):
    path = write_mean_colour_model(tmp_path / "m.onnx")
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert OnnxModel(path, "cpu").metadata == ModelMetadata.from_props(props)
    assert OnnxModel(path, "cpu").metadata.classes == ("red", "green", "blue")


def test_file_without_cvkit_metadata_is_rejected_by_name(tmp_path):
    path = write_mean_colour_model(tmp_path / "plain.onnx", metadata=False)
    with pytest.raises(ModelFileError, match=r"plain\.onnx: not a cvkit export"):
        OnnxModel(path, "cpu")


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("task", '"track"', "task"),
        ("resize", '"crop"', "resize"),
        ("classes", "[not json", "not valid JSON"),
        ("classes", "[]", "class list is empty"),
        ("category_ids", "[1, 3]", "'category_ids': 2 ids for 1 classes"),
        ("proposals", '{"mode": "fast"}', "'proposals'.*missing"),
        (
            "proposals",
            '{"mode": "slow", "base_k": 1, "inc_k": 1, "sigma": 1, "min_size": 1, '
            '"max_proposals": 1}',
            "'proposals'.*'slow'",
        ),
    ],
)
def test_bad_metadata_values_name_the_key(key, value, message):
    props = ModelMetadata(task="classify", classes=("a",), input_size=(8, 8)).to_props()
    props[key] = value
    with pytest.raises(ModelFileError, match=message):
        ModelMetadata.from_props(props)


def test_metadata_of_an_older_export_has_no_proposal_settings():
    props = ModelMetadata(task="detect", classes=("a",), input_size=(8, 8)).to_props()
    assert props["proposals"] == "null"
    del props["proposals"]
    assert ModelMetadata.from_props(props).proposals is None


def test_metadata_of_an_older_export_has_no_category_ids():
    props = ModelMetadata(task="detect", classes=("a",), input_size=(8, 8)).to_props()
    assert props["category_ids"] == "null"
    del props["category_ids"]
    assert ModelMetadata.from_props(props).category_ids is None
