"""Running the app under uvicorn: ``cvkit serve`` and :func:`serve`.

``--workers auto`` (the default) is resolved first (:meth:`ServeSettings.resolved`: one process
per core on the CPU, up to four). One worker runs the app built here. Several workers are
separate processes that uvicorn starts by importing :func:`app_from_environment`; they read the
settings from the ``CVKIT_SERVE_SETTINGS`` environment variable and share their metrics through a
``PROMETHEUS_MULTIPROC_DIR`` folder made for this server. On SIGINT/SIGTERM uvicorn stops
accepting connections, lets the requests in flight finish (up to the request timeout), then
stops the batchers.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile

import uvicorn

from cvkit.logs import get_logger, setup_logging
from cvkit.resources import available_cpus
from cvkit.runtime.session import CPU, requested_providers
from cvkit.serve.app import create_app
from cvkit.serve.models import check_proposal_searches
from cvkit.serve.settings import SETTINGS_ENV, ServeSettings, model_files

logger = get_logger("serve")


def app_from_environment():
    """The app of a uvicorn worker process, built from ``$CVKIT_SERVE_SETTINGS``."""
    setup_logging()
    return create_app(ServeSettings.from_json(os.environ[SETTINGS_ENV]))


def serve(settings: ServeSettings) -> None:
    """Serve ``settings.models`` until interrupted (blocks).

    Raises:
        ServeError: bad model paths or limits; ModelFileError: a model does not load;
        ConfigError: a model computes proposals by selective search and OpenCV lacks it.
    """
    setup_logging()
    files = model_files(settings.models)
    settings = settings.resolved(available_cpus(), requested_providers(settings.providers) == [CPU])
    logger.info(
        "%d worker process%s, %s onnxruntime threads each",
        settings.workers,
        "" if settings.workers == 1 else "es",
        settings.threads or "the default",
    )
    options = {
        "host": settings.host,
        "port": settings.port,
        "access_log": False,
        "timeout_graceful_shutdown": int(settings.timeout_s) + 1,
    }
    if settings.workers == 1:
        uvicorn.run(create_app(settings), **options)
        return
    check_proposal_searches(files)
    metrics_dir = tempfile.mkdtemp(prefix="cvkit-serve-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    os.environ[SETTINGS_ENV] = settings.to_json()
    try:
        uvicorn.run(
            "cvkit.serve.server:app_from_environment",
            factory=True,
            workers=settings.workers,
            **options,
        )
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def run_serve(args: argparse.Namespace) -> int:
    """``cvkit serve``: the parsed command line → :func:`serve`."""
    serve(
        ServeSettings(
            models=tuple(args.model),
            host=args.host,
            port=args.port,
            workers=args.workers,
            max_batch=args.max_batch,
            max_delay_ms=args.max_delay_ms,
            max_upload_mb=args.max_upload_mb,
            timeout_s=args.timeout,
            providers=args.providers,
            threads=args.threads,
            spin=args.spin,
        )
    )
    return 0
