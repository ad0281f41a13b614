"""Detectors, all following one contract (see :class:`~cvkit.models.detection.ssd.SSD`):
``model(images, targets)`` returns losses in training and detections in eval mode, and
``model.candidates(images)`` returns decoded pre-NMS boxes and per-class scores.

Importing this package registers the detectors with :func:`cvkit.models.build.register_model`.
"""

from cvkit.models.detection.ssd import SSD, build_ssd

__all__ = ["SSD", "build_ssd"]
