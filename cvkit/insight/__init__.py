"""Looking inside trained models: ``cvkit viz filters | features | cam``.

- :mod:`cvkit.insight.filters`: a convolution's filters as an image grid.
- :mod:`cvkit.insight.features`: feature maps of named layers (forward hooks) or of every
  backbone stage, as image grids.
- :mod:`cvkit.insight.cam`: class activation maps with the ``grad-cam`` package
  (``pip install cvkit[insight]``) for classifiers, segmenters and detectors; a detector's
  target is the pre-NMS score of the candidate that produced a detection, which is
  differentiable, so the gradient methods (Grad-CAM, HiResCAM, ...) work on it.
- :mod:`cvkit.insight.commands`: the command-line handlers.
"""
