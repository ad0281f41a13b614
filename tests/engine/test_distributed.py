"""DDP on the CPU: two gloo processes train like one process on the union of their batches."""

import subprocess
import sys
from pathlib import Path

import torch
from engine_toys import LossRecorder, ToyDataset, ToyModel, ToyTask, toy_config
from torch.utils.data import DataLoader

from cvkit.engine.distributed import DistInfo, init_distributed, is_main_process
from cvkit.engine.trainer import Trainer

WORKER = Path(__file__).with_name("ddp_worker.py")


def test_ddp_two_cpu_processes_match_single_process_training(tmp_path):
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(WORKER),
        str(tmp_path),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]

    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    # DistributedSampler(shuffle=False) gives rank 0 images [0, 2], [4, 6] and rank 1 [1, 3],
    # [5, 7]: each step averages the gradients of the same 4 images one process sees at once.
    config = toy_config("train.epochs=2", "train.lr=0.1")
    torch.manual_seed(0)
    recorder = LossRecorder()
    single = Trainer(
        config,
        ToyTask(config),
        ToyModel(),
        DataLoader(ToyDataset(8), batch_size=4),
        callbacks=[recorder],
    )
    single.fit()
    for name, value in single.model.state_dict().items():
        assert torch.equal(rank0[name], rank1[name]), name
        torch.testing.assert_close(rank0[name], value, rtol=1e-5, atol=1e-6)
    # logged losses are averaged over ranks, so they equal the single process's batch losses
    losses = torch.load(tmp_path / "losses0.pt", weights_only=True)
    assert losses == torch.load(tmp_path / "losses1.pt", weights_only=True)
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(recorder.losses))
    # rank 0 alone validates, logs and writes checkpoints
    assert (tmp_path / "run0" / "weights" / "last.pt").is_file()
    assert (tmp_path / "run0" / "weights" / "best.pt").is_file()
    assert len((tmp_path / "run0" / "metrics.jsonl").read_text().splitlines()) == 2
    assert not any((tmp_path / "run1").rglob("*.*"))


def test_without_torchrun_everything_is_single_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert init_distributed() == DistInfo() and not DistInfo().enabled
    assert is_main_process()
