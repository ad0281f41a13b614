"""The ``model:`` section: which architecture to build and on which backbone."""

from pathlib import Path

from pydantic import Field

from cvkit.config.base import Section


class ModelConfig(Section):
    """Architecture, backbone and initial weights.

    ``num_classes`` is taken from the dataset when left unset.
    """

    name: str = "ssd"
    backbone: str = "resnet18"
    num_classes: int | None = Field(None, gt=0)
    pretrained: Path | None = None
    width_mult: float = Field(1.0, gt=0)
