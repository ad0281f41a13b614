"""What the benchmarks say about the machine they ran on: the CPU model and the load."""

from __future__ import annotations

import platform
import subprocess


def cpu_model() -> str:
    """The CPU's model name as ``lscpu`` reports it (the processor string without lscpu)."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or platform.machine()
    names = [line.split(":", 1)[1].strip() for line in text.splitlines() if "Model name" in line]
    return names[0] if names else platform.machine()


def uptime() -> str:
    """``uptime``'s line (time, uptime and the 1/5/15-minute load averages)."""
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def vector_isa() -> str:
    """The CPU's widest vector extension (``lscpu`` flags) and the one torch's kernels run
    (``ATEN_CPU_CAPABILITY`` and ``ONEDNN_MAX_CPU_ISA`` lower it, to measure an AVX2-only
    machine's code paths on an AVX-512 one)."""
    import os

    import torch

    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        text = ""
    flags = set(text.split())
    widest = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    onednn = os.environ.get("ONEDNN_MAX_CPU_ISA", "default")
    return (
        f"{widest} CPU, torch kernels {torch.backends.cpu.get_cpu_capability()}, "
        f"oneDNN ISA {onednn}"
    )
