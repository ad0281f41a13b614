"""Fixtures of the data tests: a tiny synthetic COCO dataset and a private cache folder."""

from pathlib import Path

import pytest

from cvkit.data.synthetic import write_synthetic

TINY = {"num_train": 8, "num_val": 4, "image_size": 64, "seed": 3}


@pytest.fixture(scope="session")
def tiny_synthetic(tmp_path_factory) -> Path:
    """A synthetic COCO dataset of 8 train / 4 val images at 64 px (written once)."""
    return write_synthetic(tmp_path_factory.mktemp("synthetic"), **TINY)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Never touch the user's ~/.cache from tests."""
    monkeypatch.setenv("CVKIT_CACHE_DIR", str(tmp_path / "cache"))


def pytest_collection_modifyitems(items):
    """Third-party deprecations that are not ours: pycocotools' Cython decode under numpy 2,
    and torchvision.io's decoders (used by the benchmark's torchvision pipeline)."""
    for item in items:
        if "tests/data/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(
                pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
            )
            item.add_marker(
                pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")
            )
