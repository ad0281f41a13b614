"""The ``export:`` section: how a trained model is written to ONNX."""

from typing import Literal

from pydantic import Field, field_validator

from cvkit.config.base import Section


class ExportConfig(Section):
    """ONNX export options (the ``cvkit export`` flags set the same fields).

    ``dynamic`` makes the batch axis dynamic (and height/width for segmenters); ``nms`` puts
    class-aware NMS inside the graph for detectors: ``hard`` (greedy, also spelled ``true``),
    ``soft`` (gaussian soft-NMS of width ``soft_sigma``) or ``diou`` (DIoU-NMS), see
    :func:`cvkit.ops.nms.padded_nms`; ``false`` leaves it out (the runtime applies hard NMS);
    ``half``
    stores float16 weights and computes in float16 while keeping float32 inputs and outputs;
    ``simplify`` runs onnxslim when it is installed. The parity check compares onnxruntime with
    torch on the same inputs; ``box_tolerance`` is relative to the input size. ``after_train``
    makes ``cvkit train`` export ``best.pt`` to ``weights/best.onnx`` when training ends.
    """

    after_train: bool = False

    format: Literal["onnx"] = "onnx"
    opset: int = Field(17, ge=11)
    dynamic: bool = False
    nms: Literal["hard", "soft", "diou", False] = "hard"
    soft_sigma: float = Field(0.5, gt=0, description="gaussian soft-NMS width (nms: soft)")
    half: bool = False
    simplify: bool = False
    box_tolerance: float = Field(1e-3, gt=0, description="max |Δbox| / input size")
    score_tolerance: float = Field(1e-4, gt=0, description="max |Δscore| (probabilities)")
    logit_tolerance: float = Field(1e-3, gt=0, description="max |Δlogit| / (1 + |logit|)")

    @field_validator("nms", mode="before")
    @classmethod
    def _true_means_hard(cls, value: object) -> object:
        return "hard" if value is True else value
