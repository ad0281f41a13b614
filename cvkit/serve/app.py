"""The ASGI app: KServe V2 endpoints, the image endpoint, metrics and the web page.

Routes (errors are ``{"error": "..."}`` with the status named):

- ``GET /``: the web page (pick a model, drop an image, see the drawing and the JSON);
- ``GET /v2``, ``/v2/health/live``, ``/v2/health/ready``: server metadata and health;
- ``GET /v2/models/{name}`` (metadata), ``/v2/models/{name}/ready``, ``POST
  /v2/models/{name}/infer``, each also under ``/v2/models/{name}/versions/1``: the V2 protocol
  on the graph's own tensors, as JSON or with the binary tensor data extension (400 naming the
  input for a wrong name, datatype or shape);
- Triton's extensions (:mod:`cvkit.serve.extensions`): ``GET /v2/models/{name}/config``,
  ``GET /v2/models[/{name}]/stats`` (both also under ``/versions/1``), ``POST
  /v2/repository/index``; ``POST /v2/repository/models/{name}/load`` and ``/unload`` answer
  400 (models load at start);
- ``GET /v1/models``, ``/v1/models/{name}``: the served models and their cvkit metadata;
- ``POST /v1/models/{name}/predict``: a JPEG/PNG as the raw body or a multipart ``file``;
  returns the typed result's JSON (boxes in original pixels, labels, names, scores, COCO
  category ids when the model has them; masks as RLE; class probabilities; a segmentation's
  mask as PNG or RLE);
- ``GET /metrics``: Prometheus text format (:mod:`cvkit.serve.metrics`).

Unknown models get 404, bodies over the limit 413, undecodable images 400 with the reason, and
requests not answered within the timeout 504; an error in one request never stops the server.
"""

from __future__ import annotations

import asyncio
import math
import time
from contextlib import asynccontextmanager
from importlib.resources import files
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.routing import Route

from cvkit import __version__
from cvkit.errors import InputError
from cvkit.logs import get_logger
from cvkit.runtime.results import Detections
from cvkit.serve.encoding import MASK_FORMATS, FastJSONResponse, result_json
from cvkit.serve.extensions import (
    CONFIG_EXTENSION,
    STATISTICS_EXTENSION,
    ModelConfigResponse,
    RepositoryModel,
    StatisticsResponse,
    model_config,
    model_statistics,
    repository_index,
)
from cvkit.serve.metrics import ServeMetrics
from cvkit.serve.models import ServedModel
from cvkit.serve.settings import ServeSettings, model_files
from cvkit.serve.uploads import BodyLimit, BodyTooLarge, decode_image, too_large
from cvkit.serve.v2 import (
    BINARY_EXTENSION,
    HEADER_LENGTH,
    MODEL_VERSION,
    ErrorResponse,
    InferenceRequest,
    InferenceResponse,
    LiveResponse,
    ModelMetadataResponse,
    ReadyResponse,
    ServerMetadataResponse,
    V2Error,
    decompressed,
    model_metadata,
    parse_request,
    problems,
    request_tensor,
    requested_outputs,
    response_outputs,
)

logger = get_logger("serve")

PREDICT_PATH = "/v1/models/{name}/predict"
MODEL_VERSIONS = [MODEL_VERSION]
INFER_PATHS = ("/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer")
# the requests Triton's statistics count: inference on the model, by any of its endpoints
INFERENCE_ENDPOINTS = frozenset({*INFER_PATHS, PREDICT_PATH})
# optional JSON body, read by the route itself (tritonclient sends an empty one)
INDEX_REQUEST_BODY = {
    "requestBody": {
        "required": False,
        "content": {
            "application/json": {
                "schema": {"type": "object", "properties": {"ready": {"type": "boolean"}}}
            }
        },
    }
}
# the infer routes read their body themselves (see run_inference); this documents it
INFER_REQUEST_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/InferenceRequest"}}
        },
    }
}
# bodies up to this size are decoded on the event loop (a 12 KB, 160-px JPEG took 0.23 ms on
# 2 AVX2-only EPYC cores); larger ones in a thread, so a big photo never holds the loop
INLINE_DECODE_BYTES = 64 * 1024
IMAGE_BODY = {"type": "string", "format": "binary"}
_ERROR_BODY = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
PREDICT_OPERATION = {
    "summary": "Predict",
    "description": "Run the model on one JPEG/PNG image (raw body or multipart `file`).",
    "operationId": "predict_v1_models__name__predict_post",
    "parameters": [
        {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}},
        {
            "name": "score_threshold",
            "in": "query",
            "required": False,
            "schema": {"type": "number", "minimum": 0, "maximum": 1},
        },
        {
            "name": "mask_format",
            "in": "query",
            "required": False,
            "schema": {"type": "string", "enum": list(MASK_FORMATS), "default": "png"},
        },
    ],
    "requestBody": {
        "required": True,
        "content": {
            "image/jpeg": {"schema": IMAGE_BODY},
            "image/png": {"schema": IMAGE_BODY},
            "application/octet-stream": {"schema": IMAGE_BODY},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": IMAGE_BODY},
                    "required": ["file"],
                }
            },
        },
    },
    "responses": {
        "200": {
            "description": "The typed result's JSON",
            "content": {"application/json": {"schema": {"type": "object"}}},
        },
        **{
            str(status): {"description": description, "content": _ERROR_BODY}
            for status, description in (
                (400, "Bad Request"),
                (404, "Not Found"),
                (413, "Request Entity Too Large"),
                (504, "Gateway Timeout"),
            )
        },
    },
}


