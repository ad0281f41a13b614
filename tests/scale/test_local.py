"""The local engine: rows equal the runtime predictor's results, bad images become error rows,
re-runs skip what is done, and sources, formats and masks behave as documented (no Ray)."""

import subprocess
import sys

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
from pycocotools import mask as coco_mask
from scale_toys import write_colour_detector, write_images

from cvkit.cli import main
from cvkit.errors import DatasetError, InputError
from cvkit.runtime import Detector
from cvkit.runtime.results import Detections
from cvkit.scale import (
    OutputError,
    PredictOptions,
    decode_masks,
    encode_masks,
    list_sources,
    predict_files,
    row_format,
)
from cvkit.scale.engine import EngineError, connect_ray, open_store

CPU = PredictOptions(providers="cpu", batch_size=4)


def read_rows(model, out):
    return sorted(open_store(model, out, "parquet").read().to_pylist(), key=lambda r: r["path"])


def test_rows_are_the_runtime_predictors_results_and_bad_images_are_error_rows(
    detector_model, image_folder, tmp_path
):
    report = predict_files(image_folder, detector_model, tmp_path / "out", options=CPU)
    assert (report.total, report.skipped, report.processed, report.errors) == (15, 0, 15, 3)
    rows = read_rows(detector_model, tmp_path / "out")
    errors = {row["path"]: row["error"] for row in rows if row["error"]}
    corrupt, truncated = image_folder / "corrupt.jpg", image_folder / "truncated.jpg"
    assert errors == {
        str(corrupt): f"ImageError: {corrupt}: not a readable image "
        f"({corrupt.stat().st_size} bytes)",
        str(image_folder / "empty.png"): f"ImageError: {image_folder / 'empty.png'}: empty file",
        str(truncated): f"ImageError: {truncated}: not a readable image "
        f"({truncated.stat().st_size} bytes)",
    }
    assert cv2.imread(str(truncated)).shape == (64, 64, 3)  # imread would predict on garbage
    # reference: the runtime Detector on each file, one image at a time
    detector = Detector(detector_model, providers="cpu")
    good = [row for row in rows if not row["error"]]
    assert (
        len(good) == 12
        and any(not row["scores"] for row in good)
        and any(row["scores"] for row in good)
    )
    for row in good:
        expected = detector.predict(row["path"])
        assert (row["height"], row["width"]) == expected.orig_size
        np.testing.assert_array_equal(np.array(row["boxes"], np.float32).reshape(-1, 4),
                                      expected.boxes)  # fmt: skip
        assert row["scores"] == expected.scores.tolist()
        assert row["labels"] == expected.labels.tolist() and row["names"] == list(expected.names)
        assert row["masks"] is None


def test_a_rerun_skips_what_is_done_and_a_killed_runs_leftovers_are_ignored(
    detector_model, tmp_path
):
    folder = tmp_path / "images"
    paths = write_images(folder, 6)
    out = tmp_path / "out"
    first = predict_files(paths[:4], detector_model, out, options=CPU, rows_per_file=3)
    assert first.processed == 4 and len(first.files) == 2  # parts of 3 and 1 rows
    (out / "part-killed-00000.parquet.tmp").write_bytes(b"PAR1 half a file")
    second = predict_files(folder, detector_model, out, options=CPU)
    assert (second.total, second.skipped, second.processed) == (6, 4, 2)
    assert [pq.read_table(f).column("path").to_pylist() for f in second.files] == [
        [str(paths[4]), str(paths[5])]
    ]
    assert not list(out.glob("*.tmp"))
    rows = read_rows(detector_model, out)
    fresh = predict_files(folder, detector_model, tmp_path / "fresh", options=CPU)
    assert fresh.processed == 6 and rows == read_rows(detector_model, tmp_path / "fresh")


