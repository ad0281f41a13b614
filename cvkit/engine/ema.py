"""Exponential moving average (EMA) of a model's weights, evaluated instead of the raw weights.

After optimizer step ``n`` every floating-point parameter and buffer becomes
``ema = d * ema + (1 - d) * weight`` with ``d = min(decay, (1 + n) / (10 + n))``: the ramp lets
the average follow the fast early changes instead of staying near the random initialisation.
Integer buffers (BatchNorm's ``num_batches_tracked``) are copied.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class ModelEMA:
    """An EMA copy of ``model`` (kept in eval mode, no gradients).

    Args:
        model: the model being trained (unwrapped, not DDP).
        decay: the long-run decay ``d``.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9998) -> None:
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.updates = 0

    def current_decay(self) -> float:
        """The decay the next :meth:`update` uses."""
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Blend ``model``'s current weights into the average (call after each optimizer step)."""
        decay = self.current_decay()
        source = model.state_dict()
        for name, value in self.module.state_dict().items():
            new = source[name].detach()
            if value.dtype.is_floating_point:
                value.mul_(decay).add_(new.to(value.dtype), alpha=1 - decay)
            else:
                value.copy_(new)
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        """Averaged weights and update count, for checkpoints."""
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
