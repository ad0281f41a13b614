"""Reduced precision: ``cvkit export --int8`` / ``--half`` with the accuracy gate, and
``cvkit eval`` on exported files.

Tiny SSD and FCN models (resnet18_tiny, 64 px) are trained once through the CLI on a small
synthetic set. The FCN trains long enough to find some shapes (val mIoU ~0.24, background IoU
~0.87), so an int8 graph whose activations collapse (calibrated on constant images) loses more
than a point of mIoU and the gate must refuse it, while the properly calibrated one does not.
"""

from __future__ import annotations

import json
from collections import deque
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from cvkit.cli import main
from cvkit.config import load_config
from cvkit.data import build_dataset
from cvkit.export.quantize import calibration_images, float_tail
from cvkit.logs import setup_logging
from cvkit.runtime import Detector, Segmenter

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
QDQ = {"QuantizeLinear", "DequantizeLinear"}
# decode / score / selection ops of a detector's tail
TAIL_OPS = {"NonMaxSuppression", "TopK", "Softmax", "Sigmoid", "Exp"}


def _common(cache: Path) -> list[str]:
    return [
        "data.synthetic.image_size=64",
        "data.image_size=64",
        "data.batch_size=8",
        "data.workers=0",
        f"data.cache_dir={cache}",
        "train.threads=1",
        "device=cpu",
        "export.after_train=true",
    ]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, tuple[str, Path, list[str]]]:
    """``{"ssd": (config, best.pt, overrides), "fcn": ...}``; each run folder also holds the
    float ``best.onnx`` (``export.after_train``)."""
    root = tmp_path_factory.mktemp("precision")
    runs = {
        "ssd": [
            "data.synthetic.num_train=16",
            "data.synthetic.num_val=8",
            "model.ssd.extra_channels=16",
            "train.epochs=1",
        ],
        "fcn": [
            "data.synthetic.num_train=48",
            "data.synthetic.num_val=8",
            "train.epochs=12",
            "train.val_every=4",
        ],
    }
    out = {}
    try:
        for name, extra in runs.items():
            config = str(CONFIGS / f"{name}.yaml")
            overrides = [*_common(root / "cache"), *extra]
            run = root / name
            assert main(["train", "--cfg", config, "--out", str(run), "--set", *overrides]) == 0
            out[name] = (config, run / "weights" / "best.pt", overrides)
    finally:
        setup_logging()  # detach the run folders' log files
    return out


@pytest.fixture(autouse=True)
def _keep_logging_off_captured_streams(monkeypatch):
    monkeypatch.setattr("cvkit.export.commands.setup_logging", lambda: None)


def _props(path: Path) -> dict[str, str]:
    return {prop.key: prop.value for prop in onnx.load(str(path)).metadata_props}


