"""Sample keys, persistent workers and the decoded-image cache: what a sample looks like
depends only on (seed, epoch, index), never on workers, their persistence or the cache."""

import logging

import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler

from cvkit.config import load_config
from cvkit.data import build_dataset, build_loader
from cvkit.data import cache as cache_module
from cvkit.data.cache import ImageCache, build_cache
from cvkit.data.sampling import SampleKey, SeededSampler, sample_seed

from .conftest import TINY


def _config(tmp_path, *overrides):
    synth = [f"data.synthetic.{k}={v}" for k, v in TINY.items()]
    return load_config(
        overrides=[
            "data.image_size=64",
            "data.batch_size=4",
            f"data.cache_dir={tmp_path / 'cache'}",
            *synth,
            *overrides,
        ]
    )


def _epochs(config, epochs=2):
    dataset = build_dataset(config.data, "train", "detect", seed=7)
    loader = build_loader(dataset, config.data, train=True, seed=7)
    batches = []
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)
        batches.append(list(loader))
    return batches


def test_batches_do_not_depend_on_workers_persistence_or_cache(tmp_path):
    serial = _epochs(_config(tmp_path, "data.workers=0", "data.cache=off"))
    pooled = _epochs(
        _config(tmp_path, "data.workers=2", "data.persistent_workers=true", "data.cache=ram")
    )
    for epoch_a, epoch_b in zip(serial, pooled, strict=True):
        for (images_a, targets_a), (images_b, targets_b) in zip(epoch_a, epoch_b, strict=True):
            assert torch.equal(images_a, images_b)
            for a, b in zip(targets_a, targets_b, strict=True):
                assert torch.equal(a.boxes, b.boxes) and torch.equal(a.labels, b.labels)
    # another epoch: another order and other augmentations
    assert not torch.equal(serial[0][0][0], serial[1][0][0])


def test_sample_seeds_and_sampler_order():
    assert sample_seed(0, 1, 2) == sample_seed(0, 1, 2)
    seeds = {sample_seed(0, epoch, index) for epoch in range(5) for index in range(200)}
    assert len(seeds) == 1000 and all(0 <= s < 2**32 for s in seeds)
    sampler = SeededSampler(range(10), seed=3)
    sampler.set_epoch(4)
    keys = list(sampler)
    assert sorted(k.index for k in keys) == list(range(10))
    assert all(k == SampleKey(k.index, sample_seed(3, 4, k.index), 4, True) for k in keys)
    assert keys == list(sampler)  # the epoch, not a global RNG, fixes the order
    sampler.set_epoch(5)
    assert [k.index for k in sampler] != [k.index for k in keys]
    assert [k.index for k in SeededSampler(range(4), shuffle=False)] == [0, 1, 2, 3]


def test_distributed_ranks_split_the_samples_and_agree_on_their_seeds():
    data = range(11)
    ranks = []
    for rank in range(2):
        order = DistributedSampler(data, num_replicas=2, rank=rank, shuffle=True, seed=1)
        sampler = SeededSampler(data, seed=1, order=order)
        sampler.set_epoch(2)
        ranks.append(list(sampler))
    assert {k.index for k in ranks[0] + ranks[1]} == set(range(11))
    assert all(k.seed == sample_seed(1, 2, k.index) for k in ranks[0] + ranks[1])


def test_caches_return_the_decoded_pixels(tmp_path):
    config = _config(tmp_path, "data.cache=off")
    samples = build_dataset(config.data, "val", "detect").records.samples
    for mode in ("ram", "disk"):
        cache = ImageCache(mode, samples, tmp_path / mode, threads=2)
        for index, sample in enumerate(samples):
            image = cache.image(index, sample)
            assert np.array_equal(image, sample.load_image())
            image[:] = 0  # a caller writing into its copy leaves the cache intact
            assert np.array_equal(cache.image(index, sample), sample.load_image())
    files = sorted((tmp_path / "disk").glob("*.npy"))
    assert len(files) == len(samples)
    # an edited image gets a new cache file
    path = samples[0].path
    path.write_bytes(samples[1].path.read_bytes())
    cache = ImageCache("disk", samples, tmp_path / "disk")
    assert np.array_equal(cache.image(0, samples[0]), samples[1].load_image())
    assert len(list((tmp_path / "disk").glob("*.npy"))) == len(samples) + 1


def test_a_split_that_does_not_fit_is_not_cached_in_ram(tmp_path, monkeypatch, caplog):
    config = _config(tmp_path, "data.cache=off")
    samples = build_dataset(config.data, "val", "detect").records.samples
    need = sum(s.height * s.width * 3 for s in samples)
    monkeypatch.setattr(cache_module, "available_memory", lambda: need)  # needs 100 %, not 25 %
    assert build_cache("auto", samples, tmp_path, "val") is None
    with caplog.at_level(logging.WARNING, logger="cvkit"):
        cache = build_cache("ram", samples, tmp_path, "val")
    assert cache.mode == "disk" and "caching them on disk instead" in caplog.text
    monkeypatch.setattr(cache_module, "available_memory", lambda: 8 * need)
    assert build_cache("auto", samples, tmp_path, "val").mode == "ram"


@pytest.mark.parametrize(("value", "mode"), [("false", "off"), ("true", "ram"), ("disk", "disk")])
def test_cache_flags_read_as_ultralytics_does(tmp_path, value, mode):
    assert _config(tmp_path, f"data.cache={value}").data.cache == mode
