"""The root config: the top-level keys of a cvkit YAML file and its five sections."""

from typing import Literal

from pydantic import Field

from cvkit.config.base import Section
from cvkit.config.data import DataConfig
from cvkit.config.eval import EvalConfig
from cvkit.config.export import ExportConfig
from cvkit.config.model import ModelConfig
from cvkit.config.train import TrainConfig

Task = Literal["detect", "segment", "classify"]


class Config(Section):
    """A whole run: task, seed, device and one model per section.

    ``device`` is ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.
    """

    task: Task = "detect"
    name: str = Field("exp", min_length=1)
    seed: int = 0
    device: str = "auto"
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
