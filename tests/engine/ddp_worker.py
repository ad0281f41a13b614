"""One rank of the DDP test, started by ``torchrun --nproc_per_node=2`` (gloo, CPU).

Trains the toy model for 2 epochs with a DistributedSampler (no shuffling, 2 images per
rank per step) into ``OUT/run<rank>`` and saves the final weights to ``OUT/rank<rank>.pt``.
"""

import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader, DistributedSampler

sys.path.insert(0, str(Path(__file__).parent))

from engine_toys import LossRecorder, ToyDataset, ToyModel, ToyTask, toy_config

from cvkit.engine.distributed import cleanup_distributed, init_distributed
from cvkit.engine.rundir import RunDir
from cvkit.engine.trainer import Trainer


def main(out: Path) -> None:
    torch.set_num_threads(1)
    info = init_distributed()
    config = toy_config("train.epochs=2", "train.lr=0.1")
    torch.manual_seed(0)
    dataset = ToyDataset(8)
    sampler = DistributedSampler(dataset, shuffle=False)
    train = DataLoader(dataset, batch_size=2, sampler=sampler)
    val = DataLoader(ToyDataset(4, seed=1), batch_size=4)
    run = RunDir(out / f"run{info.rank}")
    for folder in (run.root, run.weights, run.plots):
        folder.mkdir(parents=True, exist_ok=True)
    recorder = LossRecorder()
    trainer = Trainer(
        config, ToyTask(config), ToyModel(), train, val, run=run, callbacks=[recorder]
    )
    trainer.fit()
    torch.save(trainer.model.state_dict(), out / f"rank{info.rank}.pt")
    torch.save(recorder.losses, out / f"losses{info.rank}.pt")
    cleanup_distributed()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
