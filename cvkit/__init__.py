"""cvkit: computer-vision pipelines on PyTorch, from data to a served ONNX model.

The top level imports no torch, so ``import cvkit`` is fast and the torch-free runtime
(``cvkit.runtime``) works where torch is not installed. Import the stage you need:
``from cvkit.ops import box_iou, nms``.
"""

__version__ = "0.1.0"
