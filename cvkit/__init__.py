"""cvkit: computer-vision pipelines on PyTorch, from data to a served ONNX model.

The top level imports no torch, so ``import cvkit`` is fast and the torch-free runtime
(``cvkit.runtime``) works where torch is not installed. Import the stage you need:
``from cvkit.ops import box_iou, nms``.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "load", "train"]

# The Python API loads lazily: ``import cvkit`` stays torch-free and fast.
_API = {"load": "cvkit.engine.api", "train": "cvkit.engine.api"}


def __getattr__(name: str):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'cvkit' has no attribute {name!r}")
