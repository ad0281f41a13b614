"""Optimizers and per-step learning-rate schedules built from the ``train:`` config section.

A model may define ``parameter_groups() -> list[dict]`` to train parts of itself at different
rates (a pretrained body slower than a new head): each dict holds ``params`` and an optional
``lr_mult`` (default 1.0) and ``weight_decay``. Otherwise every parameter that requires a
gradient forms one group. Frozen parameters (``requires_grad=False``) are always left out.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from cvkit.config.train import TrainConfig
from cvkit.errors import ConfigError


def parameter_groups(model: nn.Module) -> list[dict[str, Any]]:
    """The trainable parameter groups of ``model``; each dict has ``params`` and ``lr_mult``."""
    custom = getattr(model, "parameter_groups", None)
    groups = custom() if callable(custom) else [{"params": list(model.parameters())}]
    result = []
    for group in groups:
        params = [p for p in group["params"] if p.requires_grad]
        if params:
            result.append({**group, "params": params, "lr_mult": group.get("lr_mult", 1.0)})
    if not result:
        raise ConfigError("model: no trainable parameters (every parameter is frozen)")
    return result


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD (momentum, optional Nesterov) or AdamW over :func:`parameter_groups`.

    Each group's learning rate is ``cfg.lr * lr_mult``; the scheduler scales it from there.
    AdamW runs as one fused kernel over all parameters when they are floating point on the
    CPU or CUDA (PyTorch's default updates them one tensor at a time on the CPU), and SGD
    with the multi-tensor (``foreach``) update.
    """
    groups = [{**g, "lr": cfg.lr * g["lr_mult"]} for g in parameter_groups(model)]
    params = [p for g in groups for p in g["params"]]
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            groups,
            lr=cfg.lr,
            momentum=cfg.momentum,
            nesterov=cfg.nesterov and cfg.momentum > 0,
            weight_decay=cfg.weight_decay,
            foreach=True,
        )
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)


class LRSchedule:
    """Multiplier of the base learning rate at optimizer step ``step`` (0-based).

    A plain object (not a closure) so that :class:`~torch.optim.lr_scheduler.LambdaLR` can save
    it inside a checkpoint and a resumed run follows the same curve.

    Args:
        kind: ``cosine``, ``step`` or ``constant``.
        total_steps: optimizer steps in the whole run.
        steps_per_epoch: optimizer steps per epoch (converts epochs to steps).
        warmup_steps: steps of linear warm-up from ``warmup_factor`` to 1.
        warmup_factor: multiplier at step 0.
        min_lr_ratio: cosine multiplier at the last step.
        milestones: epochs at which ``step`` multiplies by ``gamma``.
        gamma: decay factor of ``step``.
    """

    def __init__(
        self,
        kind: str,
        total_steps: int,
        steps_per_epoch: int,
        warmup_steps: int = 0,
        warmup_factor: float = 0.001,
        min_lr_ratio: float = 0.0,
        milestones: list[int] | None = None,
        gamma: float = 0.1,
    ) -> None:
        self.kind = kind
        self.total_steps = max(total_steps, 1)
        self.steps_per_epoch = max(steps_per_epoch, 1)
        self.warmup_steps = min(warmup_steps, self.total_steps)
        self.warmup_factor = warmup_factor
        self.min_lr_ratio = min_lr_ratio
        self.milestones = list(milestones or [])
        self.gamma = gamma

    def __call__(self, step: int) -> float:
        factor = self._decay(step)
        if step < self.warmup_steps:
            alpha = step / self.warmup_steps
            factor *= self.warmup_factor + (1 - self.warmup_factor) * alpha
        return factor

    def _decay(self, step: int) -> float:
        if self.kind == "cosine":
            span = max(self.total_steps - 1 - self.warmup_steps, 1)
            progress = min(max(step - self.warmup_steps, 0) / span, 1.0)
            cosine = 0.5 * (1 + math.cos(math.pi * progress))
            return self.min_lr_ratio + (1 - self.min_lr_ratio) * cosine
        if self.kind == "step":
            epoch = step // self.steps_per_epoch
            return self.gamma ** sum(epoch >= m for m in self.milestones)
        return 1.0


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int
) -> LambdaLR:
    """A per-optimizer-step :class:`LambdaLR` following :class:`LRSchedule` for ``cfg``.

    Args:
        optimizer: from :func:`build_optimizer`.
        cfg: the ``train:`` section.
        steps_per_epoch: optimizer steps per epoch (batches / ``accumulate``, rounded up).
    """
    schedule = LRSchedule(
        kind=cfg.scheduler,
        total_steps=cfg.epochs * steps_per_epoch,
        steps_per_epoch=steps_per_epoch,
        warmup_steps=round(cfg.warmup_epochs * steps_per_epoch),
        warmup_factor=cfg.warmup_factor,
        min_lr_ratio=cfg.min_lr_ratio,
        milestones=cfg.step_milestones,
        gamma=cfg.step_gamma,
    )
    return LambdaLR(optimizer, lr_lambda=schedule)
