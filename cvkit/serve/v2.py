"""The KServe V2 (Open Inference Protocol) REST bodies and their numpy conversions.

The pydantic models follow the protocol's JSON objects: ``$inference_request``,
``$inference_response``, ``$metadata_model_response``, ``$metadata_server_response`` and the
error body ``{"error": "..."}``. Tensor ``data`` is sent flat in row-major order (nested lists
are accepted and flattened). :func:`request_tensor` checks a request's input against the
graph (name, datatype, shape, element count) and names the input in every error.

The binary tensor data extension (Triton's, which its clients use by default) is supported
both ways: :func:`parse_request` splits a body whose JSON part is ``Inference-Header-Content-
Length`` bytes long from the raw tensors after it (an input with the ``binary_data_size``
parameter carries no ``data``; its bytes follow the JSON in input order, little-endian,
row-major), and :func:`response_outputs` returns an output as raw bytes when the request asks
(``binary_data`` on the output, or ``binary_data_output`` for all outputs); the response then
is the JSON followed by those bytes, its JSON length in the same header.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

import numpy as np
import orjson
from pydantic import BaseModel, Field, ValidationError

from cvkit.runtime.session import OnnxModel
from cvkit.serve.uploads import BodyTooLarge

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
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
}
BINARY_EXTENSION = "binary_tensor_data"
# a served model has one version
MODEL_VERSION = "1"
# Triton's platform name for a graph run by onnxruntime
PLATFORM = "onnxruntime_onnx"
HEADER_LENGTH = "Inference-Header-Content-Length"
# Content-Encoding → zlib's wbits for it (Triton's clients compress bodies with either)
_ENCODINGS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


Body = TypeVar("Body", bound=BaseModel)


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
    """One input tensor of an inference request (``data`` absent when it is sent as binary)."""

    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


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
    """One output tensor of an inference response (``data`` absent when sent as binary)."""

    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class InferenceResponse(BaseModel):
    """The answer to an inference request."""

    model_name: str
    model_version: str | None = None
    id: str | None = None
    outputs: list[ResponseOutput]


def _shape(dims: list[Any]) -> list[int]:
    return [dim if isinstance(dim, int) and dim > 0 else -1 for dim in dims]


def problems(errors: Iterable[Mapping[str, Any]], *where: str) -> str:
    """Each validation problem as ``where.loc: what``, as FastAPI names them (``where``: the
    part of the request its ``loc`` is in, when the ``loc`` does not name it)."""
    return "; ".join(
        f"{'.'.join(str(part) for part in (*where, *problem['loc']))}: {problem['msg']}"
        for problem in errors
    )


def parse_json(body: bytes, schema: type[Body]) -> Body:
    """``body``, JSON, validated as ``schema``.

    Raises:
        V2Error: text that is not JSON, or JSON that does not fit ``schema`` (each problem
            named by where it is).
    """
    try:
        return schema.model_validate(orjson.loads(body))
    except orjson.JSONDecodeError as exc:
        raise V2Error(f"invalid request: the body is not JSON ({exc})") from None
    except ValidationError as exc:
        raise V2Error(f"invalid request: {problems(exc.errors(), 'body')}") from None


def graph_tensors(model: OnnxModel) -> dict[str, list[MetadataTensor]]:
    """``inputs`` and ``outputs`` of a loaded graph: each tensor's name, V2 datatype and shape
    (-1 for an axis whose size is not a number)."""
    tensors = {
        "inputs": model.session.get_inputs(),
        "outputs": model.session.get_outputs(),
    }
    return {
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


def model_metadata(name: str, model: OnnxModel) -> ModelMetadataResponse:
    """The V2 metadata of a loaded model: its graph's inputs and outputs."""
    return ModelMetadataResponse(
        name=name, versions=[MODEL_VERSION], platform=PLATFORM, **graph_tensors(model)
    )


def decompressed(body: bytes, encoding: str | None, max_bytes: int) -> bytes:
    """``body`` as sent before its ``Content-Encoding`` (None or ``identity``: as it is).

    Raises:
        V2Error: an encoding other than gzip or deflate, or data that does not decompress.
        BodyTooLarge: the decompressed body is over ``max_bytes``.
    """
    coding = (encoding or "identity").strip().lower()
    if coding == "identity":
        return body
    if coding not in _ENCODINGS:
        raise V2Error(
            f"invalid request: Content-Encoding {encoding!r} is not gzip, deflate or identity"
        )
    inflater = zlib.decompressobj(_ENCODINGS[coding])
    try:
        plain = inflater.decompress(body, max_bytes + 1)
    except zlib.error as exc:
        raise V2Error(f"invalid request: the {coding} body does not decompress ({exc})") from None
    if len(plain) > max_bytes:
        raise BodyTooLarge
    if not inflater.eof:
        raise V2Error(f"invalid request: the {coding} body is truncated")
    return plain


