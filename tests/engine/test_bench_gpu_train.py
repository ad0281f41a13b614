"""The GPU training benchmark runs end to end on the CPU at a tiny size, and what it compares is
comparable: cvkit's and torchvision's SSD do the same matrix work per image."""

import re
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def test_gpu_training_benchmark_smoke_run_on_the_cpu(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    for name in ("bench_gpu_train", "bench_train", "bench_rcnn"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    import bench_gpu_train

    out = tmp_path / "gpu_train.md"
    tiny = ["--device", "cpu", "--models", "ssd", "--rounds", "1", "--steps", "1", "--batch", "2"]
    report = bench_gpu_train.main([*tiny, "--out", str(out)])
    assert out.read_text() == report
    rows = {
        cells[1]: cells[2:]
        for line in report.splitlines()
        if line.startswith("| ssd.yaml")
        for cells in [[c.strip() for c in line.strip("|").split("|")]]
    }
    assert set(rows) == {"cvkit", "torchvision", bench_gpu_train.SETTINGS, "cvkit / torchvision"}
    rate = {name: float(rows[name][1]) for name in ("cvkit", "torchvision")}
    flops = {name: float(cells[2]) for name, cells in rows.items() if cells[2]}
    # the same body and heads: the same convolutions, so the same counted FLOPs per image
    assert len(set(flops.values())) == 1 and flops["cvkit"] > 0.1, flops
    ratio = float(re.search(r"\*\*([\d.]+)x\*\*", rows["cvkit / torchvision"][1]).group(1))
    assert abs(ratio - rate["cvkit"] / rate["torchvision"]) < 0.01 + 0.01 * ratio
    assert all(cells[-1] == "—" for name, cells in rows.items() if cells[2])  # no MFU on a CPU


def test_no_gpu_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import bench_gpu_train

    monkeypatch.setattr(bench_gpu_train.torch.cuda, "is_available", lambda: False)
    out = tmp_path / "gpu_train.md"
    assert bench_gpu_train.main(["--out", str(out)]) == "" and not out.exists()
