"""Torch-free inference on exported cvkit models: numpy, OpenCV and onnxruntime only.

``Detector("model.onnx").predict(image)`` returns boxes, scores, labels and class names in the
original image's pixels; :class:`Classifier` and :class:`Segmenter` do the same for their
tasks, and :class:`Stylizer` returns a stylised image of the input's size. Everything needed
(classes, input size, normalization, resize policy, thresholds) is read from the file's
metadata. See :mod:`cvkit.runtime.session` for the ``providers`` choice.
"""

from cvkit.runtime.errors import InputError, ModelFileError, ProviderError
from cvkit.runtime.metadata import ModelMetadata
from cvkit.runtime.predictors import (
    Classifier,
    Detector,
    Predictor,
    Segmenter,
    load_predictor,
    register_predictor,
)
from cvkit.runtime.results import Classification, Detections, Result, Segmentation
from cvkit.runtime.session import OnnxModel
from cvkit.runtime.style import Stylized, Stylizer

__all__ = [
    "Classification",
    "Classifier",
    "Detections",
    "Detector",
    "InputError",
    "ModelFileError",
    "ModelMetadata",
    "OnnxModel",
    "Predictor",
    "ProviderError",
    "Result",
    "Segmentation",
    "Segmenter",
    "Stylized",
    "Stylizer",
    "load_predictor",
    "register_predictor",
]
