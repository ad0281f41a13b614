"""Fixtures shared by the ops tests: reproducible random boxes, two threads, a CUDA device."""

import pytest
import torch


def _random_boxes(n: int, seed: int = 0, extent: float = 1000.0, max_size: float = 100.0):
    gen = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=gen) * extent
    wh = torch.rand(n, 2, generator=gen) * max_size + 1
    return torch.cat([xy, xy + wh], dim=1)


@pytest.fixture
def make_boxes():
    """``make_boxes(n, seed, extent, max_size)`` → ``Tensor[n, 4]`` xyxy, sides in [1, max+1]."""
    return _random_boxes


@pytest.fixture(autouse=True)
def _two_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(min(previous, 2))
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def cuda():
    """The CUDA device; skips the test without one."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    return torch.device("cuda")
