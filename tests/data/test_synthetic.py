"""The synthetic dataset: deterministic, exact annotations, a valid COCO file, a safe cache."""

import json
import threading

import numpy as np
import pytest
from pycocotools.coco import COCO

from cvkit.data.records import mask_to_box
from cvkit.data.synthetic import (
    SHAPE_CLASSES,
    annotation_path,
    render_sample,
    synthetic_records,
    synthetic_root,
)


def test_same_seed_same_sample_and_different_seed_differs():
    a = render_sample(np.random.default_rng(7), 64)
    b = render_sample(np.random.default_rng(7), 64)
    c = render_sample(np.random.default_rng(8), 64)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.boxes, b.boxes)
    assert not np.array_equal(a.image, c.image)


def test_boxes_are_tight_around_disjoint_visible_masks():
    rng = np.random.default_rng(0)
    for _ in range(20):
        sample = render_sample(rng, 96)
        assert 1 <= len(sample.labels) <= 6
        assert set(sample.labels.tolist()) <= set(range(len(SHAPE_CLASSES)))
        # occlusion: every pixel belongs to at most one visible mask
        assert sample.masks.sum(axis=0).max() <= 1
        for box, mask in zip(sample.boxes, sample.masks, strict=True):
            assert np.array_equal(box, mask_to_box(mask))
            assert mask.sum() >= 12
        semantic = sample.semantic()
        for label, mask in zip(sample.labels, sample.masks, strict=True):
            assert (semantic[mask > 0] == label + 1).all()
        assert (semantic[sample.masks.sum(axis=0) == 0] == 0).all()


def test_set_has_variety_border_crops_and_overlap():
    records, _ = synthetic_records(60, 96, seed=0)
    labels = np.concatenate([s.labels for s in records.samples])
    assert np.bincount(labels, minlength=3).min() > 10
    boxes = np.concatenate([s.boxes for s in records.samples])
    sizes = np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    assert sizes.min() < 15 and sizes.max() > 40
    touches_border = (boxes[:, :2] == 0).any(axis=1) | (boxes[:, 2:] == 96).any(axis=1)
    assert touches_border.mean() > 0.1


def test_written_coco_matches_pycocotools(tiny_synthetic):
    records, semantics = synthetic_records(8, 64, seed=3, split="train")
    coco = COCO(str(annotation_path(tiny_synthetic, "train")))
    assert sorted(coco.getCatIds()) == [1, 2, 3]
    for sample, semantic in zip(records.samples, semantics, strict=True):
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[sample.image_id]))
        assert len(anns) == len(sample)
        masks = sample.instance_masks()
        for ann, mask, box, label in zip(anns, masks, sample.boxes, sample.labels, strict=True):
            assert np.array_equal(coco.annToMask(ann), mask)
            assert ann["area"] == mask.sum()
            assert ann["category_id"] == label + 1
            x, y, w, h = ann["bbox"]
            assert np.allclose([x, y, x + w, y + h], box)
        assert (tiny_synthetic / "images" / "train" / sample.file_name).is_file()
        stem = sample.file_name.rsplit(".", 1)[0]
        assert (tiny_synthetic / "semantic" / "train" / f"{stem}.png").is_file()
        assert semantic.max() <= 3


def test_cache_generates_once_and_honours_cache_dir(tmp_path, monkeypatch):
    calls = []
    import cvkit.data.synthetic as synthetic

    real = synthetic.write_synthetic
    monkeypatch.setattr(
        synthetic, "write_synthetic", lambda *a, **k: calls.append(a) or real(*a, **k)
    )
    first = synthetic_root(4, 2, 48, seed=1, cache_dir=tmp_path / "c")
    second = synthetic_root(4, 2, 48, seed=1, cache_dir=tmp_path / "c")
    other = synthetic_root(4, 2, 48, seed=2, cache_dir=tmp_path / "c")
    assert first == second != other and len(calls) == 2
    assert first.parent == tmp_path / "c" / "synthetic"
    assert json.loads((first / "params.json").read_text())["seed"] == 1
    monkeypatch.setenv("CVKIT_CACHE_DIR", str(tmp_path / "env"))
    assert synthetic_root(4, 2, 48, seed=1).parent == tmp_path / "env" / "synthetic"


def test_concurrent_generation_leaves_one_complete_copy(tmp_path):
    roots, errors = [], []

    def generate():
        try:
            roots.append(synthetic_root(6, 2, 48, seed=5, cache_dir=tmp_path))
        except Exception as exc:  # collected and re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=generate) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(set(roots)) == 1
    assert [p.name for p in (tmp_path / "synthetic").iterdir()] == [roots[0].name]
    assert len(list((roots[0] / "images" / "train").iterdir())) == 6


@pytest.mark.parametrize("size", [32, 200])
def test_render_any_size(size):
    sample = render_sample(np.random.default_rng(1), size)
    assert sample.image.shape == (size, size, 3) and sample.masks.shape[1:] == (size, size)


def test_small_object_variant_draws_more_and_smaller_objects_and_has_its_own_cache(tmp_path):
    default, _ = synthetic_records(20, 320, seed=3)
    small, _ = synthetic_records(20, 320, seed=3, objects=(8, 20), object_size=(0.03, 0.1))
    count = [len(sample.boxes) for sample in small.samples]
    assert min(count) >= 1 and max(count) <= 20
    assert np.mean(count) > 2 * np.mean([len(sample.boxes) for sample in default.samples])
    # a visible box is at most the shape's bounds: a rotated rectangle of extent 0.1 * 320
    # spans at most sqrt(2) times that, a triangle of circumradius 16 px less
    sides = np.concatenate([s.boxes[:, 2:] - s.boxes[:, :2] for s in small.samples])
    assert sides.max() <= np.sqrt(2) * 0.1 * 320 + 2
    assert np.median(sides) < 0.5 * np.median(
        np.concatenate([s.boxes[:, 2:] - s.boxes[:, :2] for s in default.samples])
    )
    # the default set keeps its folder and parameters; a variant gets its own
    plain = synthetic_root(4, 2, 48, seed=1, cache_dir=tmp_path)
    variant = synthetic_root(4, 2, 48, seed=1, cache_dir=tmp_path, objects=(2, 9))
    assert plain != variant
    assert "objects" not in json.loads((plain / "params.json").read_text())
    assert json.loads((variant / "params.json").read_text())["objects"] == [2, 9]


@pytest.mark.parametrize(
    ("key", "value"), [("objects", "[0,4]"), ("objects", "[5,2]"), ("object_size", "[0.2,0.1]")]
)
def test_bad_variant_settings_name_the_key(key, value):
    from cvkit.config import load_config
    from cvkit.errors import ConfigError

    with pytest.raises(ConfigError, match=rf"data\.synthetic\.{key}"):
        load_config(overrides=[f"data.synthetic.{key}={value}"])