def parse_request(
    body: bytes, header_length: str | None
) -> tuple[InferenceRequest, list[bytes | None]]:
    """An infer body → the request and, per input, its binary bytes (None: sent as JSON).

    ``header_length`` is the ``Inference-Header-Content-Length`` header: the length of the
    JSON part of a body that carries binary tensors after it (None: the body is all JSON).

    Raises:
        V2Error: a header length that is not a size within the body, JSON that is not an
            inference request, a bad ``binary_data_size``, or binary sizes that do not add up
            to the bytes after the JSON.
    """
    split = len(body)
    if header_length is not None:
        digits = header_length.strip()
        if not (digits.isascii() and digits.isdigit()) or int(digits) > len(body):
            raise V2Error(
                f"invalid request: {HEADER_LENGTH} {header_length!r} is not a length within "
                f"the {len(body)}-byte body"
            )
        split = int(digits)
    request = parse_json(body[:split], InferenceRequest)
    chunks: list[bytes | None] = []
    offset = split
    for item in request.inputs:
        size = (item.parameters or {}).get("binary_data_size")
        if size is None:
            chunks.append(None)
            continue
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise V2Error(
                f"input {item.name!r}: binary_data_size must be a byte count, got {size!r}"
            )
        if item.data is not None:
            raise V2Error(f"input {item.name!r}: has both data and binary_data_size")
        chunks.append(body[offset : offset + size])
        offset += size
    if offset != len(body):
        raise V2Error(
            f"invalid request: the inputs' binary_data_size add up to {offset - split} bytes, "
            f"the body carries {len(body) - split} after its {split}-byte JSON part"
        )
    return request, chunks


def _values(item: RequestInput, raw: bytes | None, dtype: np.dtype) -> np.ndarray:
    """The flat values of one input, from its JSON ``data`` or its binary bytes."""
    if raw is not None:
        size = math.prod(item.shape) * dtype.itemsize
        if len(raw) != size:
            raise V2Error(
                f"input {item.name!r}: binary_data_size is {len(raw)} bytes, shape {item.shape} "
                f"of {item.datatype} needs {size}"
            )
        return np.frombuffer(raw, dtype.newbyteorder("<")).astype(dtype)
    if item.data is None:
        raise V2Error(f"input {item.name!r}: no data (neither 'data' nor binary_data_size)")
    try:
        return np.asarray(item.data, dtype=dtype).ravel()
    except (TypeError, ValueError, OverflowError):
        raise V2Error(
            f"input {item.name!r}: data must be a list of {item.datatype} numbers"
        ) from None


def request_tensor(
    request: InferenceRequest,
    model: OnnxModel,
    max_batch: int,
    binary: list[bytes | None] | None = None,
) -> np.ndarray:
    """The graph input a request carries, as ``[B, 3, H, W]`` of the graph's dtype.

    ``binary`` holds, per request input, the bytes :func:`parse_request` split off (None or
    missing: the input's JSON ``data``).

    Raises:
        V2Error: a graph with more inputs than the images (Fast R-CNN's proposals), a missing
            or unknown input, another datatype, a shape the graph does not take (or a batch
            over ``max_batch``), or data whose element count or values do not fit.
    """
    graph_input, *extra = model.session.get_inputs()
    if extra:
        raise V2Error(
            f"model inputs {[graph_input.name, *(item.name for item in extra)]}: the V2 endpoint "
            "serves graphs with one input, the images; post the image to the model's "
            "/v1/models/{name}/predict, which computes the other inputs (Fast R-CNN's proposals)"
        )
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
    values = _values(item, binary[0] if binary else None, DATATYPES[datatype])
    if values.size != math.prod(item.shape):
        raise V2Error(
            f"input {expected!r}: data has {values.size} elements, shape {item.shape} needs "
            f"{math.prod(item.shape)}"
        )
    return values.reshape(item.shape)


def _flag(parameters: dict[str, Any] | None, key: str, default: bool, what: str) -> bool:
    """The boolean parameter ``key`` of ``parameters``, or ``default`` when it is absent."""
    flag = (parameters or {}).get(key, default)
    if not isinstance(flag, bool):
        raise V2Error(f"{what}: parameter {key} must be true or false, got {flag!r}")
    return flag


def requested_outputs(request: InferenceRequest, names: list[str]) -> list[tuple[str, bool]]:
    """The outputs a request asks for (all of ``names``, the graph's, when it names none), each
    with whether it is to be sent as binary data.

    Raises:
        V2Error: an output the graph does not have, a ``binary_data`` or
            ``binary_data_output`` that is not a boolean, or an output asking for Triton's
            classification extension (not supported).
    """
    all_binary = _flag(request.parameters, "binary_data_output", False, "request")
    if not request.outputs:
        return [(name, all_binary) for name in names]
    wanted = []
    for output in request.outputs:
        if output.name not in names:
            raise V2Error(f"output {output.name!r}: the model's outputs are {names}")
        if "classification" in (output.parameters or {}):
            raise V2Error(
                f"output {output.name!r}: the classification extension is not supported; ask "
                "for the tensor itself"
            )
        binary = _flag(output.parameters, "binary_data", all_binary, f"output {output.name!r}")
        wanted.append((output.name, binary))
    return wanted


def response_outputs(
    outputs: dict[str, np.ndarray], wanted: list[tuple[str, bool]]
) -> tuple[list[ResponseOutput], list[bytes]]:
    """The response's ``outputs`` for ``wanted`` (from :func:`requested_outputs`) and the raw
    bytes of those sent as binary, in the same order."""
    described = []
    blobs = []
    for name, binary in wanted:
        array = outputs[name]
        datatype = next(key for key, dtype in DATATYPES.items() if dtype == array.dtype)
        if binary:
            raw = np.ascontiguousarray(array, array.dtype.newbyteorder("<")).tobytes()
            blobs.append(raw)
            tensor = ResponseOutput(
                name=name,
                shape=list(array.shape),
                datatype=datatype,
                parameters={"binary_data_size": len(raw)},
            )
        else:
            tensor = ResponseOutput(
                name=name, shape=list(array.shape), datatype=datatype, data=array.ravel().tolist()
            )
        described.append(tensor)
    return described, blobs
