"""Smoke test of benchmarks/bench_data.py at a tiny size (speed is measured by `make bench`)."""

import importlib.util
from pathlib import Path

import cv2

from cvkit.data.synthetic import synthetic_records

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_data.py"


def test_bench_data_writes_its_table(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_data", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "data.md"
    medians = bench.run(num_images=8, size=64, workers=0, batch=4, repeats=1, out=out)
    assert set(medians) == {"cvkit", "torchvision"} and min(medians.values()) > 0
    text = out.read_text()
    assert "| torchvision.transforms.v2 |" in text and "cvkit / torchvision =" in text


def test_both_pipelines_give_the_same_batch_layout(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_data", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    records, _ = synthetic_records(4, 96, seed=0)
    for index, sample in enumerate(records.samples):
        path = tmp_path / f"{index}.jpg"
        cv2.imwrite(str(path), cv2.cvtColor(sample.image, cv2.COLOR_RGB2BGR))
        sample.path, sample.image = path, None
    image, target = bench.TorchvisionDetection(records, 64)[0]
    assert image.shape == (3, 64, 64) and image.dtype.is_floating_point is False
    boxes = target["boxes"]
    assert ((boxes >= 0) & (boxes <= 64)).all() and len(boxes) == len(target["labels"])
