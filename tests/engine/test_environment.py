"""Device choice, seeding and thread configuration."""

import random

import numpy as np
import pytest
import torch

from cvkit.engine.environment import (
    available_cpus,
    configure_threads,
    seed_everything,
    select_device,
)
from cvkit.errors import ConfigError


def test_auto_device_matches_cuda_availability():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert select_device("auto").type == expected
    assert select_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_explicit_cuda_without_gpu_fails_loudly():
    with pytest.raises(ConfigError, match="CUDA is not available"):
        select_device("cuda")


def test_unknown_device_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown device 'tpu'"):
        select_device("tpu")


def test_seed_everything_reproduces_all_generators():
    def draw():
        return random.random(), np.random.rand(), torch.rand(3)

    seed_everything(7)
    first = draw()
    seed_everything(7)
    second = draw()
    assert first[:2] == second[:2]
    assert torch.equal(first[2], second[2])


def test_configure_threads(monkeypatch):
    previous = torch.get_num_threads()
    try:
        assert configure_threads(1) == 1 and torch.get_num_threads() == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        assert configure_threads() == 2
        monkeypatch.delenv("OMP_NUM_THREADS")
        assert configure_threads() == available_cpus()
    finally:
        torch.set_num_threads(previous)
