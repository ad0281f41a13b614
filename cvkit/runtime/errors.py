"""Exceptions of the torch-free runtime.

They derive from :class:`cvkit.errors.CvkitError` (a module that imports nothing heavy), so the
CLI reports them as one-line messages and callers can catch every cvkit failure at once.
"""

from cvkit.errors import CvkitError


class ModelFileError(CvkitError, ValueError):
    """The model file is missing, is not ONNX, is corrupt, or lacks cvkit's metadata."""


class InputError(CvkitError, ValueError):
    """An image or batch has the wrong type, shape or dtype for the model, or cannot be read."""


class ProviderError(CvkitError, RuntimeError):
    """An execution provider that was asked for is unknown or did not start."""
