"""Exact resume of a real detection run with two persistent workers and the RAM cache."""

import pytest
import torch
from engine_toys import TINY_SSD, detect_trainer

from cvkit.config import load_config
from cvkit.engine.checkpoint import load_checkpoint
from cvkit.engine.rundir import RunDir
from cvkit.engine.tasks.detect import DetectTask

SETTINGS = [
    *TINY_SSD,
    "data.workers=2",
    "data.persistent_workers=true",
    "data.cache=ram",
    "data.synthetic.num_train=12",
    "train.epochs=3",
    "train.optimizer=adamw",
    "train.lr=0.003",
    "train.warmup_epochs=1",
    "train.ema=true",
]


class Interrupt(DetectTask):
    """Records every batch's loss; raises KeyboardInterrupt on the first batch of epoch 3."""

    def __init__(self, config, stop_at=None):
        super().__init__(config)
        self.losses, self.stop_at = [], stop_at

    def loss(self, model, batch):
        if len(self.losses) == self.stop_at:
            raise KeyboardInterrupt
        losses = super().loss(model, batch)
        self.losses.append(float(sum(losses.values()).detach()))
        return losses


def run(tmp_path, name, config, stop_at=None, resume=None, model_seed=0):
    task = Interrupt(config, stop_at)
    folder = tmp_path / name
    trainer = detect_trainer(config, task, folder, model_seed=model_seed)
    if resume:
        trainer.resume(resume)
    return trainer, task, RunDir(folder)


def test_resumed_run_with_persistent_workers_and_cache_equals_an_uninterrupted_one(tmp_path):
    config = load_config(overrides=[*SETTINGS, f"data.cache_dir={tmp_path / 'cache'}"])
    torch.manual_seed(1)
    full, full_task, _ = run(tmp_path, "full", config)
    full.fit()
    assert len(full_task.losses) == 9  # 3 epochs x 3 batches
    torch.manual_seed(1)
    cut, cut_task, folder = run(tmp_path, "cut", config, stop_at=6)
    with pytest.raises(KeyboardInterrupt):
        cut.fit()
    assert load_checkpoint(folder.last)["epoch"] == 2
    torch.manual_seed(99)  # a different global state: the run must not depend on it
    resumed, resumed_task, _ = run(tmp_path, "cut", config, resume=folder.last, model_seed=5)
    resumed.fit()
    assert cut_task.losses == full_task.losses[:6]
    assert resumed_task.losses == full_task.losses[6:]
    for name, value in full.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name
