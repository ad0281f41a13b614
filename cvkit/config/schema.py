"""The root config: the top-level keys of a cvkit YAML file and its five sections."""

from pydantic import Field, field_validator

from cvkit.config.base import Section
from cvkit.config.data import DataConfig
from cvkit.config.eval import EvalConfig
from cvkit.config.export import ExportConfig
from cvkit.config.model import ModelConfig
from cvkit.config.train import TrainConfig

# The built-in tasks and the modules that register them (imported on demand by get_task).
BUILTIN_TASKS = {
    "detect": "cvkit.engine.tasks.detect",
    "segment": "cvkit.engine.tasks.segment",
    "classify": "cvkit.engine.tasks.classify",
    "style": "cvkit.engine.tasks.style",
}


class Config(Section):
    """A whole run: task, seed, device and one model per section.

    ``task`` is any task registered with :func:`cvkit.engine.tasks.register_task` or
    provided by a ``cvkit.tasks`` entry point (:mod:`cvkit.config.plugins`); the built-in
    ``detect``, ``segment``, ``classify`` and ``style`` of :data:`BUILTIN_TASKS` are known
    without importing torch.
    ``device`` is ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.
    """

    task: str = "detect"
    name: str = Field("exp", min_length=1)
    seed: int = 0
    device: str = "auto"
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)

    @field_validator("task")
    @classmethod
    def _registered_task(cls, value: str) -> str:
        if value not in BUILTIN_TASKS:
            from cvkit.engine.tasks import get_task

            get_task(value)
        return value
