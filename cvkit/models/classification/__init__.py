"""Image classification: backbone + head models, shape-crop and folder datasets, metrics.

Importing this package registers the ``classifier`` model with :mod:`cvkit.models.build`.
"""

from cvkit.models.classification.model import ImageClassifier, build_classifier

__all__ = ["ImageClassifier", "build_classifier"]
