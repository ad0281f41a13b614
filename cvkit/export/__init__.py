"""Export trained models to ONNX (with NMS in the graph for detectors) and check them.

``cvkit.export.onnx.export_model(model, path, metadata, options)`` writes a self-describing
``.onnx`` file that :mod:`cvkit.runtime` serves without torch; ``cvkit export`` does the same
from a checkpoint.
"""