def _downstream(graph: onnx.GraphProto, starts: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """Every node fed (directly or not) by the outputs of ``starts``."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    seen: dict[int, onnx.NodeProto] = {}
    queue = deque(starts)
    while queue:
        node = queue.popleft()
        for name in node.output:
            for consumer in consumers.get(name, []):
                if id(consumer) not in seen:
                    seen[id(consumer)] = consumer
                    queue.append(consumer)
    return list(seen.values())


def test_float_tail_keeps_everything_after_the_last_weighted_op():
    """Hand-built graph: Conv → Relu → Conv → Sigmoid → Mul (with Conv's output) → Reshape →
    Softmax; only the first Conv, the Relu and the second Conv are upstream of a Conv."""
    weight = helper.make_tensor("w", TensorProto.FLOAT, [3, 3, 1, 1], np.ones(9).tolist())
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [1, -1])
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c1"], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu"),
        helper.make_node("Conv", ["r1", "w"], ["c2"], name="conv2"),
        helper.make_node("Sigmoid", ["c2"], ["s"]),  # unnamed: gets a name
        helper.make_node("Mul", ["s", "c2"], ["m"], name="decode"),
        helper.make_node("Reshape", ["m", "shape"], ["flat"], name="flatten"),
        helper.make_node("Softmax", ["flat"], ["y"], name="softmax"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 48])],
        [weight, shape],
    )
    model = helper.make_model(graph)
    excluded = float_tail(model)
    sigmoid_name = model.graph.node[3].name
    assert sigmoid_name and sigmoid_name not in {"conv1", "relu", "conv2", "decode"}
    assert sorted(excluded) == sorted([sigmoid_name, "decode", "flatten", "softmax"])


def test_calibration_reads_the_split_images_of_a_mosaic_config(tmp_path):
    # the training split of a config with mosaic is wrapped for multi-sample transforms; the
    # calibration images are still the split's own images, not mosaics
    overrides = [
        f"data.cache_dir={tmp_path}",
        "data.synthetic.image_size=64",
        "data.synthetic.num_train=8",
        "data.synthetic.num_val=4",
    ]
    plain = load_config(CONFIGS / "ssd.yaml", [*overrides, "data.mosaic=0"])
    mosaic = load_config(CONFIGS / "ssd.yaml", [*overrides, "data.mosaic=1.0"])
    got = calibration_images(mosaic, "train", 4)
    expected = calibration_images(plain, "train", 4)
    assert len(got) == 4
    for image, reference in zip(got, expected, strict=True):
        assert image.shape == (64, 64, 3)
        np.testing.assert_array_equal(image, reference)


def test_int8_ssd_runs_in_the_runtime_with_a_float_tail(trained, tmp_path, capsys):
    _, weights, _ = trained["ssd"]
    out = tmp_path / "ssd_int8.onnx"
    argv = ["export", "--weights", str(weights), "--int8", "--calib-images", "8"]
    assert main([*argv, "--out", str(out)]) == 0
    assert "(int8) vs" in capsys.readouterr().out
    float_file = weights.with_suffix(".onnx")
    assert out.stat().st_size < 0.5 * float_file.stat().st_size  # int8 weights

    graph = onnx.load(str(out)).graph
    types = [node.op_type for node in graph.node]
    assert "QuantizeLinear" in types and "NonMaxSuppression" in types
    producer = {name: node for node in graph.node for name in node.output}
    tail = [node for node in graph.node if node.op_type in TAIL_OPS]
    assert {"NonMaxSuppression", "TopK", "Softmax", "Exp"} <= {node.op_type for node in tail}
    for node in tail:
        fed_by = {producer[name].op_type for name in node.input if name in producer}
        assert not fed_by & QDQ, f"{node.name} ({node.op_type}) takes a dequantized input"
    after = {node.op_type for node in _downstream(graph, tail)}
    assert not after & QDQ, "Q/DQ nodes after the decode/NMS tail"

    detector = Detector(out, providers="cpu")
    image = np.random.default_rng(0).integers(0, 256, (48, 80, 3), np.uint8)
    result = detector.predict(image)
    assert result.boxes.shape == (len(result.scores), 4) and len(result.labels) == len(result)
    accuracy = json.loads(_props(out)["accuracy"])
    assert accuracy["metric"] == "mAP50" and set(accuracy) >= {"float", "int8"}


def test_int8_fcn_agrees_with_float_and_passes_the_gate(trained, tmp_path, capsys):
    _, weights, _ = trained["fcn"]
    out = tmp_path / "fcn_int8.onnx"
    argv = ["export", "--weights", str(weights), "--int8", "--calib-images", "16"]
    assert main([*argv, "--out", str(out), "--max-drop", "0.01"]) == 0
    capsys.readouterr()
    accuracy = json.loads(_props(out)["accuracy"])
    assert accuracy["metric"] == "mIoU" and accuracy["float"] > 0.2
    assert accuracy["float"] - accuracy["int8"] <= 0.01
    images = sorted((weights.parents[2] / "cache").rglob("val_*.jpg"))[:4]
    assert images
    float_masks = [s.mask for s in Segmenter(weights.with_suffix(".onnx"), "cpu").predict(images)]
    int8_masks = [s.mask for s in Segmenter(out, "cpu").predict(images)]
    agreement = np.mean([np.mean(a == b) for a, b in zip(float_masks, int8_masks, strict=True)])
    assert agreement >= 0.95


def test_gate_refuses_a_broken_calibration_and_leaves_no_file(trained, tmp_path, capsys):
    _, weights, _ = trained["fcn"]
    constant = tmp_path / "constant"
    constant.mkdir()
    for index in range(4):
        cv2.imwrite(str(constant / f"{index}.png"), np.zeros((64, 64, 3), np.uint8))
    out = tmp_path / "models" / "fcn_int8.onnx"
    argv = ["export", "--weights", str(weights), "--int8", "--calib", str(constant)]
    assert main([*argv, "--out", str(out), "--max-drop", "0.001"]) != 0
    message = capsys.readouterr().err
    assert "refused" in message and "(int8)" in message and "(float)" in message
    assert "--max-drop 0.001" in message
    assert list(out.parent.iterdir()) == []  # neither the file nor its temporary folder


def test_half_export_records_both_accuracies(trained, tmp_path, capsys):
    _, weights, _ = trained["fcn"]
    out = tmp_path / "fcn_fp16.onnx"
    assert main(["export", "--weights", str(weights), "--half", "--out", str(out)]) == 0
    capsys.readouterr()
    props = _props(out)
    accuracy = json.loads(props["accuracy"])
    assert json.loads(props["precision"]) == "fp16"
    assert abs(accuracy["float"] - accuracy["fp16"]) <= 0.01
    inputs = onnx.load(str(out)).graph.initializer
    assert any(t.data_type == TensorProto.FLOAT16 for t in inputs)


def test_int8_dynamic_mode_runs(trained, tmp_path, capsys):
    _, weights, _ = trained["fcn"]
    out = tmp_path / "fcn_dynamic.onnx"
    argv = ["export", "--weights", str(weights), "--int8", "--int8-mode", "dynamic"]
    assert main([*argv, "--out", str(out)]) == 0
    capsys.readouterr()
    assert json.loads(_props(out)["precision"]) == "int8-dynamic"
    types = {node.op_type for node in onnx.load(str(out)).graph.node}
    assert "ConvInteger" in types or "DynamicQuantizeLinear" in types
    assert Segmenter(out, "cpu").predict(np.zeros((64, 64, 3), np.uint8)).mask.shape == (64, 64)


@pytest.mark.parametrize(("name", "keys"), [("ssd", ("mAP", "mAP50")), ("fcn", ("mIoU",))])
def test_eval_of_the_float_onnx_equals_eval_of_the_pt(trained, tmp_path, capsys, name, keys):
    config, weights, overrides = trained[name]
    results = {}
    for path in (weights, weights.with_suffix(".onnx")):
        report = tmp_path / f"{path.suffix[1:]}.json"
        argv = ["eval", "--cfg", config, "--weights", str(path), "--json", str(report)]
        assert main([*argv, "--no-plots", "--set", *overrides]) == 0
        results[path.suffix] = json.loads(report.read_text())
    capsys.readouterr()
    for key in keys:
        assert results[".onnx"][key] == pytest.approx(results[".pt"][key], abs=1e-4)
    assert results[".pt"][keys[-1]] > 0  # a model that detects/segments something


@pytest.mark.gpu
@pytest.mark.skipif(
    "CUDAExecutionProvider" not in ort.get_available_providers()
    or not Path("/dev/nvidiactl").exists(),
    reason="no CUDA device",
)
def test_int8_and_fp16_files_run_on_the_cuda_provider(trained, tmp_path, capsys):
    _, weights, _ = trained["fcn"]
    for flag in ("--half", "--int8"):
        out = tmp_path / f"fcn{flag}.onnx"
        assert main(["export", "--weights", str(weights), flag, "--out", str(out)]) == 0
        segmenter = Segmenter(out, "cuda")
        assert segmenter.provider == "CUDAExecutionProvider"
        assert segmenter.predict(np.zeros((64, 64, 3), np.uint8)).mask.shape == (64, 64)
    capsys.readouterr()


def test_max_drop_without_a_reduced_precision_is_an_error(tiny_ssd_weights, capsys):
    argv = ["export", "--weights", str(tiny_ssd_weights), "--max-drop", "0.01"]
    assert main(argv) == 2
    assert "--max-drop" in capsys.readouterr().err
    assert not tiny_ssd_weights.with_suffix(".onnx").exists()


def test_a_missing_calibration_folder_is_named(tiny_ssd_weights, tmp_path, capsys):
    missing = tmp_path / "no_such_folder"
    argv = ["export", "--weights", str(tiny_ssd_weights), "--int8", "--calib", str(missing)]
    assert main(argv) == 2
    assert str(missing) in capsys.readouterr().err
    assert not tiny_ssd_weights.with_suffix(".onnx").exists()


def test_eval_of_a_val_file_listing_some_categories_for_pt_and_onnx(trained, tmp_path, capsys):
    """A COCO val file without one of the checkpoint's categories (and its objects) is read with
    the weights' numbering: the .pt and its export score each remaining class as on the full
    val split (COCO AP per category sees only that category), and the dropped one has none."""
    config, weights, overrides = trained["ssd"]
    records = build_dataset(load_config(config, overrides).data, "val", "detect").records
    data = json.loads(Path(records.source).read_text())
    dropped = data["categories"][0]
    data["categories"] = data["categories"][1:][::-1]
    data["annotations"] = [a for a in data["annotations"] if a["category_id"] != dropped["id"]]
    subset = tmp_path / "val_subset.json"
    subset.write_text(json.dumps(data))
    val = [f"data.val.path={subset}", f"data.val.images={records.samples[0].path.parent}"]
    results = {}
    for path, split in [(weights, []), (weights, val), (weights.with_suffix(".onnx"), val)]:
        report = tmp_path / "report.json"
        argv = ["eval", "--cfg", config, "--weights", str(path), "--json", str(report)]
        assert main([*argv, "--no-plots", "--set", *overrides, *split]) == 0
        results[path.suffix, bool(split)] = json.loads(report.read_text())["per_class_AP"]
    capsys.readouterr()
    full = results[".pt", False]
    expected = {**full, dropped["name"]: None}
    assert results[".pt", True] == pytest.approx(expected, abs=1e-4)
    assert results[".onnx", True] == pytest.approx(expected, abs=1e-4)
    assert any(full[name] for name in full if name != dropped["name"])  # something detected
