"""The feature contract every backbone follows, and the helpers the architectures share.

A backbone is a sequence of named *stages*. Its forward returns an ``OrderedDict`` with the
output of the stages listed in ``out_features`` (default: the last stage), and it exposes
``channels`` and ``strides`` for exactly those outputs, so a detection or segmentation head
can sit on any backbone. ``freeze(n)`` stops training of the first ``n`` stages: their
parameters get ``requires_grad=False`` and their BatchNorm layers stay in eval mode.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from cvkit.errors import ConfigError


@dataclass(frozen=True)
class StageInfo:
    """One stage of a backbone: its output ``channels`` and ``stride`` (input pixels per cell)."""

    name: str
    channels: int
    stride: int


def scale_channels(channels: int, width_mult: float, divisor: int = 8) -> int:
    """``channels * width_mult`` rounded to a multiple of ``divisor`` (at least ``divisor``).

    ``width_mult == 1`` returns ``channels`` unchanged, so full-width models keep the exact
    layer sizes of the reference architectures (and their pretrained weights load).
    """
    if width_mult == 1.0:
        return channels
    scaled = max(divisor, int(channels * width_mult + divisor / 2) // divisor * divisor)
    if scaled < 0.9 * channels * width_mult:
        scaled += divisor
    return scaled


class Backbone(nn.Module):
    """Base class: named stages, selectable outputs, and stage freezing.

    Subclasses build their layers under the attribute names of the reference implementation
    (so state dicts match torchvision's), call :meth:`_set_stages` with one
    ``(StageInfo, modules)`` pair per stage, and implement :meth:`iter_stages`.

    Class attributes used when loading reference weights:
        head_prefixes: state-dict key prefixes of the reference classifier head (``"fc."``);
            they belong to :meth:`build_head`'s module, not to the backbone.
        ignored_prefixes: reference keys that have no counterpart here (auxiliary heads).
        stem_weight: key of the first convolution's weight (adapted when ``in_channels != 3``).
    """

    head_prefixes: tuple[str, ...] = ()
    ignored_prefixes: tuple[str, ...] = ()
    stem_weight: str | None = None

    def __init__(self) -> None:
        super().__init__()
        self.stage_info: OrderedDict[str, StageInfo] = OrderedDict()
        self._stage_modules: dict[str, list[nn.Module]] = {}
        self.out_features: list[str] = []
        self.frozen_stages = 0

    def _set_stages(self, stages: Sequence[tuple[StageInfo, Sequence[nn.Module]]]) -> None:
        for info, modules in stages:
            self.stage_info[info.name] = info
            self._stage_modules[info.name] = list(modules)
        self.out_features = [next(reversed(self.stage_info))]

    @property
    def stage_names(self) -> list[str]:
        """Every stage this backbone can return, from input to output."""
        return list(self.stage_info)

    @property
    def channels(self) -> dict[str, int]:
        """Output channels of each returned feature map."""
        return {name: self.stage_info[name].channels for name in self.out_features}

    @property
    def strides(self) -> dict[str, int]:
        """Stride (input pixels per feature cell) of each returned feature map."""
        return {name: self.stage_info[name].stride for name in self.out_features}

    def set_out_features(self, names: Sequence[str] | None) -> None:
        """Choose the returned stages (``None``: the last one); kept in stage order.

        Raises:
            ConfigError: a name that is not a stage of this backbone.
        """
        if names is None:
            self.out_features = [self.stage_names[-1]]
            return
        unknown = [name for name in names if name not in self.stage_info]
        if unknown or not names:
            raise ConfigError(
                f"out_features: unknown stage(s) {unknown or '[]'} for "
                f"{type(self).__name__}; stages are {self.stage_names}"
            )
        self.out_features = [name for name in self.stage_names if name in names]

    def iter_stages(self, x: Tensor) -> Iterator[tuple[str, Tensor]]:
        """Yield ``(stage name, feature map)`` for every stage in order."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        """Feature maps of the selected stages.

        Args:
            x (Tensor[B, in_channels, H, W]): normalized images.

        Returns:
            ``OrderedDict`` name → ``Tensor[B, channels[name], ~H / strides[name],
            ~W / strides[name]]``; computation stops after the last selected stage.
        """
        wanted = set(self.out_features)
        features: OrderedDict[str, Tensor] = OrderedDict()
        for name, feature in self.iter_stages(x):
            if name in wanted:
                features[name] = feature
                if len(features) == len(wanted):
                    break
        return features

    @property
    def tap_names(self) -> list[str]:
        """Every layer :meth:`taps` can return: the dotted module paths of ``named_modules()``
        (``layer3.1.conv2``, as in the state dict and torchvision's feature extraction)."""
        return [name for name, _ in self.named_modules() if name]

    def taps(self, x: Tensor, names: Sequence[str]) -> OrderedDict[str, Tensor]:
        """The activations of the named layers (any layer, not only stage ends).

        Each named module's output is copied when it is produced (a later in-place op, a
        residual ``+=`` or ``ReLU(inplace=True)``, cannot change it); the stages run until every
        named module has run.

        Args:
            x (Tensor[B, in_channels, H, W]): normalized images.
            names: layer names from :attr:`tap_names`, in any order.

        Returns:
            ``OrderedDict`` name → ``Tensor[B, C, h, w]`` in the order the layers ran.

        Raises:
            ConfigError: a name that is not a layer of this backbone, or a layer that runs more
                than once per forward (a shared ``relu``: tap its block instead).
        """
        self._check_tap_names(names)
        modules = dict(self.named_modules())
        found: OrderedDict[str, Tensor] = OrderedDict()  # first output, in the order layers ran
        runs: Counter[str] = Counter()

        def recorder(name: str):
            def hook(module: nn.Module, inputs: tuple, output: Tensor) -> None:
                runs[name] += 1
                if name not in found:
                    found[name] = output.clone()

            return hook

        wanted = list(dict.fromkeys(names))
        handles = [modules[name].register_forward_hook(recorder(name)) for name in wanted]
        try:
            for _ in self.iter_stages(x):
                if len(found) == len(wanted):
                    break
        finally:
            for handle in handles:
                handle.remove()
        repeated = sorted(name for name, count in runs.items() if count > 1)
        if repeated:
            raise ConfigError(
                f"taps: layer(s) {repeated} of {type(self).__name__} run more than once "
                "per forward (a module shared by several calls); tap the enclosing block or "
                "another layer instead"
            )
        return found

    def _check_tap_names(self, names: Sequence[str]) -> None:
        available = self.tap_names
        known = set(available)
        unknown = [name for name in names if name not in known]
        if unknown or not names:
            raise ConfigError(
                f"taps: unknown layer(s) {unknown or '[]'} for {type(self).__name__}; "
                f"layers are {available}"
            )

    def build_head(self, num_classes: int, dropout: float | None = None) -> nn.Module:
        """The architecture's own classifier head on the last stage (keys as the reference's).

        The head takes the last stage's ``Tensor[B, C, h, w]`` and returns logits
        ``Tensor[B, num_classes]``; ``dropout=None`` uses the reference's dropout rate.
        """
        raise NotImplementedError(f"{type(self).__name__} defines no classifier head")

    def freeze(self, num_stages: int) -> None:
        """Stop training the first ``num_stages`` stages (0 unfreezes everything).

        Their parameters stop receiving gradients and their BatchNorm layers keep their
        running statistics (they stay in eval mode even in ``model.train()``).

        Raises:
            ConfigError: ``num_stages`` is negative or larger than the number of stages.
        """
        if not 0 <= num_stages <= len(self.stage_info):
            raise ConfigError(
                f"freeze_at: {num_stages} is out of range for {type(self).__name__}, which "
                f"has {len(self.stage_info)} stages {self.stage_names}"
            )
        self.frozen_stages = num_stages
        for index, name in enumerate(self.stage_names):
            for module in self._stage_modules[name]:
                module.requires_grad_(index >= num_stages)
        self.train(self.training)

    def train(self, mode: bool = True) -> Backbone:
        """Set train/eval mode, keeping frozen stages in eval mode."""
        super().train(mode)
        for name in self.stage_names[: self.frozen_stages]:
            for module in self._stage_modules[name]:
                module.eval()
        return self


class PoolLinearHead(nn.Module):
    """Global average pool, optional dropout and one linear layer.

    Attribute names match torchvision's ResNet/GoogLeNet (``avgpool``, ``dropout``, ``fc``), so
    their ``fc.*`` weights load into it.

    Args:
        in_channels: channels of the incoming feature map.
        num_classes: output logits.
        dropout: drop probability before the linear layer (0 disables it).
    """

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """``Tensor[B, C, h, w]`` → logits ``Tensor[B, num_classes]``."""
        return self.fc(self.dropout(self.avgpool(x).flatten(1)))


class PooledMLPHead(nn.Module):
    """Adaptive pool to a fixed grid, flatten, then fully connected layers (``classifier``).

    The layer order inside ``classifier`` reproduces the reference heads index for index:
    VGG puts dropout after each hidden ReLU, AlexNet before each hidden linear layer.

    Args:
        in_channels: channels of the incoming feature map.
        pool_size: side of the pooled grid (VGG 7, AlexNet 6, LeNet 5).
        hidden: sizes of the hidden layers.
        num_classes: output logits.
        activation: module class applied after each hidden layer.
        dropout: drop probability (0 adds no dropout layers).
        dropout_first: AlexNet order (dropout, linear, act) instead of VGG's (linear, act, dropout).
    """

    def __init__(
        self,
        in_channels: int,
        pool_size: int,
        hidden: Sequence[int],
        num_classes: int,
        activation: type[nn.Module] = nn.ReLU,
        dropout: float = 0.5,
        dropout_first: bool = False,
    ) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(pool_size)
        layers: list[nn.Module] = []
        width = in_channels * pool_size * pool_size
        for size in hidden:
            block: list[nn.Module] = [nn.Linear(width, size), activation()]
            if dropout > 0:
                block.insert(0 if dropout_first else 2, nn.Dropout(dropout))
            layers += block
            width = size
        layers.append(nn.Linear(width, num_classes))
        self.classifier = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """``Tensor[B, C, h, w]`` → logits ``Tensor[B, num_classes]``."""
        return self.classifier(self.avgpool(x).flatten(1))


class SequentialBackbone(Backbone):
    """A backbone whose layers form one ``features`` ``nn.Sequential`` (VGG, AlexNet, ...).

    Subclasses build ``features`` and call :meth:`_set_sequential_stages` with
    ``(StageInfo, last layer index)`` pairs: a stage's output is the output of that layer, and
    the stage owns the layers after the previous stage's last one.
    """

    features: nn.Sequential

    def _set_sequential_stages(self, stages: Sequence[tuple[StageInfo, int]]) -> None:
        self._stage_ends: dict[int, str] = {}
        grouped = []
        start = 0
        for info, end in stages:
            grouped.append((info, list(self.features[start : end + 1])))
            self._stage_ends[end] = info.name
            start = end + 1
        self._set_stages(grouped)

    def iter_stages(self, x: Tensor) -> Iterator[tuple[str, Tensor]]:
        """Run ``features`` layer by layer, yielding at the end of every stage."""
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self._stage_ends:
                yield self._stage_ends[index], x

    def _set_layer_names(self, names: Sequence[str]) -> None:
        """Name every layer of ``features`` (one name per index) for :meth:`taps`."""
        if len(names) != len(self.features) or len(set(names)) != len(names):
            raise ValueError("need one distinct name per layer of features")
        self.layer_names = list(names)

    @property
    def tap_names(self) -> list[str]:
        """Every layer :meth:`taps` can return, from input to output: the names given to the
        ``features`` layers (VGG's ``relu4_2``), else the module paths (``features.3``)."""
        if hasattr(self, "layer_names"):
            return list(self.layer_names)
        return super().tap_names

    def taps(self, x: Tensor, names: Sequence[str]) -> OrderedDict[str, Tensor]:
        """The activations of the named layers (any layer, not only stage ends).

        A tapped activation is cloned when the next layer works in place (a convolution's
        output before VGG's ``ReLU(inplace=True)``), so later layers never overwrite it.
        Computation stops after the deepest requested layer.

        Args:
            x (Tensor[B, in_channels, H, W]): normalized images.
            names: layer names from :attr:`tap_names`, in any order.

        Returns:
            ``OrderedDict`` name → ``Tensor[B, C, h, w]`` in layer order.

        Raises:
            ConfigError: a name that is not a layer of this backbone.
        """
        if not hasattr(self, "layer_names"):
            return super().taps(x, names)
        self._check_tap_names(names)
        wanted = set(names)
        last = max(self.layer_names.index(name) for name in wanted)
        found: OrderedDict[str, Tensor] = OrderedDict()
        for index, layer in enumerate(self.features[: last + 1]):
            x = layer(x)
            name = self.layer_names[index]
            if name in wanted:
                following = self.features[index + 1] if index < last else None
                found[name] = x.clone() if getattr(following, "inplace", False) else x
        return found
