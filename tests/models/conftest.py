"""Shared fixtures of the model tests."""

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn


@pytest.fixture
def torchvision_file(tmp_path: Path) -> Callable[..., tuple[nn.Module, Path]]:
    """Factory: a randomly initialized torchvision model (eval mode) and its saved state dict.

    BatchNorm running statistics are randomized too, so a wrongly mapped buffer shows.
    """

    def make(name: str, **kwargs: int) -> tuple[nn.Module, Path]:
        torch.manual_seed(0)
        options = {"init_weights": True} if name == "googlenet" else {}
        reference = getattr(torchvision.models, name)(weights=None, **options, **kwargs).eval()
        for module in reference.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
        path = tmp_path / f"{name}.pth"
        torch.save(reference.state_dict(), path)
        return reference, path

    return make


@pytest.fixture
def one_thread():
    """One intra-op thread: on 2 shared cores, two threads of small convolutions
    thrash (the YOLO overfit tests: 1.3 s against 0.14 s per step)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
