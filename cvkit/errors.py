"""Exceptions cvkit raises for bad input.

Every error names what is wrong (the file, key or value) so a user can fix it without reading
a stack trace. The CLI prints the message of any :class:`CvkitError` and exits non-zero.
"""


class CvkitError(Exception):
    """Base class of every error cvkit raises on purpose."""


class ConfigError(CvkitError, ValueError):
    """A config file or ``--set`` override is malformed: unknown key, wrong type, bad value."""


class DatasetError(CvkitError, ValueError):
    """A dataset is missing, unreadable or fails its checks."""


class InputError(CvkitError, ValueError):
    """An image or batch has the wrong type, shape or dtype for the model, or cannot be read."""


class ImageError(DatasetError, InputError):
    """An image file is missing or cannot be decoded, or an array is not an image.

    Both a :class:`DatasetError` (a dataset's file) and an :class:`InputError` (a predictor's
    input): :func:`cvkit.images.read_image` serves datasets and the runtime alike.
    """


class CheckpointError(CvkitError, ValueError):
    """A checkpoint file is missing, truncated or was written for another model."""


class ExportError(CvkitError, RuntimeError):
    """Export to ONNX failed or the exported graph disagrees with the torch model."""


class NotBuiltError(CvkitError, NotImplementedError):
    """A command or option exists in the interface but its implementation has not landed."""
