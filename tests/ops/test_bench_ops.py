"""The ops benchmark script runs end to end at a tiny size and checks its own outputs."""

import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_ops.py"


def test_bench_ops_smoke(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH.parent))  # the benchmarks' own helpers (machine)
    spec = importlib.util.spec_from_file_location("bench_ops", BENCH)
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_ops", bench)  # dataclasses look their module up
    spec.loader.exec_module(bench)
    out = tmp_path / "ops.md"
    report = bench.main(
        ["--repeats", "1", "--min-seconds", "0", "--scale", "0.01", "--out", str(out)]
    )
    assert out.read_text() == report
    rows = [line for line in report.splitlines() if line.startswith("| ") and "cpu" in line]
    names = {row.split("|")[1].strip() for row in rows}
    assert names == {"box_iou", "nms", "batched_nms", "numpy nms (runtime)", "greedy matching"}
    assert len(rows) == 8
