"""The ``train:`` section: optimisation schedule and training-loop behaviour."""

from typing import Literal

from pydantic import Field

from cvkit.config.base import Section


class TrainConfig(Section):
    """Optimizer, learning-rate schedule and loop settings."""

    epochs: int = Field(10, gt=0)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.01, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    scheduler: Literal["cosine", "step", "constant"] = "cosine"
    warmup_epochs: float = Field(1.0, ge=0)
