"""What this process may use of the machine: its cores, the memory free now, and how busy the
cores are with other work. The thread and worker counts chosen from these are in
:func:`plan_cpu`."""

from __future__ import annotations

import ctypes
import functools
import os
import sys
import time
from dataclasses import dataclass

__all__ = [
    "CpuPlan",
    "LoadMonitor",
    "available_cpus",
    "available_memory",
    "busy_cores",
    "keep_freed_memory",
    "plan_cpu",
    "process_cpu_seconds",
    "resolve_workers",
    "threads_for",
]

MAX_AUTO_WORKERS = 4
"""The most DataLoader workers ``data.workers: auto`` starts."""
# glibc's mallopt parameters and the values keep_freed_memory sets
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_MAX = 32 * 2**20  # glibc's ceiling on 64-bit systems
_TRIM_THRESHOLD = 2**30


def available_cpus() -> int:
    """CPU cores this process may run on (its affinity mask, not the host's core count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def available_memory() -> int:
    """Bytes of memory available to new allocations (``MemAvailable``), or 0 if unknown."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


def _cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies of all cores from ``/proc/stat``, or None off Linux."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(v) for v in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])
    return total - idle, total


def busy_cores(interval: float = 0.25) -> float:
    """How many cores other processes keep busy, sampled over ``interval`` seconds while this
    process sleeps (0 where it cannot be measured)."""
    before = _cpu_times()
    if before is None:
        return 0.0
    time.sleep(interval)
    after = _cpu_times()
    busy, total = after[0] - before[0], after[1] - before[1]
    if total <= 0:
        return 0.0
    return busy / total * (os.cpu_count() or 1)


@dataclass(frozen=True)
class CpuPlan:
    """How a training process uses the CPU.

    Attributes:
        cores: cores this process may run on.
        busy: cores other processes kept busy when the plan was made.
        threads: torch intra-op threads for the model step.
        workers: DataLoader worker processes.
    """

    cores: int
    busy: float
    threads: int
    workers: int


@functools.lru_cache(maxsize=1)
def plan_cpu() -> CpuPlan:
    """The thread and worker counts for this machine as it is now (measured once per process).

    The cores other processes keep busy are left to them (:func:`threads_for`), and the free
    ones are shared so that compute threads plus worker processes never exceed them: a
    worker that shares a core with a compute thread stalls every parallel op as a foreign
    process does. With at most 2 free cores there are no workers (the main process loads
    each batch itself; with ``data.cache`` that is ~2 ms per 128-px image against ~9 ms for
    the SSD step: measured in ``benchmarks/results/train.md``); beyond that one worker per 4
    free cores (at most :data:`MAX_AUTO_WORKERS`) and the rest compute. With CUDA the GPU
    computes: workers take the free cores but one.
    """
    import torch

    cores = available_cpus()
    busy = min(busy_cores(), float(cores))
    free = threads_for(busy, cores)
    if torch.cuda.is_available():
        workers = min(2 * MAX_AUTO_WORKERS, free - 1)
        return CpuPlan(cores, busy, max(1, free - workers), workers)
    workers = 0 if free <= 2 else min(MAX_AUTO_WORKERS, max(1, free // 4))
    return CpuPlan(cores, busy, free - workers, workers)


def resolve_workers(workers: int | str) -> int:
    """``data.workers``: the number given, or :func:`plan_cpu`'s for ``auto``."""
    return plan_cpu().workers if workers == "auto" else int(workers)


def process_cpu_seconds() -> float:
    """CPU seconds used so far by this process (all its threads) and its live child processes
    (DataLoader workers), where ``/proc`` lists them; else this process alone."""
    total = time.process_time()
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return total
    for task in tasks:
        try:
            with open(f"/proc/self/task/{task}/children") as handle:
                children = handle.read().split()
        except OSError:
            continue
        for child in children:
            try:
                with open(f"/proc/{child}/stat") as handle:
                    fields = handle.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / tick  # utime + stime
    return total


class LoadMonitor:
    """How many cores other processes used between two :meth:`sample` calls.

    ``busy cores of the whole machine - cores this process (and its workers) used``, from
    ``/proc/stat`` and :func:`process_cpu_seconds`.
    """

    def __init__(self) -> None:
        self._last = self._now()

    @staticmethod
    def _now() -> tuple[float, tuple[int, int] | None, float]:
        return time.monotonic(), _cpu_times(), process_cpu_seconds()

    def sample(self) -> float | None:
        """Cores kept busy by other processes since the last call (None: not measurable)."""
        now = self._now()
        (wall0, cpu0, own0), (wall1, cpu1, own1) = self._last, now
        self._last = now
        if cpu0 is None or cpu1 is None or cpu1[1] <= cpu0[1] or wall1 <= wall0:
            return None
        machine = (cpu1[0] - cpu0[0]) / (cpu1[1] - cpu0[1]) * (os.cpu_count() or 1)
        return max(0.0, machine - (own1 - own0) / (wall1 - wall0))


def threads_for(busy: float, cores: int | None = None) -> int:
    """Compute threads for this process when other processes keep ``busy`` cores busy: the
    cores left (at least 1). A parallel op waits for its slowest thread, so a thread that
    shares its core with another process slows every op down (by far more than its share)."""
    cores = available_cpus() if cores is None else cores
    return max(1, round(cores - min(busy, float(cores))))


@functools.cache
def keep_freed_memory() -> bool:
    """Make glibc's allocator keep freed memory for reuse instead of handing it back to the
    kernel, for the rest of the process. Returns whether it did (False off glibc/Linux).

    A CPU training step frees and re-allocates the same large tensors every step (4 MiB each
    for the activations and gradients of a 64 x 64 stage at batch 16). By default glibc maps
    some blocks of that size with ``mmap`` and unmaps them on ``free``, and trims the heap when
    several are freed, so every step page-faults them in again: ~3,000 minor faults per step
    of the default SSD on a 2-core AMD EPYC, 5% of its training run's CPU time in the kernel.
    Blocks up to 32 MiB now come from the heap (``M_MMAP_THRESHOLD``) and up to 1 GiB of free
    heap top stays mapped (``M_TRIM_THRESHOLD``); the process's resident memory stays near
    its peak instead of shrinking between steps.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(
        mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)
        and mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
    )
