"""Multi-node training as ``torchrun --nnodes 2`` runs it, on one machine: two launches of one
process each (gloo, static or c10d rendezvous on 127.0.0.1), one per "node".

Checked: the rendezvous gives ranks 0 and 1 with one local process each, both end with the
same weights, each epoch's DistributedSampler shard is the one torch's sampler gives for that
epoch (a new shuffle every epoch, the two shards covering the dataset once), only rank 0
writes the run folder, and a checkpoint of the 2-process job refuses to resume in 1 process.

This file is also the worker: ``torchrun ... test_multinode.py OUT`` runs :func:`worker`.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

sys.path.insert(0, str(Path(__file__).parent))

from engine_toys import ToyDataset, ToyModel, ToyTask, toy_config

from cvkit.engine.callbacks import Callback
from cvkit.engine.distributed import cleanup_distributed, init_distributed
from cvkit.engine.rundir import RunDir
from cvkit.engine.trainer import Trainer
from cvkit.errors import CheckpointError

EPOCHS, IMAGES, SAMPLER_SEED = 3, 8, 5


class SeenDataset(ToyDataset):
    """The toy dataset, remembering the indices it was read at (no loader workers: in order)."""

    def __init__(self, n: int) -> None:
        super().__init__(n)
        self.seen: list[int] = []

    def __getitem__(self, index: int):
        self.seen.append(int(index))
        return super().__getitem__(index)


class EpochShards(Callback):
    """Each epoch's training indices, in the order the model saw them."""

    def __init__(self, dataset: SeenDataset) -> None:
        self.dataset = dataset
        self.shards: list[list[int]] = []

    def on_epoch_end(self, trainer, row) -> None:
        self.shards.append(self.dataset.seen.copy())
        self.dataset.seen.clear()


def worker(out: Path) -> None:
    """One rank: 3 epochs of the toy model on a shuffled DistributedSampler shard, run folder
    ``OUT/run<rank>``; writes ``OUT/rank<rank>.pt`` (DistInfo, shards, final weights)."""
    torch.set_num_threads(1)
    info = init_distributed()
    config = toy_config(f"train.epochs={EPOCHS}", "train.lr=0.1")
    torch.manual_seed(0)
    dataset = SeenDataset(IMAGES)
    sampler = DistributedSampler(dataset, shuffle=True, seed=SAMPLER_SEED)
    shards = EpochShards(dataset)
    run = RunDir(out / f"run{info.rank}")
    for folder in (run.root, run.weights, run.plots):
        folder.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(
        config,
        ToyTask(config),
        ToyModel(),
        DataLoader(dataset, batch_size=2, sampler=sampler),
        DataLoader(ToyDataset(4, seed=1), batch_size=4),
        run=run,
        callbacks=[shards],
    )
    trainer.fit()
    result = {
        "info": dataclasses.asdict(info),
        "shards": shards.shards,
        "weights": trainer.model.state_dict(),
    }
    torch.save(result, out / f"rank{info.rank}.pt")
    cleanup_distributed()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch_two_nodes(out: Path, rendezvous: str) -> None:
    """Two ``torchrun --nnodes=2 --nproc-per-node=1`` launches at once, as on two machines
    that reach node 0 at 127.0.0.1: ``static`` with ``--node-rank=0|1 --master-addr``, or
    ``c10d`` with one ``--rdzv-endpoint`` (ranks assigned as the launches join)."""
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launches = []
    for node in (0, 1):
        if rendezvous == "static":
            meeting = [f"--node-rank={node}", "--master-addr=127.0.0.1", f"--master-port={port}"]
        else:
            meeting = ["--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}",
                       "--rdzv-id=cvkit-test"]  # fmt: skip
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2",
                   "--nproc-per-node=1", *meeting, __file__, str(out)]  # fmt: skip
        launches.append(
            subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
            )
        )
    for node, launch in enumerate(launches):
        try:
            output, _ = launch.communicate(timeout=150)
        except subprocess.TimeoutExpired:
            for other in launches:
                other.kill()
            raise
        assert launch.returncode == 0, f"node {node}:\n{output[-3000:]}"


@pytest.mark.slow  # 15-25 s each on 2 shared cores: four Python processes start torch
@pytest.mark.parametrize("rendezvous", ["static", "c10d"])
def test_two_nodes_one_process_each(tmp_path, rendezvous):
    launch_two_nodes(tmp_path, rendezvous)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert [rank["info"] for rank in ranks] == [
        {"rank": r, "local_rank": 0, "world_size": 2, "local_world_size": 1} for r in (0, 1)
    ]
    for name, value in ranks[0]["weights"].items():
        assert torch.equal(value, ranks[1]["weights"][name]), name
    # reference: torch's own sampler for each rank and epoch
    for epoch in range(EPOCHS):
        shards = [rank["shards"][epoch] for rank in ranks]
        for r, shard in enumerate(shards):
            sampler = DistributedSampler(
                range(IMAGES), num_replicas=2, rank=r, shuffle=True, seed=SAMPLER_SEED
            )
            sampler.set_epoch(epoch)
            assert shard == list(sampler), (epoch, r)
        assert sorted(shards[0] + shards[1]) == list(range(IMAGES))
    assert ranks[0]["shards"][0] != ranks[0]["shards"][1]  # a new shuffle each epoch
    # rank 0 alone writes checkpoints and metrics
    assert not any((tmp_path / "run1").rglob("*.*"))
    last = tmp_path / "run0" / "weights" / "last.pt"
    assert (tmp_path / "run0" / "weights" / "best.pt").is_file()
    checkpoint = torch.load(last, weights_only=False)
    assert (checkpoint["world_size"], checkpoint["epoch"]) == (2, EPOCHS)
    for name, value in ranks[0]["weights"].items():
        assert torch.equal(checkpoint["model"][name], value), name
    # the 2-process checkpoint does not resume in this single process
    config = toy_config(f"train.epochs={EPOCHS + 1}")
    single = Trainer(
        config, ToyTask(config), ToyModel(), DataLoader(ToyDataset(IMAGES), batch_size=4)
    )
    with pytest.raises(CheckpointError, match="written by a job of 2 processes, resumed with 1"):
        single.resume(last)


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
