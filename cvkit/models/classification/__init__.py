"""Image classification: backbone + head models, shape-crop and folder datasets, metrics.

Importing this package registers the ``classifier`` model with :mod:`cvkit.models.build`.
"""

from cvkit.models.classification.data import ImageFolderDataset, ObjectCropDataset
from cvkit.models.classification.metrics import confusion_matrix, plot_confusion_matrix
from cvkit.models.classification.model import ImageClassifier, build_classifier

__all__ = [
    "ImageClassifier",
    "ImageFolderDataset",
    "ObjectCropDataset",
    "build_classifier",
    "confusion_matrix",
    "plot_confusion_matrix",
]
