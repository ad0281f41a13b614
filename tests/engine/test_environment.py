"""Device choice, seeding and thread configuration."""

import random
import resource
import subprocess
import sys

import numpy as np
import pytest
import torch

from cvkit import resources
from cvkit.engine.environment import configure_threads, seed_everything, select_device
from cvkit.errors import ConfigError
from cvkit.resources import plan_cpu, process_cpu_seconds, threads_for


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
        assert configure_threads() == plan_cpu().threads
    finally:
        torch.set_num_threads(previous)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU plan")
def test_threads_leave_the_cores_other_processes_use(monkeypatch):
    assert [threads_for(busy, 4) for busy in (0.0, 0.4, 1.0, 2.6, 9.0)] == [4, 4, 3, 1, 1]
    plan_cpu.cache_clear()
    monkeypatch.setattr(resources, "available_cpus", lambda: 2)
    monkeypatch.setattr(resources, "busy_cores", lambda: 1.0)  # a second job on one core
    try:
        assert plan_cpu() == resources.CpuPlan(cores=2, busy=1.0, threads=1, workers=0)
        plan_cpu.cache_clear()
        monkeypatch.setattr(resources, "available_cpus", lambda: 8)
        monkeypatch.setattr(resources, "busy_cores", lambda: 0.0)
        assert plan_cpu() == resources.CpuPlan(cores=8, busy=0.0, threads=6, workers=2)
        assert resources.resolve_workers("auto") == 2 and resources.resolve_workers(0) == 0
        plan_cpu.cache_clear()
        monkeypatch.setattr(resources, "busy_cores", lambda: 3.0)  # 5 free: 1 worker, 4 threads
        assert plan_cpu() == resources.CpuPlan(cores=8, busy=3.0, threads=4, workers=1)
    finally:
        plan_cpu.cache_clear()


def test_process_cpu_counts_live_workers():
    """A busy child process's CPU time is counted as this process's (it is a worker)."""
    code = (
        "import time\n"
        "end = time.process_time() + 0.5\n"
        "while time.process_time() < end: pass\n"
        "print(time.process_time(), flush=True)\n"
        "time.sleep(30)"
    )
    before = process_cpu_seconds()
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        child_cpu = float(child.stdout.readline())
        counted = process_cpu_seconds() - before
        assert child_cpu - 0.05 <= counted <= child_cpu + 0.3
    finally:
        child.kill()
        child.wait()


STEP_FAULTS_SCRIPT = """
import resource, sys, torch
from cvkit.resources import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
torch.manual_seed(0)
torch.set_num_threads(2)
net = torch.nn.Sequential(
    torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
    torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
)
images = torch.randn(16, 3, 64, 64)  # 4 MiB activations, as a training step's early stages
faults = []
for _ in range(20):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    net(images).square().mean().backward()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(sum(faults[-10:]))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_keep_freed_memory_stops_training_steps_from_faulting_pages_in():
    def faults(mode: str) -> int:
        run = subprocess.run(
            [sys.executable, "-c", STEP_FAULTS_SCRIPT, mode],
            capture_output=True,
            text=True,
            check=True,
        )
        return int(run.stdout.split()[-1])

    block = 4 * 2**20 // resource.getpagesize()
    # by default glibc returns the freed activations to the kernel and faults them in again
    # at every step (2-8 blocks per step here); kept, the last 10 steps reuse them (a late
    # warm-up step may still fault a block or two in)
    assert faults("default") > 10 * block
    assert faults("keep") < 3 * block
