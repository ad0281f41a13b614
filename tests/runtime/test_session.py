"""OnnxModel: provider choice that never falls back silently, clear file and input errors."""

import numpy as np
import onnxruntime as ort
import pytest

from cvkit.runtime import InputError, ModelFileError, OnnxModel, ProviderError
from cvkit.runtime.session import CPU, CUDA, requested_providers

from .conftest import write_mean_colour_model


def test_runs_on_cpu_and_says_so(mean_colour_model):
    model = OnnxModel(mean_colour_model, "cpu")
    assert model.provider == CPU == model.session.get_providers()[0]
    batch = np.random.default_rng(0).random((2, 3, 16, 16), dtype=np.float32)
    (logits,) = model.run(batch).values()
    np.testing.assert_allclose(logits, batch.mean(axis=(2, 3)), rtol=1e-6)


def test_spinning_threads_can_be_turned_off(mean_colour_model):
    key = "session.intra_op.allow_spinning"
    batch = np.random.default_rng(1).random((3, 3, 16, 16), dtype=np.float32)
    quiet = OnnxModel(mean_colour_model, "cpu", threads=2, spin=False)
    default = OnnxModel(mean_colour_model, "cpu", threads=2)
    assert quiet.session.get_session_options().get_session_config_entry(key) == "0"
    with pytest.raises(RuntimeError, match=key):  # unset: onnxruntime's default, spinning
        default.session.get_session_options().get_session_config_entry(key)
    np.testing.assert_array_equal(quiet.run(batch)["logits"], default.run(batch)["logits"])


def test_auto_without_a_gpu_runs_on_cpu(mean_colour_model, monkeypatch):
    monkeypatch.setattr("cvkit.runtime.session._nvidia_device_present", lambda: False)
    assert requested_providers("auto") == [CPU]
    assert OnnxModel(mean_colour_model, "auto").provider == CPU


def test_cuda_that_does_not_start_fails_loudly(mean_colour_model):
    if CUDA not in ort.get_available_providers():
        with pytest.raises(ProviderError, match="not in this onnxruntime build"):
            OnnxModel(mean_colour_model, "cuda")
        return
    try:
        model = OnnxModel(mean_colour_model, "cuda")
    except ProviderError as exc:
        assert "CUDAExecutionProvider" in str(exc) and "runs ['CPUExecutionProvider']" in str(exc)
    else:  # a machine with a working GPU
        assert model.provider == CUDA


def test_auto_warns_when_a_present_gpu_does_not_start(mean_colour_model, monkeypatch, caplog):
    monkeypatch.setattr("cvkit.runtime.session._nvidia_device_present", lambda: True)
    if CUDA not in ort.get_available_providers():
        pytest.skip("onnxruntime without the CUDA provider")
    model = OnnxModel(mean_colour_model, "auto")
    if model.provider == CPU:
        assert "continues on the CPU" in caplog.text


def test_unknown_provider_name_is_an_error(mean_colour_model):
    with pytest.raises(ProviderError, match="'gpu'"):
        OnnxModel(mean_colour_model, "gpu")


@pytest.mark.gpu
def test_cuda_provider_really_runs_on_a_gpu(mean_colour_model):
    if not (CUDA in ort.get_available_providers() and requested_providers("auto")[0] == CUDA):
        pytest.skip("no CUDA device")
    model = OnnxModel(mean_colour_model, "cuda")
    assert model.session.get_providers()[0] == CUDA


def test_missing_file(tmp_path):
    with pytest.raises(ModelFileError, match=r"nope\.onnx: model file not found"):
        OnnxModel(tmp_path / "nope.onnx", "cpu")


def test_non_onnx_file(tmp_path):
    path = tmp_path / "notes.onnx"
    path.write_text("these are not the weights you are looking for")
    with pytest.raises(ModelFileError, match=r"notes\.onnx: not a loadable ONNX model"):
        OnnxModel(path, "cpu")


def test_truncated_onnx_file(tmp_path):
    good = write_mean_colour_model(tmp_path / "good.onnx").read_bytes()
    path = tmp_path / "cut.onnx"
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(ModelFileError, match=r"cut\.onnx: not a loadable ONNX model"):
        OnnxModel(path, "cpu")


@pytest.mark.parametrize(
    ("batch", "message"),
    [
        (np.zeros((1, 3, 16, 16), np.float64), "dtype must be float32, got float64"),
        (np.zeros((1, 3, 16, 16), np.uint8), "dtype must be float32, got uint8"),
        (np.zeros((3, 16, 16), np.float32), r"shape .* got \[3, 16, 16\]"),
        (np.zeros((1, 16, 16, 3), np.float32), "axis 1 is 16, the graph needs 3"),
        (np.zeros((1, 3, 32, 16), np.float32), "axis 2 is 32, the graph needs 16"),
        ([[0.0]], "numpy array"),
    ],
)
def test_wrong_input_is_a_clear_error(mean_colour_model, batch, message):
    with pytest.raises(InputError, match=message):
        OnnxModel(mean_colour_model, "cpu").run(batch)


def test_static_batch_is_checked(tmp_path):
    path = write_mean_colour_model(tmp_path / "static.onnx", batch=2)
    with pytest.raises(InputError, match="axis 0 is 3, the graph needs 2"):
        OnnxModel(path, "cpu").run(np.zeros((3, 3, 16, 16), np.float32))
