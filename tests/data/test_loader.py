"""Datasets and loaders: batch contract, exact mapping back to original pixels, seeding,
the synthetic default, and the training-time check (refuse or skip)."""

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from cvkit.config import config_to_dict, load_config
from cvkit.config.data import DataConfig, DatasetSource
from cvkit.data import build_dataset, build_loader
from cvkit.data.formats.coco import write_coco
from cvkit.data.records import Records, Sample
from cvkit.errors import DatasetError

from .conftest import TINY

SIZES = [(60, 100), (120, 50), (64, 64)]


def _coco_with_sizes(tmp_path, bad_box: bool = False):
    """Three images of different shapes with known boxes, one crowd object; COCO on disk."""
    rng = np.random.default_rng(0)
    samples = []
    for index, (height, width) in enumerate(SIZES):
        boxes = np.array([[2.5, 3.0, width / 2, height / 2], [width / 3, 1, width - 1, height - 2]])
        if bad_box and index == 1:
            boxes[0] = [30, 20, 10, 25]  # x2 < x1
        samples.append(
            Sample(
                image_id=index + 5,
                file_name=f"img{index}.png",
                height=height,
                width=width,
                image=rng.integers(0, 255, (height, width, 3), dtype=np.uint8),
                boxes=boxes,
                labels=[0, 1],
                iscrowd=[False, index == 2],
            )
        )
    records = Records(samples, ["cat", "dog"], [1, 2])
    return write_coco(records, tmp_path / "images", tmp_path / "ann.json"), records


def _config(tmp_path, *overrides):
    return load_config(
        overrides=[
            "data.image_size=64",
            "data.batch_size=2",
            "data.workers=0",
            f"data.cache_dir={tmp_path / 'cache'}",
            *overrides,
        ]
    )


@pytest.mark.parametrize("policy", ["letterbox", "resize"])
def test_eval_batches_map_back_to_original_pixels_exactly(tmp_path, policy):
    path, records = _coco_with_sizes(tmp_path)
    config = _config(tmp_path, f"data.val.path={path}", f"data.resize={policy}")
    dataset = build_dataset(config.data, "val", "detect")
    assert dataset.classes == ["cat", "dog"] and dataset.category_ids == [1, 2]
    images, targets = next(iter(build_loader(dataset, config.data, train=False)))
    assert images.shape == (2, 3, 64, 64) and images.dtype == torch.float32
    for target, sample in zip(targets, records.samples, strict=False):
        keep = ~sample.iscrowd
        sx, sy = target.geometry.scale
        ox, oy = target.geometry.offset
        back = (target.boxes - torch.tensor([ox, oy, ox, oy])) / torch.tensor([sx, sy, sx, sy])
        assert torch.allclose(back, torch.from_numpy(sample.boxes[keep]), atol=1e-4)
        assert target.labels.dtype == torch.int64
        assert target.geometry.orig_size == (sample.height, sample.width)
        assert target.image_id == sample.image_id


def test_normalization_and_ground_truth(tmp_path):
    path, records = _coco_with_sizes(tmp_path)
    config = _config(tmp_path, f"data.val.path={path}", "data.resize=resize")
    dataset = build_dataset(config.data, "val", "detect")
    images, _ = next(iter(build_loader(dataset, config.data, train=False)))
    resized = cv2.resize(records.samples[0].image, (64, 64), interpolation=cv2.INTER_LINEAR)
    pixels = torch.from_numpy(resized).permute(2, 0, 1).float() / 255
    mean = torch.tensor(config.data.mean).view(3, 1, 1)
    std = torch.tensor(config.data.std).view(3, 1, 1)
    assert torch.allclose(images[0], (pixels - mean) / std, atol=1e-5)
    gt = dataset.coco_ground_truth()
    crowd = [a for a in gt["annotations"] if a["iscrowd"]]
    assert len(gt["annotations"]) == 6 and len(crowd) == 1 and crowd[0]["image_id"] == 7
    assert gt["annotations"][0]["bbox"] == [2.5, 3.0, 47.5, 27.0]
    _, target = dataset[2]
    assert len(target.boxes) == 1  # the crowd object is not a training target


def test_synthetic_default_detect_and_segment(tmp_path):
    synth = [f"data.synthetic.{k}={v}" for k, v in TINY.items()]
    config = _config(tmp_path, *synth, "data.instance_masks=true")
    train = build_dataset(config.data, "train", "detect")
    assert len(train) == TINY["num_train"] and train.classes == ["circle", "rectangle", "triangle"]
    images, targets = next(iter(build_loader(train, config.data, train=True, seed=1)))
    assert images.shape == (2, 3, 64, 64)
    for target in targets:
        n = len(target.labels)
        assert target.boxes.shape == (n, 4) and target.masks.shape == (n, 64, 64)
    segment = build_dataset(config.data, "val", "segment")
    assert segment.classes == ["background", "circle", "rectangle", "triangle"]
    _, target = segment[0]
    assert target.semantic.dtype == torch.int64 and target.semantic.shape == (64, 64)
    assert set(target.semantic.unique().tolist()) <= {0, 1, 2, 3}


