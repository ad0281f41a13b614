"""The KServe V2 (Open Inference Protocol) REST bodies and their numpy conversions.

The pydantic models follow the protocol's JSON objects: ``$inference_request``,
``$inference_response``, ``$metadata_model_response``, ``$metadata_server_response`` and the
error body ``{"error": "..."}``. Tensor ``data`` is sent flat in row-major order (nested lists
are accepted and flattened). :func:`request_tensor` checks a request's input against the
graph (name, datatype, shape, element count) and names the input in every error.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from cvkit.runtime.session import OnnxModel

DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(bool),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
_ONNX_TYPES = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
}


class V2Error(ValueError):
    """A V2 request that does not fit the model; the message names the input or output."""


class ErrorResponse(BaseModel):
    """The protocol's error body."""

    error: str


class MetadataTensor(BaseModel):
    """A tensor's name, datatype and shape (-1: any size) in model metadata."""

    name: str
    datatype: str
    shape: list[int]


class ServerMetadataResponse(BaseModel):
    """``GET /v2``."""

    name: str
    version: str
    extensions: list[str]


class ModelMetadataResponse(BaseModel):
    """``GET /v2/models/{name}``."""

    name: str
    versions: list[str]
    platform: str
    inputs: list[MetadataTensor]
    outputs: list[MetadataTensor]


class ReadyResponse(BaseModel):
    """Health and readiness answers (the status code carries the protocol's meaning)."""

    ready: bool


class LiveResponse(BaseModel):
    """``GET /v2/health/live``."""

    live: bool


class RequestInput(BaseModel):
    """One input tensor of an inference request."""

    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any]


class RequestOutput(BaseModel):
    """An output the client asks for (all outputs when the request names none)."""

    name: str
    parameters: dict[str, Any] | None = None


class InferenceRequest(BaseModel):
    """``POST /v2/models/{name}/infer`` body."""

    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None


class ResponseOutput(BaseModel):
    """One output tensor of an inference response."""

    name: str
    shape: list[int]
    datatype: str
    data: list[Any]


class InferenceResponse(BaseModel):
    """The answer to an inference request."""

    model_name: str
    model_version: str | None = None
    id: str | None = None
    outputs: list[ResponseOutput]


def _shape(dims: list[Any]) -> list[int]:
    return [dim if isinstance(dim, int) and dim > 0 else -1 for dim in dims]


def model_metadata(name: str, model: OnnxModel) -> ModelMetadataResponse:
    """The V2 metadata of a loaded model: its graph's inputs and outputs."""
    tensors = {
        "inputs": model.session.get_inputs(),
        "outputs": model.session.get_outputs(),
    }
    described = {
        kind: [
            MetadataTensor(
                name=node.name,
                datatype=_ONNX_TYPES.get(node.type, node.type),
                shape=_shape(node.shape),
            )
            for node in nodes
        ]
        for kind, nodes in tensors.items()
    }
    return ModelMetadataResponse(
        name=name, versions=["1"], platform="onnxruntime_onnx", **described
    )


def request_tensor(request: InferenceRequest, model: OnnxModel, max_batch: int) -> np.ndarray:
    """The graph input a request carries, as ``[B, 3, H, W]`` of the graph's dtype.

    Raises:
        V2Error: a missing or unknown input, another datatype, a shape the graph does not take
            (or a batch over ``max_batch``), or data whose element count or values do not fit.
    """
    (graph_input,) = model.session.get_inputs()
    expected = graph_input.name
    unknown = [item.name for item in request.inputs if item.name != expected]
    if unknown or len(request.inputs) != 1:
        raise V2Error(
            f"input {unknown[0] if unknown else expected!r}: the model takes exactly one input, "
            f"{expected!r}"
        )
    item = request.inputs[0]
    datatype = _ONNX_TYPES[graph_input.type]
    if item.datatype != datatype:
        raise V2Error(f"input {expected!r}: datatype must be {datatype}, got {item.datatype!r}")
    want = _shape(graph_input.shape)
    fits = len(item.shape) == len(want) and all(
        size == dim if dim > 0 else size > 0 for size, dim in zip(item.shape, want, strict=False)
    )
    if not fits:
        raise V2Error(f"input {expected!r}: shape {item.shape} does not fit the model's {want}")
    if want[0] == -1 and item.shape[0] > max_batch:
        raise V2Error(
            f"input {expected!r}: batch {item.shape[0]} is larger than the server's "
            f"--max-batch {max_batch}"
        )
    try:
        values = np.asarray(item.data, dtype=DATATYPES[datatype]).ravel()
    except (TypeError, ValueError, OverflowError):
        raise V2Error(f"input {expected!r}: data must be a list of {datatype} numbers") from None
    if values.size != math.prod(item.shape):
        raise V2Error(
            f"input {expected!r}: data has {values.size} elements, shape {item.shape} needs "
            f"{math.prod(item.shape)}"
        )
    return values.reshape(item.shape)


def response_outputs(
    outputs: dict[str, np.ndarray], request: InferenceRequest
) -> list[ResponseOutput]:
    """The outputs a request asked for (all, in graph order, when it named none).

    Raises:
        V2Error: the request names an output the graph does not have.
    """
    names = [output.name for output in request.outputs] if request.outputs else list(outputs)
    unknown = [name for name in names if name not in outputs]
    if unknown:
        raise V2Error(f"output {unknown[0]!r}: the model's outputs are {list(outputs)}")
    described = []
    for name in names:
        array = outputs[name]
        datatype = next(key for key, dtype in DATATYPES.items() if dtype == array.dtype)
        described.append(
            ResponseOutput(
                name=name, shape=list(array.shape), datatype=datatype, data=array.ravel().tolist()
            )
        )
    return described
