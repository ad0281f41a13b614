"""Typed runtime results (JSON, drawing, saving) and the runtime predictor registry."""

import json

import cv2
import numpy as np
import pytest

from cvkit.runtime import ModelFileError, ModelMetadata, Predictor, register_predictor
from cvkit.runtime.predictors import registered_tasks
from cvkit.runtime.results import Classification, Detections, Segmentation, category_ids_of


def test_results_are_json_ready_and_draw_onto_their_image(tmp_path):
    image = np.full((20, 30, 3), 255, np.uint8)
    detections = Detections(
        np.array([[2, 3, 12, 15]], np.float32),
        np.array([0.9], np.float32),
        np.array([1]),
        ["dog"],
        orig_size=(20, 30),
    )
    probabilities = np.array([0.2, 0.7, 0.1], np.float32)
    classification = Classification(probabilities, ["cat", "dog", "bird"])
    segmentation = Segmentation(np.array([[0, 1], [1, 1]]), ["background", "dog"])
    assert classification.label == 1 and classification.name == "dog"
    assert classification.score == pytest.approx(0.7)
    assert segmentation.to_dict() == {"classes": {"background": 0.25, "dog": 0.75}}
    assert detections.above(0.95).names == [] and len(detections.above(0.5)) == 1
    for result, shape in [(detections, image.shape), (classification, image.shape)]:
        json.dumps(result.to_dict())
        drawn = result.draw(image)
        assert drawn.shape == shape and drawn.dtype == np.uint8
        assert not np.array_equal(drawn, image)
        path = result.save(tmp_path / f"{type(result).__name__}.png", image)
        assert cv2.imread(str(path)).shape == shape


def test_category_ids_follow_their_detections_into_json():
    labels = np.array([2, 0, 2, 1])
    ids = category_ids_of(labels, [1, 3, 90])
    np.testing.assert_array_equal(ids, [90, 1, 90, 3])
    assert category_ids_of(labels, None) is None
    boxes = np.tile(np.array([[0, 0, 4, 4]], np.float32), (4, 1))
    scores = np.array([0.9, 0.8, 0.4, 0.2], np.float32)
    names = ["c", "a", "c", "b"]
    with_ids = Detections(boxes, scores, labels, names, category_ids=ids)
    body = with_ids.above(0.3).to_dict()
    assert body["labels"] == [2, 0, 2] and body["category_ids"] == [90, 1, 90]
    assert "category_ids" not in Detections(boxes, scores, labels, names).above(0.3).to_dict()


def test_an_unknown_task_names_itself_and_a_registered_one_is_accepted():
    with pytest.raises(ModelFileError, match=r"'toy-task'.*known tasks: .*classify, detect"):
        ModelMetadata(task="toy-task", classes=("a",), input_size=(8, 8))

    @register_predictor("toy-task-2")
    class ToyPredictor(Predictor):
        pass

    assert ToyPredictor.task == "toy-task-2" and "toy-task-2" in registered_tasks()
    assert ModelMetadata(task="toy-task-2", classes=("a",), input_size=(8, 8)).task