def test_same_seed_same_batches(tmp_path):
    synth = [f"data.synthetic.{k}={v}" for k, v in TINY.items()]
    config = _config(tmp_path, *synth)
    dataset = build_dataset(config.data, "train", "detect")

    def first_batch(seed):
        torch.manual_seed(seed)
        return next(iter(build_loader(dataset, config.data, train=True, seed=seed)))

    (a, ta), (b, tb), (c, _) = first_batch(0), first_batch(0), first_batch(1)
    assert torch.equal(a, b) and all(
        torch.equal(x.boxes, y.boxes) for x, y in zip(ta, tb, strict=True)
    )
    assert not torch.equal(a, c)


def test_two_workers_give_shapes_and_distinct_augmentations(tmp_path):
    synth = [f"data.synthetic.{k}={v}" for k, v in TINY.items()]
    config = _config(tmp_path, *synth, "data.workers=2", "data.batch_size=4")
    dataset = build_dataset(config.data, "train", "detect")
    batches = list(build_loader(dataset, config.data, train=True))
    assert len(batches) == 2 and all(images.shape == (4, 3, 64, 64) for images, _ in batches)


def test_broken_dataset_is_refused_or_skipped_with_a_log(tmp_path, caplog):
    path, _ = _coco_with_sizes(tmp_path, bad_box=True)
    config = _config(tmp_path, f"data.val.path={path}")
    with pytest.raises(DatasetError, match=r"zero or negative area[\s\S]*img1.png"):
        build_dataset(config.data, "val", "detect")
    config = _config(tmp_path, f"data.val.path={path}", "data.skip_invalid=true")
    with caplog.at_level(logging.WARNING, logger="cvkit"):
        dataset = build_dataset(config.data, "val", "detect")
    assert [s.file_name for s in dataset.records.samples] == ["img0.png", "img2.png"]
    assert "skipping 1 of 3 samples" in caplog.text


def test_loader_settings_come_from_the_config(tmp_path):
    synth = [f"data.synthetic.{k}={v}" for k, v in TINY.items()]
    config = _config(
        tmp_path, *synth, "data.workers=1", "data.pin_memory=false", "data.persistent_workers=true"
    )
    dataset = build_dataset(config.data, "val", "detect")
    loader = build_loader(dataset, config.data, train=False)
    assert (loader.num_workers, loader.pin_memory, loader.persistent_workers) == (1, False, True)
    assert loader.batch_size == 2 and not loader.drop_last
    train_loader = build_loader(build_dataset(config.data, "train", "detect"), config.data, True)
    assert train_loader.drop_last


def test_every_sample_bad_is_an_error_even_when_skipping(tmp_path):
    from cvkit.data.check import validate_for_training

    records = Records(
        [
            Sample(
                1,
                "a.png",
                10,
                10,
                image=np.zeros((10, 10, 3), np.uint8),
                boxes=[[5, 5, 2, 2]],
                labels=[0],
            )
        ],
        ["x"],
    )
    with pytest.raises(DatasetError, match="every sample fails the dataset check"):
        validate_for_training(records, skip_invalid=True)


def _split_folders(tmp_path):
    """One YOLO data file and one VOC folder, each with a 3-image train and a 2-image val
    split; returns their paths and each split's file names (image stems)."""
    from cvkit.data.formats.voc import write_voc
    from cvkit.data.formats.yolo import write_yolo
    from cvkit.data.synthetic import synthetic_records

    stems = {}
    for split, count in (("train", 3), ("val", 2)):
        records, _ = synthetic_records(count, image_size=64, seed=1, split=split)
        for sample in records.samples:
            sample.file_name = f"{split}_{sample.file_name}"
        stems[split] = sorted(Path(s.file_name).stem for s in records.samples)
        yaml_path = write_yolo(records, tmp_path / "yolo", split)
        write_voc(records, tmp_path / "voc", split)
    return {"yolo": yaml_path, "voc": tmp_path / "voc"}, stems


@pytest.mark.parametrize("kind", ["yolo", "voc"])
@pytest.mark.parametrize("section", ["train", "val"])
def test_split_null_reads_every_image_and_no_split_the_sections_own(tmp_path, kind, section):
    paths, stems = _split_folders(tmp_path)
    source = [f"data.{section}.path={paths[kind]}"]

    def stems_read(*overrides):
        config = _config(tmp_path, *source, *overrides)
        dataset = build_dataset(config.data, section, "detect")
        return sorted(Path(s.file_name).stem for s in dataset.records.samples)

    assert stems_read() == stems[section]
    assert stems_read(f"data.{section}.split=null") == sorted(stems["train"] + stems["val"])
    other = "val" if section == "train" else "train"
    assert stems_read(f"data.{section}.split={other}") == stems[other]


def test_a_source_without_split_records_its_sections_name(tmp_path):
    config = _config(tmp_path, "data.train.path=a.yaml", "data.val.split=null")
    saved = config_to_dict(config)["data"]
    assert (saved["train"]["split"], saved["val"]["split"]) == ("train", None)
    built = DataConfig(val=DatasetSource(path="a.yaml"))
    assert (built.train.split, built.val.split) == ("train", "val")
