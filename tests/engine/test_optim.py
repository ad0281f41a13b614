"""Optimizers from config and the warm-up + cosine/step learning-rate schedules."""

import math

import pytest
import torch
from torch import nn

from cvkit.config import load_config
from cvkit.engine.optim import LRSchedule, build_optimizer, build_scheduler, parameter_groups
from cvkit.errors import ConfigError


def test_warmup_then_cosine_golden_values():
    schedule = LRSchedule(
        "cosine",
        total_steps=11,
        steps_per_epoch=1,
        warmup_steps=2,
        warmup_factor=0.1,
        min_lr_ratio=0.0,
    )
    # warm-up: linear from 0.1 towards 1 over 2 steps, on top of the (still 1.0) cosine
    assert schedule(0) == pytest.approx(0.1)
    assert schedule(1) == pytest.approx(0.55)
    # cosine over steps 2..10: 1 at step 2, 0.5 halfway (step 6), 0 at the last step
    assert schedule(2) == pytest.approx(1.0)
    assert schedule(6) == pytest.approx(0.5)
    assert schedule(4) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert schedule(10) == pytest.approx(0.0)


def test_step_schedule_decays_at_milestone_epochs():
    schedule = LRSchedule("step", total_steps=40, steps_per_epoch=4, milestones=[3, 7], gamma=0.5)
    assert [schedule(s) for s in (0, 11, 12, 27, 28)] == pytest.approx([1, 1, 0.5, 0.5, 0.25])


def test_scheduler_drives_every_param_group_from_its_lr_mult():
    class TwoPart(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(3, 3)
            self.head = nn.Linear(3, 1)
            self.frozen = nn.Linear(3, 3).requires_grad_(False)

        def parameter_groups(self):
            return [
                {
                    "params": list(self.body.parameters()) + list(self.frozen.parameters()),
                    "lr_mult": 0.1,
                },
                {"params": list(self.head.parameters())},
            ]

    config = load_config(
        overrides=[
            "train.lr=0.2",
            "train.epochs=2",
            "train.warmup_epochs=0",
            "train.scheduler=step",
            "train.step_milestones=[1]",
            "train.optimizer=adamw",
        ]
    )
    model = TwoPart()
    optimizer = build_optimizer(model, config.train)
    assert isinstance(optimizer, torch.optim.AdamW)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.02, 0.2])
    frozen = {id(p) for p in model.frozen.parameters()}
    assert not any(id(p) in frozen for g in optimizer.param_groups for p in g["params"])
    scheduler = build_scheduler(optimizer, config.train, steps_per_epoch=3)
    for _ in range(3):
        optimizer.step()
        scheduler.step()
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.002, 0.02])


def test_sgd_settings_and_fully_frozen_model():
    config = load_config(overrides=["train.momentum=0.8", "train.nesterov=true"])
    optimizer = build_optimizer(nn.Linear(2, 2), config.train)
    assert isinstance(optimizer, torch.optim.SGD)
    group = optimizer.param_groups[0]
    assert group["momentum"] == 0.8 and group["nesterov"] and group["weight_decay"] == 5e-4
    with pytest.raises(ConfigError, match="no trainable parameters"):
        parameter_groups(nn.Linear(2, 2).requires_grad_(False))


def test_unsorted_milestones_are_a_config_error():
    with pytest.raises(ConfigError, match="step_milestones must be increasing"):
        load_config(overrides=["train.step_milestones=[5, 2]"])
