"""The Python API beside the CLI: ``cvkit.train(cfg, **overrides)`` and ``cvkit.load(path)``."""

from __future__ import annotations
