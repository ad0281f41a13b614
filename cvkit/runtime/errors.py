"""Exceptions of the torch-free runtime.

They derive from :class:`cvkit.errors.CvkitError` (a module that imports nothing heavy), so the
CLI reports them as one-line messages and callers can catch every cvkit failure at once.
:class:`~cvkit.errors.InputError` lives in :mod:`cvkit.errors` because datasets share the
image reader that raises it (:func:`cvkit.images.read_image`).
"""

from cvkit.errors import CvkitError, InputError

__all__ = ["InputError", "ModelFileError", "ProviderError"]


class ModelFileError(CvkitError, ValueError):
    """The model file is missing, is not ONNX, is corrupt, or lacks cvkit's metadata."""


class ProviderError(CvkitError, RuntimeError):
    """An execution provider that was asked for is unknown or did not start."""
