"""Image classification: backbone + head models and their metrics.

The datasets live in :mod:`cvkit.data.classification`. Importing this package registers the
``classifier`` model with :mod:`cvkit.models.build`.
"""

from cvkit.models.classification.metrics import confusion_matrix, plot_confusion_matrix
from cvkit.models.classification.model import ImageClassifier, build_classifier

__all__ = [
    "ImageClassifier",
    "build_classifier",
    "confusion_matrix",
    "plot_confusion_matrix",
]
