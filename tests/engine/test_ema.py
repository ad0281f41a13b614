"""EMA of weights: the documented update rule, checked by hand."""

import torch
from torch import nn

from cvkit.engine.ema import ModelEMA


def test_ema_follows_the_ramped_decay_rule():
    model = nn.Sequential(nn.Linear(2, 1), nn.BatchNorm1d(1))
    ema = ModelEMA(model, decay=0.5)
    start = model[0].weight.detach().clone()
    expected = start.clone()
    for step, value in enumerate((1.0, 3.0)):
        with torch.no_grad():
            model[0].weight.fill_(value)
        model[1].num_batches_tracked.fill_(step + 7)
        decay = min(0.5, (1 + step) / (10 + step))
        assert ema.current_decay() == decay
        ema.update(model)
        expected = decay * expected + (1 - decay) * value
    torch.testing.assert_close(ema.module[0].weight, expected)
    assert ema.module[1].num_batches_tracked.item() == 8
    assert not any(p.requires_grad for p in ema.module.parameters())

    copy = ModelEMA(nn.Sequential(nn.Linear(2, 1), nn.BatchNorm1d(1)))
    copy.load_state_dict(ema.state_dict())
    assert copy.updates == 2 and torch.equal(copy.module[0].weight, ema.module[0].weight)
