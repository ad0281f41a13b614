"""The ``export:`` section: how a trained model is written to ONNX."""

from typing import Literal

from pydantic import Field

from cvkit.config.base import Section


class ExportConfig(Section):
    """ONNX export options."""

    format: Literal["onnx"] = "onnx"
    opset: int = Field(17, ge=11)
    dynamic: bool = True
    nms: bool = True
