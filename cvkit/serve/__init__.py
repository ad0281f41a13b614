"""HTTP serving of exported cvkit models: ``cvkit serve MODEL.onnx [MORE.onnx | FOLDER]``.

A FastAPI app on uvicorn over the torch-free runtime (:mod:`cvkit.runtime`): the KServe V2
protocol (health, model metadata, ``infer`` on JSON or binary tensors) with Triton's model
configuration, statistics and repository index extensions (:mod:`cvkit.serve.extensions`), an
image endpoint returning the typed result's JSON, dynamic batching of concurrent requests into
one ``session.run`` (:mod:`cvkit.serve.batcher`), Prometheus metrics at ``/metrics`` and a web
page at ``/``.
Needs the ``serve`` extra (``pip install cvkit[serve]``); imports no torch.
"""

from cvkit.serve.app import create_app
from cvkit.serve.server import serve
from cvkit.serve.settings import ServeError, ServeSettings

__all__ = ["ServeError", "ServeSettings", "create_app", "serve"]
