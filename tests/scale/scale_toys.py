"""Test stand-ins for cvkit.scale: a tiny hand-built detector (onnx.helper, no torch) and
folders of random PNGs."""

from pathlib import Path

import cv2
import numpy as np
import onnx
from onnx import TensorProto, helper

from cvkit.runtime.metadata import ModelMetadata

CLASSES = ("red", "green", "blue")
SIZE = 32


def write_colour_detector(path: Path, size: int = SIZE) -> Path:
    """A detector with NMS "in the graph": per image the channel means ``m [3]`` (0..1) give
    one box ``(m0, m1, m0 + 1, m1 + 1) * size / 2``, score ``max(m)``, label ``argmax(m)``,
    and ``num_dets`` 1 when the score exceeds 0.2, else 0."""
    half = size / 2
    inputs = [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["b", 3, size, size])]
    outputs = [
        helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["b", 1, 4]),
        helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["b", 1]),
        helper.make_tensor_value_info("labels", TensorProto.INT64, ["b", 1]),
        helper.make_tensor_value_info("num_dets", TensorProto.INT64, ["b"]),
    ]
    weights = [[half, 0, half, 0], [0, half, 0, half], [0, 0, 0, 0]]
    constants = [
        helper.make_tensor("spatial", TensorProto.INT64, [2], [2, 3]),
        helper.make_tensor("channel", TensorProto.INT64, [1], [1]),
        helper.make_tensor(
            "weights", TensorProto.FLOAT, [3, 4], [v for row in weights for v in row]
        ),
        helper.make_tensor("bias", TensorProto.FLOAT, [4], [0, 0, half, half]),
        helper.make_tensor("minimum", TensorProto.FLOAT, [], [0.2]),
    ]
    nodes = [
        helper.make_node("ReduceMean", ["images", "spatial"], ["means"], keepdims=0),
        helper.make_node("Gemm", ["means", "weights", "bias"], ["flat_boxes"]),
        helper.make_node("Unsqueeze", ["flat_boxes", "channel"], ["boxes"]),
        helper.make_node("ReduceMax", ["means", "channel"], ["scores"], keepdims=1),
        helper.make_node("ArgMax", ["means"], ["labels"], axis=1, keepdims=1),
        helper.make_node("Greater", ["scores", "minimum"], ["kept"]),
        helper.make_node("Cast", ["kept"], ["kept_int"], to=TensorProto.INT64),
        helper.make_node("Squeeze", ["kept_int", "channel"], ["num_dets"]),
    ]
    graph = helper.make_graph(nodes, "colour_detector", inputs, outputs, constants)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    metadata = ModelMetadata(
        task="detect", classes=CLASSES, input_size=(size, size), mean=(0, 0, 0), std=(1, 1, 1)
    )
    helper.set_model_props(model, metadata.to_props())
    onnx.save(model, str(path))
    return path


def write_images(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """``count`` PNGs of random sizes and colours (some too dark to detect) in ``folder``."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        height, width = rng.integers(12, 48, size=2)
        image = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        image = (image * rng.uniform(0.1, 1.0)).astype(np.uint8)
        path = folder / f"img_{index:03d}.png"
        cv2.imwrite(str(path), image)
        paths.append(path)
    return paths
