"""Transfer learning: start a model from pretrained weights, freeze early stages, split LRs.

* :func:`load_pretrained` fills an :class:`~cvkit.models.classification.ImageClassifier` from
  a cvkit checkpoint or a torchvision ``.pth`` file. The backbone must fit exactly. Hidden head
  layers of the same shape are copied. The output layer is re-initialized, or, with
  ``reuse_classes``, keeps its fresh rows only for classes the source did not have: rows of
  classes that source and target share by name (after ``class_map``) are copied.
* ``model.freeze_at: N`` freezes the first N backbone stages (:meth:`Backbone.freeze`).
* :func:`body_head_groups` gives the optimizer two parameter groups, the pretrained body at
  ``train.lr * body_lr_mult`` and the new head at ``train.lr * head_lr_mult``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from cvkit.config.model import ModelConfig
from cvkit.errors import CheckpointError, ConfigError
from cvkit.logs import get_logger
from cvkit.models.backbones.weights import load_backbone_state, read_weights, split_reference_state

logger = get_logger("models.transfer")


@dataclass
class TransferReport:
    """What :func:`load_pretrained` copied."""

    backbone_tensors: int = 0
    head_tensors: list[str] = field(default_factory=list)
    reused_classes: dict[str, str] = field(default_factory=dict)
    skipped_head: list[str] = field(default_factory=list)


def read_class_names(path: str | Path) -> list[str]:
    """Class names from a text file, one per line (blank lines ignored).

    Raises:
        ConfigError: the file cannot be read or holds no names.
    """
    path = Path(path)
    try:
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except OSError as exc:
        raise ConfigError(f"model.source_classes: cannot read {path} ({exc.strerror})") from None
    names = [name for name in names if name]
    if not names:
        raise ConfigError(f"model.source_classes: {path} lists no class names")
    return names


def class_row_mapping(
    source: Sequence[str], target: Sequence[str], class_map: Mapping[str, str] | None = None
) -> dict[int, int]:
    """Target row → source row for classes that both lists share by name.

    Args:
        source: class names of the pretrained output layer, in row order.
        target: class names of the new output layer, in row order.
        class_map: target name → source name, for classes named differently.

    Raises:
        ConfigError: ``class_map`` names a target class or source class that does not exist.
    """
    class_map = dict(class_map or {})
    bad_targets = sorted(set(class_map) - set(target))
    bad_sources = sorted(set(class_map.values()) - set(source))
    if bad_targets or bad_sources:
        raise ConfigError(
            f"model.class_map: unknown target classes {bad_targets} (target has {list(target)}) "
            f"or source classes {bad_sources}"
        )
    index = {name: row for row, name in enumerate(source)}
    mapping = {}
    for row, name in enumerate(target):
        source_name = class_map.get(name, name)
        if source_name in index:
            mapping[row] = index[source_name]
    return mapping


def _output_prefix(model: nn.Module) -> str:
    """State-dict prefix (inside ``head``) of the model's last linear layer."""
    names = [name for name, m in model.head.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise ConfigError(f"{type(model.head).__name__} has no linear output layer")
    return f"{names[-1]}."


def load_pretrained(
    model: nn.Module,
    path: str | Path,
    classes: Sequence[str] | None = None,
    reuse_classes: bool = False,
    source_classes: Sequence[str] | None = None,
    class_map: Mapping[str, str] | None = None,
) -> TransferReport:
    """Initialize a classifier (``model.backbone`` + ``model.head``) from a weights file.

    Args:
        model: an :class:`~cvkit.models.classification.ImageClassifier`.
        path: a cvkit checkpoint or a torchvision classifier ``.pth`` (e.g. ``resnet18-*.pth``).
        classes: the target class names (row order of the new output layer).
        reuse_classes: copy output rows of shared classes instead of re-initializing them.
        source_classes: names of the source's output rows; default the checkpoint's
            ``classes`` (a torchvision file has none, so they must be given to reuse rows).
        class_map: target name → source name for classes named differently.

    Returns:
        A :class:`TransferReport` of what was copied.

    Raises:
        CheckpointError: unreadable file, or a backbone that does not fit.
        ConfigError: ``reuse_classes`` without target or source class names.
    """
    state, checkpoint_classes = read_weights(path)
    body, head = split_reference_state(model.backbone, state)
    load_backbone_state(model.backbone, body, path)
    report = TransferReport(backbone_tensors=len(body))
    own = model.head.state_dict()
    output = _output_prefix(model)
    for key, value in head.items():
        if key.startswith(output):
            continue
        if key in own and own[key].shape == value.shape:
            own[key] = value
            report.head_tensors.append(key)
        else:
            report.skipped_head.append(key)
    if reuse_classes:
        names = source_classes if source_classes is not None else checkpoint_classes
        if classes is None:
            raise ConfigError("model.reuse_classes: the target class names are not known")
        if names is None:
            raise ConfigError(
                f"model.reuse_classes: {path} carries no class names; set model.source_classes "
                "to a text file with the names of its output rows"
            )
        report.reused_classes = _copy_rows(
            own, head, output, list(names), list(classes), class_map, path
        )
    model.head.load_state_dict(own)
    if report.skipped_head:
        logger.warning(
            "head tensors of %s not loaded (no same-shaped layer): %s", path, report.skipped_head
        )
    logger.info(
        "initialized from %s: %d backbone tensors, head layers %s, reused classes %s",
        path,
        report.backbone_tensors,
        report.head_tensors or "none",
        sorted(report.reused_classes) or "none",
    )
    return report


def _copy_rows(
    own: dict[str, Tensor],
    head: Mapping[str, Tensor],
    output: str,
    source: list[str],
    target: list[str],
    class_map: Mapping[str, str] | None,
    path: str | Path,
) -> dict[str, str]:
    weight, bias = head.get(f"{output}weight"), head.get(f"{output}bias")
    own_weight = own[f"{output}weight"]
    if weight is None or weight.shape[1] != own_weight.shape[1] or weight.shape[0] != len(source):
        raise CheckpointError(
            f"{path}: cannot reuse class rows: source output layer "
            f"{None if weight is None else tuple(weight.shape)} does not match "
            f"{len(source)} source classes × {own_weight.shape[1]} features"
        )
    mapping = class_row_mapping(source, target, class_map)
    rows = torch.tensor(list(mapping), dtype=torch.long)
    src_rows = torch.tensor(list(mapping.values()), dtype=torch.long)
    own_weight = own_weight.clone()
    own_weight[rows] = weight[src_rows]
    own[f"{output}weight"] = own_weight
    if bias is not None and f"{output}bias" in own:
        own_bias = own[f"{output}bias"].clone()
        own_bias[rows] = bias[src_rows]
        own[f"{output}bias"] = own_bias
    return {target[t]: source[s] for t, s in mapping.items()}


def body_head_groups(
    model: nn.Module, body_lr_mult: float = 1.0, head_lr_mult: float = 1.0
) -> list[dict[str, Any]]:
    """Two optimizer parameter groups: ``model.backbone`` (body) and everything else (head).

    Each group is ``{"name", "params", "lr_mult"}`` for
    :func:`cvkit.engine.optim.build_optimizer` (group LR = ``train.lr * lr_mult``). Frozen
    parameters and empty groups are left out. Any model with a ``backbone`` attribute
    (classifier, detector, segmenter) can return this from its ``parameter_groups()``.
    """
    body_ids = {id(p) for p in model.backbone.parameters()}
    body = [p for p in model.backbone.parameters() if p.requires_grad]
    head = [p for p in model.parameters() if id(p) not in body_ids and p.requires_grad]
    groups = [
        {"name": "body", "params": body, "lr_mult": body_lr_mult},
        {"name": "head", "params": head, "lr_mult": head_lr_mult},
    ]
    return [group for group in groups if group["params"]]


def prepare_finetuning(
    model: nn.Module, config: ModelConfig, classes: Sequence[str] | None = None
) -> TransferReport | None:
    """Apply ``model.pretrained`` (with the class-reuse keys) and ``model.freeze_at``.

    Returns the :class:`TransferReport`, or None when ``model.pretrained`` is unset.
    """
    report = None
    if config.pretrained is not None:
        source = read_class_names(config.source_classes) if config.source_classes else None
        report = load_pretrained(
            model,
            config.pretrained,
            classes=classes,
            reuse_classes=config.reuse_classes,
            source_classes=source,
            class_map=config.class_map,
        )
    model.backbone.freeze(config.freeze_at)
    return report
