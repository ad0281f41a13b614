"""The ``train:`` section: optimisation schedule and training-loop behaviour."""

from typing import Literal

from pydantic import Field, model_validator

from cvkit.config.base import Section


class TrainConfig(Section):
    """Optimizer, learning-rate schedule and loop settings.

    The learning rate follows a per-step schedule: a linear warm-up from ``lr * warmup_factor``
    to ``lr`` over ``warmup_epochs``, then ``cosine`` (down to ``lr * min_lr_ratio`` at the
    last step), ``step`` (times ``step_gamma`` at each epoch in ``step_milestones``) or
    ``constant``. ``amp: auto`` trains in bfloat16 (or float16 where bfloat16 is unsupported)
    on CUDA and in float32 on the CPU.
    """

    epochs: int = Field(10, gt=0)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.01, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(5e-4, ge=0)
    scheduler: Literal["cosine", "step", "constant"] = "cosine"
    warmup_epochs: float = Field(1.0, ge=0)
    warmup_factor: float = Field(0.001, gt=0, le=1, description="warm-up starts at lr * this")
    min_lr_ratio: float = Field(0.01, ge=0, le=1, description="cosine ends at lr * this")
    step_milestones: list[int] = Field(default_factory=list, description="epochs for 'step'")
    step_gamma: float = Field(0.1, gt=0, le=1)
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"
    grad_clip: float | None = Field(None, gt=0, description="max global gradient norm")
    accumulate: int = Field(1, ge=1, description="batches per optimizer step")
    ema: bool = False
    ema_decay: float = Field(0.9998, gt=0, lt=1)
    val_every: int = Field(1, ge=1, description="validate every N epochs (and after the last)")
    patience: int | None = Field(
        None, ge=1, description="stop after N validations without a better best metric"
    )
    time: float | None = Field(
        None,
        gt=0,
        description="wall-clock budget in minutes: after each epoch the number of epochs (and "
        "the LR schedule) is re-fitted so the run ends within it; overrides epochs",
    )
    threads: int | None = Field(
        None,
        ge=1,
        description="CPU threads (default: the cores other processes leave free, re-checked "
        "every epoch; cores / ranks under torchrun)",
    )
    channels_last: bool | Literal["auto"] = Field(
        "auto", description="train convolutions in channels-last memory order (auto: on the CPU)"
    )
    plots: bool = True

    @model_validator(mode="after")
    def _check_milestones(self) -> "TrainConfig":
        if sorted(self.step_milestones) != self.step_milestones:
            raise ValueError(f"step_milestones must be increasing, got {self.step_milestones}")
        return self
