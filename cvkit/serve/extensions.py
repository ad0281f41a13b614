"""Triton's HTTP extensions to the V2 protocol that a cvkit server answers.

Triton's clients (``tritonclient.http``) call these besides inference, metadata and health:

- model configuration (``GET /v2/models/{name}[/versions/1]/config``): :func:`model_config`
  describes a loaded graph as Triton's ``ModelConfig`` JSON (``model_config.proto``) would for
  the same ``.onnx`` file: ``max_batch_size`` is the server's ``--max-batch`` for a graph with
  a dynamic batch axis (``dims`` then leave that axis out) and 0 for a fixed batch (``dims``
  are the whole shape), -1 marks an axis of any size, and one instance group counts the worker
  processes, each holding a copy of the model;
- statistics (``GET /v2/models[/{name}[/versions/1]]/stats``): :func:`model_statistics` reads
  a model's :class:`~cvkit.serve.metrics.ModelUsage`, the Prometheus metrics of ``/metrics``,
  so both report the same requests;
- the model repository's index (``POST /v2/repository/index``): :func:`repository_index`. Its
  load and unload calls are not supported (a server loads its models at start), so the
  server metadata does not list ``model_repository``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, StrictBool

from cvkit.runtime.session import CPU
from cvkit.serve.metrics import ModelUsage, Span
from cvkit.serve.models import ServedModel
from cvkit.serve.v2 import MODEL_VERSION, PLATFORM, MetadataTensor, graph_tensors, parse_json

CONFIG_EXTENSION = "model_configuration"
STATISTICS_EXTENSION = "statistics"


class ConfigTensor(BaseModel):
    """An input or output of a model configuration (``reshape``: the shape the graph sees,
    where it differs from ``dims``)."""

    name: str
    data_type: str
    dims: list[int]
    reshape: dict[str, list[int]] | None = None


class InstanceGroup(BaseModel):
    """Where and in how many copies a model runs."""

    name: str
    kind: str
    count: int


class DynamicBatching(BaseModel):
    """The dynamic batcher's settings (present for a model that batches)."""

    preferred_batch_size: list[int]
    max_queue_delay_microseconds: int


class ModelConfigResponse(BaseModel):
    """``GET /v2/models/{name}/config``: the fields of Triton's ``ModelConfig`` that apply."""

    name: str
    platform: str
    backend: str
    version_policy: dict[str, Any]
    max_batch_size: int
    input: list[ConfigTensor]
    output: list[ConfigTensor]
    instance_group: list[InstanceGroup]
    default_model_filename: str
    dynamic_batching: DynamicBatching | None = None


class DurationStat(BaseModel):
    """A count and the nanoseconds it took in all."""

    count: int
    ns: int


class InferenceStats(BaseModel):
    """Per-model request counts and times (``$inference_stats``)."""

    success: DurationStat
    fail: DurationStat
    queue: DurationStat
    compute_input: DurationStat
    compute_infer: DurationStat
    compute_output: DurationStat
    cache_hit: DurationStat


class ModelStat(BaseModel):
    """One model's statistics (``$model_stat``)."""

    name: str
    version: str
    last_inference: int
    inference_count: int
    execution_count: int
    inference_stats: InferenceStats
    batch_stats: list[dict[str, Any]]


class StatisticsResponse(BaseModel):
    """``GET /v2/models/stats`` and the per-model forms."""

    model_stats: list[ModelStat]


class RepositoryIndexRequest(BaseModel):
    """``POST /v2/repository/index`` body (tritonclient sends an empty one)."""

    ready: StrictBool = False


class RepositoryModel(BaseModel):
    """One entry of the repository index."""

    name: str
    version: str
    state: str
    reason: str


def _config_tensor(tensor: MetadataTensor, batched: bool) -> ConfigTensor:
    """With a batch, ``dims`` leave the batch axis out; a tensor that has no other axis
    (``num_dets [B]``) is ``dims [1]`` reshaped to ``[]``, as Triton writes it."""
    dims = tensor.shape[1:] if batched else tensor.shape
    return ConfigTensor(
        name=tensor.name,
        data_type=f"TYPE_{tensor.datatype}",
        dims=dims or [1],
        reshape=None if dims else {"shape": []},
    )


def model_config(
    name: str, model: ServedModel, max_delay_ms: float, instances: int
) -> ModelConfigResponse:
    """The Triton model configuration of a served model, read from its loaded graph.

    Args:
        name: the model's name in the URLs.
        model: the loaded model.
        max_delay_ms: the server's ``--max-delay-ms`` (the batcher's queue delay).
        instances: worker processes, each running its own copy of the model.
    """
    tensors = graph_tensors(model.model)
    batched = model.dynamic_batch
    return ModelConfigResponse(
        name=name,
        platform=PLATFORM,
        backend="onnxruntime",
        version_policy={"latest": {"num_versions": 1}},
        max_batch_size=model.max_batch if batched else 0,
        input=[_config_tensor(tensor, batched) for tensor in tensors["inputs"]],
        output=[_config_tensor(tensor, batched) for tensor in tensors["outputs"]],
        instance_group=[
            InstanceGroup(
                name=name,
                kind="KIND_CPU" if model.predictor.provider == CPU else "KIND_GPU",
                count=instances,
            )
        ],
        default_model_filename=model.path.name,
        dynamic_batching=DynamicBatching(
            preferred_batch_size=[], max_queue_delay_microseconds=round(max_delay_ms * 1000)
        )
        if batched
        else None,
    )


def _duration(span: Span) -> DurationStat:
    return DurationStat(count=span.count, ns=round(span.seconds * 1e9))


def model_statistics(name: str, usage: ModelUsage) -> ModelStat:
    """A model's ``$model_stat`` from its metrics.

    ``success`` and ``fail`` are its inference requests (V2 infer and the image endpoint)
    answered 200 or an error, with their latency; ``queue`` the requests whose batch ran, with
    their wait; ``compute_infer`` the batches run (a batch counts once, as in
    ``cvkit_inference_duration_seconds``), timed as one span of pre-processing, graph and
    post-processing, so ``compute_input`` and ``compute_output`` stay 0. There is no response
    cache and no timing per batch size (``batch_stats`` is empty).
    """
    unmeasured = DurationStat(count=0, ns=0)
    return ModelStat(
        name=name,
        version=MODEL_VERSION,
        last_inference=round(usage.last_inference * 1000),
        inference_count=usage.rows,
        execution_count=usage.runs.count,
        inference_stats=InferenceStats(
            success=_duration(usage.succeeded),
            fail=_duration(usage.failed),
            queue=_duration(usage.queued),
            compute_input=unmeasured,
            compute_infer=_duration(usage.runs),
            compute_output=unmeasured,
            cache_hit=unmeasured,
        ),
        batch_stats=[],
    )


def repository_index(body: bytes, names: list[str]) -> list[RepositoryModel]:
    """The repository index for a request ``body`` (empty or ``{"ready": bool}``): every
    served model, READY (all of them are loaded before the server answers).

    Raises:
        V2Error: a body that is not JSON or not an index request.
    """
    if body.strip():
        parse_json(body, RepositoryIndexRequest)
    return [
        RepositoryModel(name=name, version=MODEL_VERSION, state="READY", reason="")
        for name in names
    ]
