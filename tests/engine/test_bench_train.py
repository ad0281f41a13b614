"""bench_train's convolution timing replays exactly the convolution work of a training step."""

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from cvkit.geometry import Geometry
from cvkit.structures import Target

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.delitem(sys.modules, "bench_train", raising=False)
    import bench_train

    return bench_train


def small_batch(size: int = 64) -> tuple[torch.Tensor, list[Target]]:
    torch.manual_seed(0)
    placed = Geometry((size, size), (1.0, 1.0))
    boxes = ([[4.0, 6.0, 30.0, 40.0]], [[10.0, 10.0, 50.0, 34.0], [0.0, 2.0, 20.0, 60.0]])
    labels = ([0], [1, 2])
    targets = [
        Target(torch.tensor(b), torch.tensor(c), placed) for b, c in zip(boxes, labels, strict=True)
    ]
    return torch.rand(2, 3, size, size), targets


@pytest.mark.parametrize("which", ["cvkit", "torchvision"])
def test_replayed_convolutions_give_the_steps_weight_gradients(bench, which):
    """Replaying the captured calls computes, conv by conv, the same weight gradients as the
    training step itself (each conv of these SSDs runs once per step), with the step's layout."""
    config = bench.bench_config(["data.image_size=64", "train.channels_last=true"])
    ours, theirs = bench.build_pair(config, 3)
    model, _ = bench.as_trained_by_cvkit(config, ours if which == "cvkit" else theirs)
    images, targets = small_batch()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]

    calls = bench.convolution_calls(model, images, targets)
    captured = [id(module) for module, _, _ in calls]
    assert sorted(captured) == sorted(map(id, convs))  # every conv, each once
    assert all(p.grad is None for p in model.parameters())  # the capture leaves no gradients
    first_input = calls[0][1]
    assert first_input.shape == images.shape and not first_input.requires_grad
    assert all(inputs.requires_grad for _, inputs, _ in calls[1:])
    assert all(grad is not None for _, _, grad in calls)
    # the layout the step ran in: contiguous images, channels-last activations after them
    assert first_input.is_contiguous()
    assert all(x.is_contiguous(memory_format=torch.channels_last) for _, x, _ in calls[1:])

    model.train()
    torch.manual_seed(1)
    sum(model(images, targets).values()).backward()
    stepped = [conv.weight.grad.clone() for conv in convs]
    model.zero_grad(set_to_none=True)
    expected_grads = {id(conv): grad for conv, grad in zip(convs, stepped, strict=True)}
    for module, inputs, grad in calls:
        expected = expected_grads[id(module)]
        replayed = torch.autograd.grad(module(inputs), module.weight, grad)[0]
        torch.testing.assert_close(replayed, expected, rtol=1e-4, atol=1e-5)
    bench.replay(calls)
    assert all(p.grad is None for p in model.parameters())  # replay accumulates nothing


def test_convolution_time_is_per_step(bench, monkeypatch):
    """The replay time is reported per step, whatever the number of replays per round."""
    config = bench.bench_config(["data.image_size=64"])
    ours, _ = bench.build_pair(config, 3)
    runs = {"cvkit": bench.as_trained_by_cvkit(config, ours)}
    clock = iter(range(1000))
    monkeypatch.setattr(bench.time, "perf_counter", lambda: next(clock) * 0.5)
    replays = []
    monkeypatch.setattr(bench, "replay", lambda calls: replays.append(len(calls)))
    result = bench.convolution_time(runs, small_batch(), rounds=3, steps=4)
    # each round reads the clock twice, 0.5 s apart, around 4 replays: 125 ms per step
    assert result == {"cvkit": pytest.approx(125.0)}
    assert len(replays) == 4 * 4  # a warm-up round plus three timed rounds
