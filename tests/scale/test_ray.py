"""The Ray engine on one local cluster (``ray_session``, 2 CPUs): its rows are exactly the
local engine's, a killed run resumes with only the rest, and a user's own Ray Dataset (bytes or
decoded images) predicts to the same rows. Skipped when Ray is not installed."""

from pathlib import Path

import pyarrow.parquet as pq
import pytest

pytest.importorskip("ray")

from scale_toys import write_images

from cvkit.cli import main
from cvkit.scale import PredictOptions, ResultStore, predict_dataset, predict_files
from cvkit.scale.engine import open_store

CPU = PredictOptions(providers="cpu", batch_size=4)


class Killed(Exception):
    """Stands for the job dying between two part files."""


def read_rows(model, out):
    return sorted(open_store(model, out, "parquet").read().to_pylist(), key=lambda r: r["path"])


def local_rows(model, sources, out):
    predict_files(sources, model, out, options=CPU)
    return read_rows(model, out)


def test_ray_rows_are_exactly_the_local_rows_bad_images_included(
    ray_session, detector_model, image_folder, tmp_path
):
    for engine, extra in (("local", []), ("ray", ["--actors", "2"])):
        command = ["predict", str(detector_model), str(image_folder), "--engine", engine]
        command += ["--batch", "4", "--providers", "cpu", "--out", str(tmp_path / engine), *extra]
        assert main(command) == 0
    rows = read_rows(detector_model, tmp_path / "ray")
    assert rows == read_rows(detector_model, tmp_path / "local") and len(rows) == 15
    errors = {Path(row["path"]).name: row["error"] for row in rows if row["error"]}
    assert sorted(errors) == ["corrupt.jpg", "empty.png", "truncated.jpg"]
    assert errors["empty.png"].endswith("empty file")
    assert "not a readable image" in errors["corrupt.jpg"]


def test_a_ray_run_killed_halfway_resumes_with_only_the_rest(
    ray_session, detector_model, tmp_path, monkeypatch
):
    folder = tmp_path / "images"
    paths = [str(path) for path in write_images(folder, 10, seed=3)]
    out = tmp_path / "out"
    write = ResultStore.write

    def die_after_one_part(store, table):
        if store._written == 1:
            raise Killed
        return write(store, table)

    monkeypatch.setattr(ResultStore, "write", die_after_one_part)
    with pytest.raises(Killed):
        predict_files(folder, detector_model, out, "ray", CPU, rows_per_file=4)
    monkeypatch.undo()
    first = {row["path"] for row in read_rows(detector_model, out)}
    assert len(first) == 4 and first < set(paths)
    again = predict_files(folder, detector_model, out, "ray", CPU, rows_per_file=4)
    assert (again.total, again.skipped, again.processed, again.errors) == (10, 4, 6, 0)
    new = {path for part in again.files for path in pq.read_table(part)["path"].to_pylist()}
    assert new == set(paths) - first
    assert read_rows(detector_model, out) == local_rows(detector_model, folder, tmp_path / "ref")


def test_sources_glob_and_list_file_on_ray(ray_session, detector_model, image_folder, tmp_path):
    listing = tmp_path / "images.txt"
    listing.write_text(f"{image_folder / 'img_003.png'}\n{image_folder / 'empty.png'}\n")
    sources = [str(listing), str(image_folder / "nested" / "*.png")]
    assert main(["predict", str(detector_model), *sources, "--engine", "ray", "--batch", "4",
                 "--providers", "cpu", "--out", str(tmp_path / "ray")]) == 0  # fmt: skip
    rows = read_rows(detector_model, tmp_path / "ray")
    assert [row["path"] for row in rows] == sorted(
        [str(image_folder / "img_003.png"), str(image_folder / "empty.png")]
        + [str(image_folder / "nested" / f"img_{i:03d}.png") for i in range(4)]
    )
    assert rows == local_rows(detector_model, sources, tmp_path / "local")


def test_predict_dataset_on_a_users_ray_dataset(
    ray_session, detector_model, image_folder, tmp_path
):
    ray = ray_session
    expected = local_rows(detector_model, image_folder, tmp_path / "local")
    files = ray.data.read_binary_files(str(image_folder), include_paths=True)
    lazy = predict_dataset(files, detector_model, options=CPU)
    assert sorted(lazy.take_all(), key=lambda r: r["path"]) == expected
    first = predict_dataset(files, detector_model, tmp_path / "out", options=CPU)
    again = predict_dataset(files, detector_model, tmp_path / "out", options=CPU)
    assert (first.processed, first.errors, again.processed, again.skipped) == (15, 3, 0, 15)
    assert read_rows(detector_model, tmp_path / "out") == expected
    # decoded by Ray (PIL) instead of OpenCV: the same pixels for PNGs, so the same rows
    nested = str(image_folder / "nested")
    images = ray.data.read_images(nested, include_paths=True, mode="RGB")
    decoded = sorted(predict_dataset(images, detector_model, options=CPU).take_all(),
                     key=lambda r: r["path"])  # fmt: skip
    assert decoded == [row for row in expected if row["path"].startswith(nested)]
    unkeyed = ray.data.read_images(nested, mode="RGB")
    with pytest.raises(Exception, match="include_paths=True"):
        predict_dataset(unkeyed, detector_model, options=CPU).take_all()