def test_jsonl_rows_equal_parquet_rows(detector_model, image_folder, tmp_path):
    predict_files(image_folder, detector_model, tmp_path / "pq", options=CPU)
    report = predict_files(
        image_folder, detector_model, tmp_path / "js", options=CPU, output_format="jsonl"
    )
    assert all(name.endswith(".jsonl") for name in report.files)
    jsonl = sorted(open_store(detector_model, tmp_path / "js", "jsonl").read().to_pylist(),
                   key=lambda r: r["path"])  # fmt: skip
    assert jsonl == read_rows(detector_model, tmp_path / "pq")


def test_another_models_results_are_not_mixed_in(detector_model, tmp_path):
    folder = tmp_path / "images"
    write_images(folder, 2)
    predict_files(folder, detector_model, tmp_path / "out", options=CPU)
    other = write_colour_detector(tmp_path / "other.onnx", size=16)
    with pytest.raises(OutputError, match=r"holds the results of colour\.onnx"):
        predict_files(folder, other, tmp_path / "out", options=CPU)


def test_sources_folders_globs_and_list_files(image_folder, tmp_path):
    everything = list_sources(image_folder)
    assert len(everything) == 15 and everything == sorted(everything)
    assert str(image_folder / "nested" / "img_000.png") in everything
    assert list_sources(str(image_folder / "nested" / "*.png")) == [
        str(image_folder / "nested" / f"img_{i:03d}.png") for i in range(4)
    ]
    listing = image_folder / "nested" / "list.txt"
    listing.write_text("# two images\nimg_001.png\n\n" + str(image_folder / "img_000.png") + "\n")
    assert list_sources([listing, image_folder / "img_000.png"]) == [
        str(image_folder / "nested" / "img_001.png"),
        str(image_folder / "img_000.png"),
    ]
    listing.unlink()
    with pytest.raises(DatasetError, match="missing"):
        list_sources(tmp_path / "missing")
    (tmp_path / "bad.txt").write_text("nope.png\n")
    with pytest.raises(DatasetError, match=r"bad\.txt, line 1: .*nope\.png"):
        list_sources(tmp_path / "bad.txt")


def test_masks_are_coco_rle_that_decode_to_the_masks():
    masks = np.zeros((2, 5, 7), bool)
    masks[0, 1:3, 2:6] = True
    masks[1, 4, 0] = True
    rles = encode_masks(masks)
    # mask 1 column-major, hand-computed: 4 zeros, a one, then 30 zeros
    expected = coco_mask.frPyObjects({"size": [5, 7], "counts": [4, 1, 30]}, 5, 7)
    assert rles[1] == {"size": [5, 7], "counts": expected["counts"].decode("ascii")}
    np.testing.assert_array_equal(decode_masks(rles), masks)
    detections = Detections(
        np.array([[2, 1, 6, 3], [0, 4, 1, 5]], np.float32),
        np.array([0.9, 0.5], np.float32),
        np.array([0, 2]),
        ["red", "blue"],
        masks=masks,
    )
    row = row_format("detect").result_row("a.png", detections, (5, 7))
    table = row_format("detect").table([row])
    np.testing.assert_array_equal(decode_masks(table.to_pylist()[0]["masks"]), masks)


def test_cli_positional_onnx_writes_rows_and_engine_needs_an_onnx(
    detector_model, image_folder, tmp_path, capsys
):
    out = tmp_path / "out"
    assert main(["predict", str(detector_model), str(image_folder), "--out", str(out)]) == 0
    assert "15 images, 0 already in" in capsys.readouterr().out
    assert len(read_rows(detector_model, out)) == 15 and not list(out.glob("*.png"))
    assert main(["predict", str(detector_model), str(image_folder), "--out", str(out)]) == 0
    assert "15 already in" in capsys.readouterr().out
    with pytest.raises(InputError, match="export it first"):
        from cvkit.scale.commands import run_predict

        run_predict(type("Args", (), {"weights": "best.pt"})())


def test_the_ray_engine_without_ray_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(EngineError, match=r"pip install 'cvkit\[ray\]'"):
        connect_ray()


def test_scale_imports_no_torch():
    code = (
        "import sys, cvkit.scale, cvkit.scale.commands, cvkit.scale.engine; "
        "print('torch' in sys.modules, 'ray' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False False", result.stderr
