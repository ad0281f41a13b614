"""Loading a checkpoint into a model: the model it was trained as, with its deployed weights.

A checkpoint (the dict :mod:`cvkit.engine.checkpoint` reads and writes) carries the resolved
``config`` and the ``classes``, which are enough to rebuild the model with
:func:`cvkit.models.build.build_model`; its weights are ``ema["module"]`` when the run kept an
EMA, else ``model``. Reading the file is the engine's job; this module only needs the dict.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cvkit.config import Config
from cvkit.errors import CheckpointError
from cvkit.models.build import build_model


def inference_state_dict(checkpoint: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The weights to deploy: the EMA weights when the run kept an EMA, else ``model``."""
    ema = checkpoint.get("ema")
    return ema["module"] if ema else checkpoint["model"]


def load_model(
    checkpoint: Mapping[str, Any],
    map_location: str | torch.device = "cpu",
    source: str | Path = "checkpoint",
) -> nn.Module:
    """Rebuild the model ``checkpoint`` was trained as, with its weights, in eval mode.

    Args:
        checkpoint: a cvkit checkpoint dict (``config``, ``classes``, ``model``, ``ema``), e.g.
            from :func:`cvkit.engine.checkpoint.load_checkpoint`.
        map_location: device the model is moved to.
        source: what the checkpoint was read from (its path), for error messages.

    Raises:
        CheckpointError: the weights do not fit the rebuilt model.
    """
    config = Config.model_validate(checkpoint["config"])
    model = build_model(config, len(checkpoint["classes"]))
    try:
        model.load_state_dict(inference_state_dict(checkpoint))
    except RuntimeError as exc:
        raise CheckpointError(
            f"{source}: weights do not fit model {config.model.name!r}: {exc}"
        ) from None
    return model.to(map_location).eval()
