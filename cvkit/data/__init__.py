"""Datasets: records, formats (COCO, YOLO, VOC), the synthetic set, checks, transforms, loaders.

``build_dataset`` and ``build_loader`` are imported lazily so ``import cvkit.data`` stays light.
"""

from __future__ import annotations

from typing import Any

__all__ = ["build_dataset", "build_loader"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from cvkit.data import loader

        return getattr(loader, name)
    raise AttributeError(f"module 'cvkit.data' has no attribute {name!r}")
