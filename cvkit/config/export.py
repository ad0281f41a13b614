"""The ``export:`` section: how a trained model is written to ONNX."""

from typing import Literal

from pydantic import Field

from cvkit.config.base import Section


class ExportConfig(Section):
    """ONNX export options (the ``cvkit export`` flags set the same fields).

    ``dynamic`` makes the batch axis dynamic (and height/width for segmenters); ``nms`` puts
    class-aware NMS inside the graph for detectors (else the runtime applies it); ``half``
    stores float16 weights and computes in float16 while keeping float32 inputs and outputs;
    ``simplify`` runs onnxslim when it is installed. The parity check compares onnxruntime with
    torch on the same inputs; ``box_tolerance`` is relative to the input size. ``after_train``
    makes ``cvkit train`` export ``best.pt`` to ``weights/best.onnx`` when training ends.
    """

    after_train: bool = False

    format: Literal["onnx"] = "onnx"
    opset: int = Field(17, ge=11)
    dynamic: bool = False
    nms: bool = True
    half: bool = False
    simplify: bool = False
    box_tolerance: float = Field(1e-3, gt=0, description="max |Δbox| / input size")
    score_tolerance: float = Field(1e-4, gt=0, description="max |Δscore| (probabilities)")
    logit_tolerance: float = Field(1e-3, gt=0, description="max |Δlogit| / (1 + |logit|)")