class ServeHTTPError(Exception):
    """An answer other than 200: ``status`` and the message of its ``{"error": ...}`` body."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorResponse} for status in statuses}


class _Metrics:
    """ASGI middleware counting every request by its route, model and status code."""

    def __init__(self, app, metrics: ServeMetrics, models: dict[str, ServedModel]) -> None:
        self.app, self.metrics, self.models = app, metrics, models

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def recording_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            route = scope.get("route")
            name = scope.get("path_params", {}).get("name", "")
            self.metrics.observe_request(
                getattr(route, "path", "other"),
                name if name in self.models else "",
                status,
                started,
            )


def _read_index() -> str:
    return files("cvkit.serve").joinpath("static/index.html").read_text(encoding="utf-8")


def create_app(settings: ServeSettings) -> FastAPI:
    """The server for ``settings``: every model is loaded before this returns.

    Raises:
        ServeError: bad model paths; ModelFileError / ProviderError: a model does not load.
    """
    metrics = ServeMetrics()
    models = {
        name: ServedModel(name, path, settings, metrics)
        for name, path in model_files(settings.models).items()
    }
    index = _read_index()
    # a graph does not change while it is served: describe each one once, at load
    # (create_app called without serve() holds "auto" workers: then this process is the one copy)
    instances = settings.workers if isinstance(settings.workers, int) else 1
    metadata = {name: model_metadata(name, model.model) for name, model in models.items()}
    configs = {
        name: model_config(name, model, settings.max_delay_ms, instances)
        for name, model in models.items()
    }

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        for model in models.values():
            model.start()
        logger.info("serving %s", ", ".join(f"{n} ({m.task})" for n, m in models.items()))
        yield
        for model in models.values():
            await model.stop()

    app = FastAPI(
        title="cvkit serve",
        version=__version__,
        description="KServe V2 inference and an image endpoint for exported cvkit models.",
        lifespan=lifespan,
    )

    def served(name: str) -> ServedModel:
        if name not in models:
            raise ServeHTTPError(404, f"model {name!r} not found; served: {sorted(models)}")
        return models[name]

    async def answer(submitted, what: str):
        try:
            return await asyncio.wait_for(submitted, settings.timeout_s)
        except TimeoutError:
            raise ServeHTTPError(
                504, f"{what}: no answer within the {settings.timeout_s:g} s timeout"
            ) from None

    @app.exception_handler(ServeHTTPError)
    async def serve_error(_: Request, exc: ServeHTTPError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(
            {"error": f"invalid request: {problems(exc.errors())}"}, status_code=400
        )

    @app.exception_handler(Exception)
    async def internal_error(_: Request, exc: Exception) -> JSONResponse:
        logger.exception("request failed")
        return JSONResponse({"error": f"{type(exc).__name__}: {exc}"}, status_code=500)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(index)

    @app.get("/v2", response_model=ServerMetadataResponse)
    async def server_metadata() -> ServerMetadataResponse:
        return ServerMetadataResponse(
            name="cvkit",
            version=__version__,
            extensions=[BINARY_EXTENSION, CONFIG_EXTENSION, STATISTICS_EXTENSION],
        )

    @app.get("/v2/health/live", response_model=LiveResponse)
    async def live() -> LiveResponse:
        return LiveResponse(live=True)

    @app.get("/v2/health/ready", response_model=ReadyResponse)
    async def ready() -> ReadyResponse:
        return ReadyResponse(ready=True)

    def versioned(name: str, version: str) -> ServedModel:
        model = served(name)
        if version not in MODEL_VERSIONS:
            raise ServeHTTPError(
                404, f"model {name!r} has no version {version!r}; versions: {MODEL_VERSIONS}"
            )
        return model

    def statistics(names: list[str]) -> StatisticsResponse:
        usage = metrics.model_usage(names, INFERENCE_ENDPOINTS)
        return StatisticsResponse(
            model_stats=[model_statistics(name, usage[name]) for name in names]
        )

    # before GET /v2/models/{name}, which would take "stats" for a model's name
    @app.get("/v2/models/stats", response_model=StatisticsResponse)
    async def all_statistics() -> StatisticsResponse:
        return statistics(list(models))

    def on_model_urls(
        suffix: str, response_model: type, names: tuple[str, str] | None = None, **options: Any
    ):
        """Route ``GET /v2/models/{name}{suffix}`` and its ``/versions/{version}`` twin to the
        decorated ``handler(name, model)`` (404 for an unknown model or version); ``names``:
        the two routes' names (their OpenAPI operations), by default the handler's name with
        ``_latest`` and ``_pinned``."""

        def register(handler):
            async def latest(name: str):
                return handler(name, served(name))

            async def pinned(name: str, version: str):
                return handler(name, versioned(name, version))

            route_names = names or (f"{handler.__name__}_latest", f"{handler.__name__}_pinned")
            twins = zip(("", "/versions/{version}"), (latest, pinned), route_names, strict=True)
            for path, endpoint, route_name in twins:
                app.get(
                    f"/v2/models/{{name}}{path}{suffix}",
                    response_model=response_model,
                    responses=_errors(404),
                    name=route_name,
                    **options,
                )(endpoint)
            return handler

        return register

    @on_model_urls("/stats", StatisticsResponse)
    def model_stats(name: str, _: ServedModel) -> StatisticsResponse:
        return statistics([name])

    @on_model_urls("/config", ModelConfigResponse, response_model_exclude_none=True)
    def model_configuration(name: str, _: ServedModel) -> ModelConfigResponse:
        return configs[name]

    @app.post(
        "/v2/repository/index",
        response_model=list[RepositoryModel],
        responses=_errors(400),
        openapi_extra=INDEX_REQUEST_BODY,
    )
    async def v2_repository_index(request: Request) -> list[RepositoryModel]:
        try:
            return repository_index(await request.body(), list(models))
        except V2Error as exc:
            raise ServeHTTPError(400, str(exc)) from None

    def not_supported(action: str, name: str) -> ServeHTTPError:
        return ServeHTTPError(
            400,
            f"{action} of model {name!r} is not supported: cvkit serve loads its models at "
            f"start (served: {sorted(models)}); restart it with the models to serve",
        )

    @app.post("/v2/repository/models/{name}/load", responses=_errors(400))
    async def v2_load(name: str) -> None:
        raise not_supported("load", name)

    @app.post("/v2/repository/models/{name}/unload", responses=_errors(400, 404))
    async def v2_unload(name: str) -> None:
        served(name)
        raise not_supported("unload", name)

    @on_model_urls("", ModelMetadataResponse, names=("v2_model_metadata", "v2_version_metadata"))
    def model_metadata_body(name: str, _: ServedModel) -> ModelMetadataResponse:
        return metadata[name]

    @on_model_urls("/ready", ReadyResponse, names=("model_ready", "version_ready"))
    def model_readiness(*_: Any) -> ReadyResponse:
        return ReadyResponse(ready=True)

    async def run_inference(name: str, model: ServedModel, request: Request) -> Response:
        # the body is read here, whatever its content type: Triton's clients send none, and a
        # body with binary tensors is JSON followed by raw bytes
        body = await request.body()
        try:
            body = decompressed(
                body, request.headers.get("content-encoding"), settings.max_upload_bytes
            )
            inference, binary = parse_request(body, request.headers.get(HEADER_LENGTH))
            tensor = request_tensor(inference, model.model, model.max_batch, binary)
            wanted = requested_outputs(inference, model.model.output_names)
        except BodyTooLarge:
            raise ServeHTTPError(413, too_large(settings.max_upload_bytes)) from None
        except V2Error as exc:
            raise ServeHTTPError(400, str(exc)) from None
        outputs = await answer(model.tensors.submit(tensor, rows=len(tensor)), f"model {name!r}")
        described, blobs = response_outputs(outputs, wanted)
        answered = InferenceResponse(
            model_name=name, model_version=MODEL_VERSION, id=inference.id, outputs=described
        )
        header = orjson.dumps(answered.model_dump(mode="json", exclude_none=True))
        if not blobs:
            return Response(header, media_type="application/json")
        return Response(
            b"".join([header, *blobs]),
            media_type="application/octet-stream",
            headers={HEADER_LENGTH: str(len(header))},
        )

    async def infer(name: str, request: Request) -> Response:
        return await run_inference(name, served(name), request)

    async def infer_version(name: str, version: str, request: Request) -> Response:
        return await run_inference(name, versioned(name, version), request)

    for path, endpoint in zip(INFER_PATHS, (infer, infer_version), strict=True):
        app.post(
            path,
            response_model=InferenceResponse,
            responses=_errors(400, 404, 413, 504),
            openapi_extra=INFER_REQUEST_BODY,
        )(endpoint)

    @app.get("/v1/models")
    async def list_models() -> dict[str, list[dict[str, Any]]]:
        return {"models": [model.describe() for model in models.values()]}

    @app.get("/v1/models/{name}", responses=_errors(404))
    async def describe_model(name: str) -> dict[str, Any]:
        return served(name).describe()

    async def predict(request: Request) -> Response:
        # FastAPI's router sets scope["route"] (the metrics' label) only for its own routes
        request.scope["route"] = predict_route
        name = request.path_params["name"]
        model = served(name)
        score_threshold, mask_format = _predict_options(request)
        with model.images.incoming():  # a batch being gathered waits for this image
            data = await _upload_bytes(request, settings.max_upload_bytes)
            try:
                # a small image decodes faster than a hop to a thread and back
                if len(data) <= INLINE_DECODE_BYTES:
                    image = decode_image(data)
                else:
                    image = await run_in_threadpool(decode_image, data)
            except InputError as exc:
                raise ServeHTTPError(400, str(exc)) from None
            submitted = model.images.enqueue(image)
        result = await answer(submitted, f"model {name!r}")
        if score_threshold is not None and isinstance(result, Detections):
            result = result.above(score_threshold)
        height, width = image.shape[:2]
        return FastJSONResponse(
            {
                "model": name,
                "task": model.task,
                "image": {"height": height, "width": width},
                **result_json(result, mask_format),
            }
        )

    # A plain Starlette route: FastAPI's parameter solving and response handling cost more
    # event-loop time per request than the handler itself (the loop is what limits a busy
    # server); its OpenAPI entry is PREDICT_OPERATION.
    predict_route = Route(PREDICT_PATH, predict, methods=["POST"])
    app.router.routes.append(predict_route)

    @app.get("/metrics", response_class=Response)
    async def prometheus() -> Response:
        return Response(metrics.exposition(), media_type=metrics.content_type)

    generate_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            # FastAPI's own schema (cached on the app) plus the plain route's operation and the
            # body the infer routes parse themselves
            schema = generate_openapi()
            schema["paths"][PREDICT_PATH] = {"post": PREDICT_OPERATION}
            request = InferenceRequest.model_json_schema(
                ref_template="#/components/schemas/{model}"
            )
            components = schema["components"]["schemas"]
            components.update(request.pop("$defs"))
            components["InferenceRequest"] = request
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.add_middleware(BodyLimit, max_bytes=settings.max_upload_bytes)
    app.add_middleware(_Metrics, metrics=metrics, models=models)
    app.state.models = models
    return app


def _number(text: str) -> float:
    """``float(text)``, or NaN for text that is not a number."""
    try:
        return float(text)
    except ValueError:
        return math.nan


def _predict_options(request: Request) -> tuple[float | None, str]:
    """``score_threshold`` (None or a number in [0, 1]) and ``mask_format`` of a predict URL.

    Raises:
        ServeHTTPError: 400 naming the query parameter and its value.
    """
    params = request.query_params
    raw = params.get("score_threshold")
    score_threshold = None if raw is None else _number(raw)
    if score_threshold is not None and not 0 <= score_threshold <= 1:  # NaN fails too
        raise ServeHTTPError(
            400, f"invalid request: query.score_threshold: {raw!r} is not a number in [0, 1]"
        )
    mask_format = params.get("mask_format", "png")
    if mask_format not in MASK_FORMATS:
        raise ServeHTTPError(
            400, f"invalid request: query.mask_format: {mask_format!r} is not one of {MASK_FORMATS}"
        )
    return score_threshold, mask_format


async def _upload_bytes(request: Request, max_bytes: int) -> bytes:
    """The image bytes of a predict request: the raw body, or the multipart ``file`` part."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        return await request.body()
    form = await request.form(max_files=1, max_fields=8, max_part_size=max_bytes)
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise ServeHTTPError(400, "multipart body has no 'file' part holding the image")
    return await upload.read()
