"""Where and how reproducibly a run executes: device choice, seeding and CPU threads."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from cvkit.errors import ConfigError
from cvkit.resources import available_cpus, plan_cpu

__all__ = ["available_cpus", "configure_threads", "seed_everything", "select_device"]


def select_device(name: str = "auto") -> torch.device:
    """Resolve a device name from the config.

    Args:
        name: ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.

    Raises:
        ConfigError: CUDA was asked for explicitly but is not available; cvkit never falls back
            to the CPU silently.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(
            f"device: unknown device {name!r}; use auto, cpu, cuda or cuda:N"
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device: {name!r} was requested but CUDA is not available here")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device: {name!r} does not exist; {torch.cuda.device_count()} CUDA device(s) found"
            )
    return device


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global generator and torch (CPU and CUDA) from one seed."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def configure_threads(num_threads: int | None = None) -> int:
    """Set torch's intra-op thread count and return it.

    Uses ``num_threads`` when given, else ``OMP_NUM_THREADS`` when set, else the cores this
    process may use that other processes leave free now (:func:`cvkit.resources.plan_cpu`),
    so a 2-core container does not run 64 oversubscribed threads and a busy laptop does not
    run two threads on one free core.
    """
    if num_threads is None:
        env = os.environ.get("OMP_NUM_THREADS", "")
        num_threads = int(env) if env.isdigit() and int(env) > 0 else plan_cpu().threads
    torch.set_num_threads(num_threads)
    return num_threads
