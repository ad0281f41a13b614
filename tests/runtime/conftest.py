"""ONNX files built with onnx.helper (no torch): a mean-colour 'classifier' with cvkit metadata."""

from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from cvkit.runtime.metadata import ModelMetadata

CLASSES = ("red", "green", "blue")


def write_mean_colour_model(
    path: Path, batch: int | str = "batch", size: int = 16, metadata: bool = True
) -> Path:
    """``logits [B, 3]`` = per-channel mean of ``images [B, 3, size, size]``."""
    images = helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, 3, size, size])
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 3])
    axes = helper.make_tensor("axes", TensorProto.INT64, [2], [2, 3])
    node = helper.make_node("ReduceMean", ["images", "axes"], ["logits"], keepdims=0)
    graph = helper.make_graph([node], "mean_colour", [images], [logits], [axes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    if metadata:
        props = ModelMetadata(task="classify", classes=CLASSES, input_size=(size, size)).to_props()
        helper.set_model_props(model, props)
    onnx.save(model, str(path))
    return path


@pytest.fixture
def mean_colour_model(tmp_path: Path) -> Path:
    return write_mean_colour_model(tmp_path / "mean_colour.onnx")
