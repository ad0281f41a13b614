"""The ASGI app: KServe V2 endpoints, the image endpoint, metrics and the web page.

Routes (errors are ``{"error": "..."}`` with the status named):

- ``GET /``: the web page (pick a model, drop an image, see the drawing and the JSON);
- ``GET /v2``, ``/v2/health/live``, ``/v2/health/ready``: server metadata and health;
- ``GET /v2/models/{name}`` (metadata), ``/v2/models/{name}/ready``, ``POST
  /v2/models/{name}/infer``: the V2 protocol on the graph's own tensors (400 naming the input
  for a wrong name, datatype or shape);
- ``GET /v1/models``, ``/v1/models/{name}``: the served models and their cvkit metadata;
- ``POST /v1/models/{name}/predict``: a JPEG/PNG as the raw body or a multipart ``file``;
  returns the typed result's JSON (boxes in original pixels, labels, names, scores; masks as
  RLE; class probabilities; a segmentation's mask as PNG or RLE);
- ``GET /metrics``: Prometheus text format (:mod:`cvkit.serve.metrics`).

Unknown models get 404, bodies over the limit 413, undecodable images 400 with the reason, and
requests not answered within the timeout 504; an error in one request never stops the server.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager
from importlib.resources import files
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from cvkit import __version__
from cvkit.errors import InputError
from cvkit.logs import get_logger
from cvkit.runtime.results import Detections
from cvkit.serve.encoding import MASK_FORMATS, result_json
from cvkit.serve.metrics import ServeMetrics
from cvkit.serve.models import ServedModel
from cvkit.serve.settings import ServeSettings, model_files
from cvkit.serve.uploads import BodyLimit, decode_image
from cvkit.serve.v2 import (
    ErrorResponse,
    InferenceRequest,
    InferenceResponse,
    LiveResponse,
    ModelMetadataResponse,
    ReadyResponse,
    ServerMetadataResponse,
    V2Error,
    model_metadata,
    request_tensor,
    response_outputs,
)

logger = get_logger("serve")

IMAGE_BODY = {"type": "string", "format": "binary"}
PREDICT_BODY = {
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
    }
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
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
            for error in exc.errors()
        )
        return JSONResponse({"error": f"invalid request: {problems}"}, status_code=400)

    @app.exception_handler(Exception)
    async def internal_error(_: Request, exc: Exception) -> JSONResponse:
        logger.exception("request failed")
        return JSONResponse({"error": f"{type(exc).__name__}: {exc}"}, status_code=500)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(index)

    @app.get("/v2", response_model=ServerMetadataResponse)
    async def server_metadata() -> ServerMetadataResponse:
        return ServerMetadataResponse(name="cvkit", version=__version__, extensions=[])

    @app.get("/v2/health/live", response_model=LiveResponse)
    async def live() -> LiveResponse:
        return LiveResponse(live=True)

    @app.get("/v2/health/ready", response_model=ReadyResponse)
    async def ready() -> ReadyResponse:
        return ReadyResponse(ready=True)

    @app.get("/v2/models/{name}", response_model=ModelMetadataResponse, responses=_errors(404))
    async def v2_model_metadata(name: str) -> ModelMetadataResponse:
        return model_metadata(name, served(name).model)

    @app.get("/v2/models/{name}/ready", response_model=ReadyResponse, responses=_errors(404))
    async def model_ready(name: str) -> ReadyResponse:
        served(name)
        return ReadyResponse(ready=True)

    @app.post(
        "/v2/models/{name}/infer",
        response_model=InferenceResponse,
        responses=_errors(400, 404, 413, 504),
    )
    async def infer(name: str, request: InferenceRequest) -> JSONResponse:
        model = served(name)
        try:
            tensor = request_tensor(request, model.model, model.max_batch)
        except V2Error as exc:
            raise ServeHTTPError(400, str(exc)) from None
        outputs = await answer(model.tensors.submit(tensor, rows=len(tensor)), f"model {name!r}")
        try:
            described = response_outputs(outputs, request)
        except V2Error as exc:
            raise ServeHTTPError(400, str(exc)) from None
        body = InferenceResponse(
            model_name=name, model_version="1", id=request.id, outputs=described
        )
        return JSONResponse(jsonable_encoder(body, exclude_none=True))

    @app.get("/v1/models")
    async def list_models() -> dict[str, list[dict[str, Any]]]:
        return {"models": [model.describe() for model in models.values()]}

    @app.get("/v1/models/{name}", responses=_errors(404))
    async def describe_model(name: str) -> dict[str, Any]:
        return served(name).describe()

    @app.post(
        "/v1/models/{name}/predict",
        openapi_extra=PREDICT_BODY,
        responses=_errors(400, 404, 413, 504),
    )
    async def predict(
        name: str,
        request: Request,
        score_threshold: float | None = Query(None, ge=0, le=1),
        mask_format: str = Query("png", pattern=f"^({'|'.join(MASK_FORMATS)})$"),
    ) -> JSONResponse:
        model = served(name)
        data = await _upload_bytes(request, settings.max_upload_bytes)
        try:
            image = await run_in_threadpool(decode_image, data)
        except InputError as exc:
            raise ServeHTTPError(400, str(exc)) from None
        result = await answer(model.images.submit(image), f"model {name!r}")
        if score_threshold is not None and isinstance(result, Detections):
            result = result.above(score_threshold)
        height, width = image.shape[:2]
        return JSONResponse(
            {
                "model": name,
                "task": model.task,
                "image": {"height": height, "width": width},
                **result_json(result, mask_format),
            }
        )

    @app.get("/metrics", response_class=Response)
    async def prometheus() -> Response:
        return Response(metrics.exposition(), media_type=metrics.content_type)

    app.add_middleware(BodyLimit, max_bytes=settings.max_upload_bytes)
    app.add_middleware(_Metrics, metrics=metrics, models=models)
    app.state.models = models
    return app


async def _upload_bytes(request: Request, max_bytes: int) -> bytes:
    """The image bytes of a predict request: the raw body, or the multipart ``file`` part."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        return await request.body()
    form = await request.form(max_files=1, max_fields=8, max_part_size=max_bytes)
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise ServeHTTPError(400, "multipart body has no 'file' part holding the image")
    return await upload.read()
