"""Semantic segmentation models.

Importing this package registers the ``fcn`` model with :mod:`cvkit.models.build`.
"""

from cvkit.models.segmentation.fcn import FCN, bilinear_kernel, build_fcn, upsampling_layer

__all__ = ["FCN", "bilinear_kernel", "build_fcn", "upsampling_layer"]
