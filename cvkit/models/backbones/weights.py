"""Load reference weights (a torchvision ``.pth`` file or a cvkit checkpoint) into a backbone.

Weights come only from a local file the user names; nothing is downloaded. Files are read with
``torch.load(..., weights_only=True)``. Keys of the reference classifier head (``fc.*``,
``classifier.*``) and of auxiliary heads are not part of a backbone and are skipped; every
backbone key must be present with the same shape, otherwise a :class:`CheckpointError` names
the file and the offending keys.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from cvkit.errors import CheckpointError
from cvkit.logs import get_logger
from cvkit.models.backbones.base import Backbone

logger = get_logger("models.weights")
BACKBONE_PREFIX = "backbone."


def read_weights(path: str | Path) -> tuple[dict[str, Tensor], list[str] | None]:
    """The model state dict stored in ``path`` and, for a cvkit checkpoint, its class names.

    Accepts a plain state dict (torchvision's ``.pth`` files; classes ``None``) or a cvkit
    checkpoint (a dict whose ``model`` entry is the state dict and ``classes`` the names). A
    checkpoint of a run that kept an EMA of its weights gives the EMA weights (``ema.module``),
    the ones that run validated and deploys.

    Raises:
        CheckpointError: the file is missing, truncated, not a torch file, or holds no tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, OSError) as exc:
        raise CheckpointError(f"{path}: not a readable torch weights file ({exc})") from None
    classes = None
    if isinstance(data, Mapping) and isinstance(data.get("model"), Mapping):
        classes = data.get("classes")
        ema = data.get("ema")
        has_ema = isinstance(ema, Mapping) and isinstance(ema.get("module"), Mapping)
        data = ema["module"] if has_ema else data["model"]
    if not isinstance(data, Mapping) or not data:
        raise CheckpointError(f"{path}: expected a state dict (name → tensor), got {type(data)}")
    bad = [key for key, value in data.items() if not isinstance(value, Tensor)]
    if bad:
        raise CheckpointError(f"{path}: entries that are not tensors: {bad[:5]}")
    return dict(data), list(classes) if classes is not None else None


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The model state dict stored in ``path`` (see :func:`read_weights`)."""
    return read_weights(path)[0]


def backbone_state(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The backbone's part of a state dict: keys under ``backbone.`` (a cvkit model), else all."""
    if any(key.startswith(BACKBONE_PREFIX) for key in state):
        cut = len(BACKBONE_PREFIX)
        return {k[cut:]: v for k, v in state.items() if k.startswith(BACKBONE_PREFIX)}
    return dict(state)


def adapt_stem(weight: Tensor, in_channels: int) -> Tensor:
    """Fit a first-convolution weight ``[O, 3, k, k]`` to ``in_channels`` input channels.

    One channel gets the sum over RGB (a grey image gives the response of an RGB grey image);
    more channels cycle RGB and rescale by ``3 / in_channels`` to keep activations comparable.
    """
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    repeats = -(-in_channels // weight.shape[1])
    return weight.repeat(1, repeats, 1, 1)[:, :in_channels] * (weight.shape[1] / in_channels)


def split_reference_state(
    backbone: Backbone, state: Mapping[str, Tensor]
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Split a state dict into ``(backbone part, head part)``.

    A cvkit model's dict splits on its ``backbone.`` / ``head.`` prefixes; a torchvision
    dict on ``backbone.head_prefixes`` (those keys form the head part unchanged; auxiliary
    heads in ``ignored_prefixes`` are dropped).
    """
    if any(key.startswith(BACKBONE_PREFIX) for key in state):
        head = {k[len("head.") :]: v for k, v in state.items() if k.startswith("head.")}
        return backbone_state(state), head
    head = {k: v for k, v in state.items() if k.startswith(backbone.head_prefixes)}
    skip = backbone.head_prefixes + backbone.ignored_prefixes
    body = {k: v for k, v in state.items() if not k.startswith(skip)}
    return body, head


def load_backbone_state(
    backbone: Backbone, state: Mapping[str, Tensor], source: str | Path
) -> None:
    """Load a backbone-only state dict strictly (all keys, equal shapes).

    A first-convolution weight made for another number of input channels is adapted with
    :func:`adapt_stem`.

    Raises:
        CheckpointError: missing or unexpected keys, or shape mismatches; names ``source``.
    """
    state = dict(state)
    own = backbone.state_dict()
    stem = backbone.stem_weight
    if stem in state and stem in own and state[stem].shape[1] != own[stem].shape[1]:
        state[stem] = adapt_stem(state[stem], own[stem].shape[1])
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or wrong:
        parts = [
            f"{label} {items[:5]}{' ...' if len(items) > 5 else ''}"
            for label, items in (("missing", missing), ("unexpected", unexpected), ("shape", wrong))
            if items
        ]
        raise CheckpointError(
            f"{source}: weights do not fit backbone {type(backbone).__name__}: " + "; ".join(parts)
        )
    backbone.load_state_dict(state)
    logger.info("loaded %d backbone tensors from %s", len(state), source)


def load_backbone_weights(backbone: Backbone, path: str | Path) -> None:
    """Load the backbone part of the weights file ``path`` into ``backbone``.

    Raises:
        CheckpointError: unreadable file, missing or unexpected keys, or shape mismatches
            (for example a ResNet-50 file given to a ResNet-18, or a ``width_mult`` model).
    """
    body, _ = split_reference_state(backbone, read_state_dict(path))
    load_backbone_state(backbone, body, path)
